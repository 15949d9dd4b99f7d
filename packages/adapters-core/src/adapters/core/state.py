"""Per-model adapter bookkeeping: configs, module records, the active setup."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from torch import nn

from ..composition import AdapterCompositionBlock, Parallel, check_method_support, parse_composition, validate_nesting
from ..composition.parallel import ParallelRuntime
from ..configs.base import AdapterConfig
from ..configs.union import ConfigUnion
from ..errors import AdapterError, AdapterNameError
from ..plugins.manager import Registry
from ..plugins.spec import ModelSpec

if TYPE_CHECKING:
    from ..methods.base import AdapterMethod


class AdapterState:
    """Everything ``adapters.init`` attaches to a model, in one object (``model.adapters_state``).

    Attributes:
        model: the model given to ``adapters.init`` (may carry a head).
        base_model: the transformer body (``model`` itself for bare models).
        base_prefix: the body's attribute path in ``model`` plus a dot (``"bert."``), or ``""``.
        spec: where adapters attach, from the model plugin.
        configs: adapter name to config.
        modules: adapter name to ``{path relative to base_model: module}``.
        active_setup: the active composition, or ``None``.
        merged: the adapter whose weights are merged into the model, if any.
        method_data: per-method runtime objects (hook places), keyed by method name.
        parallel: the batch-copying hooks while a setup with a Parallel block is active.
        skip_layers: layer indices where the active setup's adapters are bypassed (AdapterDrop).
    """

    def __init__(self, model: nn.Module, base_model: nn.Module, base_prefix: str, spec: ModelSpec, registry: Registry):
        self.model = model
        self.base_model = base_model
        self.base_prefix = base_prefix
        self.spec = spec
        self.registry = registry
        entries = spec.layer_entries(base_model)
        self.layers: list[tuple[int, nn.Module]] = [(index, layer) for index, layer, _ in entries]
        # Each layer's own config: the model config, or its stack's (CLIP's text_config, vision_config).
        self._layer_configs = {
            index: getattr(base_model.config, stack.config) if stack.config else base_model.config
            for index, _, stack in entries
        }
        # Each layer's view of the spec: its stack's per-layer overrides applied (decoder layers' cross-attention).
        stack_specs = {stack: spec.for_stack(stack) for stack in spec.stacks}
        self._layer_specs = {index: stack_specs.get(stack, spec) for index, _, stack in entries}
        self.configs: dict[str, AdapterConfig] = {}
        self.modules: dict[str, dict[str, nn.Module]] = {}
        self.active_setup: AdapterCompositionBlock | None = None
        self.merged: str | None = None
        self.method_data: dict[str, Any] = {}
        self.context_stack: list[tuple[AdapterCompositionBlock | None, frozenset[int]]] = []
        self.parallel: ParallelRuntime | None = None
        # AdapterDrop: layers whose adapters the active setup bypasses (no hooks are installed there).
        self.skip_layers: frozenset[int] = frozenset()
        # While generate() runs a Parallel setup: how many copies of its inputs it made (composition.generation).
        self.inputs_replicated = 0
        self.model_class_name = type(model).__name__

    def __deepcopy__(self, memo: dict) -> AdapterState:
        # copy.deepcopy(model) copies the state with the model; the plugin registry is process-wide.
        memo[id(self.registry)] = self.registry
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    # -- lookups ------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int | None:
        """The model's hidden size; ``None`` for a model of several stacks without one (CLIPModel).

        Methods sizing per-layer modules use :meth:`layer_hidden_size`, which every model has.
        """
        return getattr(self.base_model.config, "hidden_size", None)

    def layer_config(self, layer_idx: int) -> Any:
        """The config of layer ``layer_idx``: its stack's own config in models of several stacks."""
        return self._layer_configs[layer_idx]

    def layer_spec(self, layer_idx: int) -> ModelSpec:
        """Where adapters attach in layer ``layer_idx``: the spec with its stack's ``overrides`` applied."""
        return self._layer_specs[layer_idx]

    def layer_hidden_size(self, layer_idx: int) -> int:
        return self._layer_configs[layer_idx].hidden_size

    def module_path(self, module: nn.Module) -> str:
        """The path of a submodule relative to the base model (computed once at add time)."""
        for path, candidate in self.base_model.named_modules(remove_duplicate=False):
            if candidate is module:
                return path
        raise LookupError("module is not part of the base model")

    def modules_of(self, name: str) -> dict[str, nn.Module]:
        return self.modules.setdefault(name, {})

    def parameters_of(self, name: str) -> Iterator[tuple[str, nn.Parameter]]:
        """(path relative to the base model, parameter) of one adapter."""
        seen: set[int] = set()
        for path, module in self.modules.get(name, {}).items():
            for pname, param in module.named_parameters(prefix=path, remove_duplicate=False):
                if id(param) not in seen:
                    seen.add(id(param))
                    yield pname, param

    def require(self, name: str) -> AdapterConfig:
        if name not in self.configs:
            raise AdapterNameError(
                f"No adapter named {name!r}. Added adapters: {sorted(self.configs)}; "
                "add it with add_adapter() or load_adapter()."
            )
        return self.configs[name]

    def methods_of(self, config: AdapterConfig) -> list[tuple[AdapterMethod, AdapterConfig]]:
        """The methods (with their part of the config) that make up one adapter."""
        members = config.configs if isinstance(config, ConfigUnion) else (config,)
        return [(self.registry.method_for(c), c) for c in members]

    # -- activation ---------------------------------------------------------------------
    def resolve_setup(self, setup: Any) -> AdapterCompositionBlock | None:
        block = parse_composition(setup)
        if block is None:
            return None
        validate_nesting(block)
        for name in block.flatten():
            self.require(name)
        check_method_support(block, self._blocks_supported_by)
        return block

    def _blocks_supported_by(self, name: str) -> list[tuple[str, frozenset[type]]]:
        return [(method.name, method.supported_blocks) for method, _ in self.methods_of(self.configs[name])]

    def resolve_skip_layers(self, skip_layers: Iterable[int] | None) -> frozenset[int]:
        """Check AdapterDrop's layer indices against the model's layers.

        Example:
            >>> model.adapters_state.resolve_skip_layers([0, 1])  # doctest: +SKIP
            frozenset({0, 1})
        """
        if skip_layers is None:
            return frozenset()
        if isinstance(skip_layers, int) or not isinstance(skip_layers, Iterable):
            raise AdapterError(f"skip_layers must be a list of layer indices, got {skip_layers!r}.")
        chosen = list(skip_layers)
        indices = {idx for idx, _ in self.layers}
        unknown = [i for i in chosen if isinstance(i, bool) or not isinstance(i, int) or i not in indices]
        if unknown:
            raise AdapterError(f"skip_layers {unknown} are not layers of this model; its layers are {sorted(indices)}.")
        return frozenset(chosen)

    def skipped(self, place_key: tuple) -> bool:
        """Whether a method's place, keyed ``(layer index, ...)``, sits in a skipped layer (AdapterDrop).

        Places before the layers (key ``-1``: invertible adapters, prompt tuning) are never skipped,
        as in the reference library.
        """
        return place_key[0] in self.skip_layers

    def apply_setup(self, block: AdapterCompositionBlock | None, skip_layers: frozenset[int] | None = None) -> None:
        """Install the hooks of ``block`` at every place (no hooks at all when ``None``).

        ``skip_layers`` (from :meth:`resolve_skip_layers`) replaces the layers bypassed by the setup;
        ``None`` keeps the current ones. A method may refuse the setup only once it sees its places
        (e.g. a Stack of LoRAs on a fused projection); the previous setup is then restored, so a
        refused activation changes nothing.
        """
        previous_skip = self.skip_layers
        if skip_layers is not None:
            self.skip_layers = skip_layers
        try:
            self._install(block)
        except Exception:
            self.skip_layers = previous_skip
            self._install(self.active_setup)
            raise
        self.active_setup = block

    def _install(self, block: AdapterCompositionBlock | None) -> None:
        if self.parallel is not None:
            self.parallel.remove()
            self.parallel = None
        if block is not None and _has_parallel(block):
            self.parallel = ParallelRuntime(block.parallel_channels)
            self.parallel.copy_inputs = self.spec.parallel_copies_inputs
            self.parallel.inputs_replicated = bool(self.inputs_replicated)
            first = self._first_layer_of(block.flatten())
            # Later stacks (a decoder) are entered through their parent module ("decoder" of "decoder.block").
            entries = [self.base_model.get_submodule(s.entry_path) for s in self.spec.stacks[1:]]
            layers = [layer for idx, layer in self.layers if idx >= first]
            self.parallel.install(self.base_model, layers, [m for m in entries if m is not self.base_model])
            if self._copies_at_last_block(block.flatten(), first):
                self.parallel.copy_in(layers[0])
        for method in self.registry.methods:
            method.activate(self, block)

    def _first_layer_of(self, names: list[str]) -> int:
        """The first layer index holding a module of these adapters that acts (0 if one acts before the layers).

        Modules in skipped layers (AdapterDrop) do not act, so the copies are made further up.
        """
        layer_paths = [(idx, self.module_path(layer) + ".") for idx, layer in self.layers]
        first = len(layer_paths)
        for name in names:
            for path in self.modules.get(name, {}):
                idx = next((i for i, prefix in layer_paths if path.startswith(prefix)), None)
                if idx is None:
                    first = 0
                elif idx not in self.skip_layers:
                    first = min(first, idx)
        return first

    def _copies_at_last_block(self, names: list[str], first: int) -> bool:
        """Whether Parallel's copies can be made by the bottleneck adapters closing layer ``first``.

        So the reference library does: the whole first adapted layer then runs once. Only where
        every module of the setup in that layer is a bottleneck adapter of its post-LN FFN block
        (whose LayerNorm output is the layer's output) and the layer module is not reused (ALBERT).
        """
        layer = next((module for idx, module in self.layers if idx == first), None)
        block = self.layer_spec(first).ffn_block if layer is not None else None
        if block is None or block.layer_norm is None or sum(m is layer for _, m in self.layers) > 1:
            return False
        prefix = self.module_path(layer) + "."
        holder = f"{prefix}{block.holder}.adapters."
        paths = [path for name in names for path in self.modules.get(name, {}) if path.startswith(prefix)]
        return bool(paths) and all(path.startswith(holder) for path in paths)


def _has_parallel(block: AdapterCompositionBlock) -> bool:
    return isinstance(block, Parallel) or any(
        isinstance(child, AdapterCompositionBlock) and _has_parallel(child) for child in block
    )
