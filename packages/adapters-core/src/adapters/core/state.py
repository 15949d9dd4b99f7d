"""Per-model adapter bookkeeping: configs, module records, the active setup."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from torch import nn

from ..composition import AdapterCompositionBlock, Parallel, check_method_support, parse_composition, validate_nesting
from ..composition.parallel import ParallelRuntime
from ..configs.base import AdapterConfig
from ..configs.union import ConfigUnion
from ..errors import AdapterNameError
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
        self.configs: dict[str, AdapterConfig] = {}
        self.modules: dict[str, dict[str, nn.Module]] = {}
        self.active_setup: AdapterCompositionBlock | None = None
        self.merged: str | None = None
        self.method_data: dict[str, Any] = {}
        self.context_stack: list[AdapterCompositionBlock | None] = []
        self.parallel: ParallelRuntime | None = None
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

    def apply_setup(self, block: AdapterCompositionBlock | None) -> None:
        """Install the hooks of ``block`` at every place (no hooks at all when ``None``).

        A method may refuse the setup only once it sees its places (e.g. a Stack of LoRAs on a
        fused projection); the previous setup is then restored, so a refused activation changes
        nothing.
        """
        try:
            self._install(block)
        except Exception:
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
            first = self._first_layer_of(block.flatten())
            self.parallel.install(self.base_model, [layer for idx, layer in self.layers if idx >= first])
        for method in self.registry.methods:
            method.activate(self, block)

    def _first_layer_of(self, names: list[str]) -> int:
        """The first layer index holding a module of these adapters (0 if one acts before the layers)."""
        layer_paths = [(idx, self.module_path(layer) + ".") for idx, layer in self.layers]
        first = len(layer_paths)
        for name in names:
            for path in self.modules.get(name, {}):
                idx = next((i for i, prefix in layer_paths if path.startswith(prefix)), 0)
                first = min(first, idx)
        return first


def _has_parallel(block: AdapterCompositionBlock) -> bool:
    return isinstance(block, Parallel) or any(
        isinstance(child, AdapterCompositionBlock) and _has_parallel(child) for child in block
    )
