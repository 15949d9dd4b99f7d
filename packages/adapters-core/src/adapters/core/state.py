"""Per-model adapter bookkeeping: configs, module records, the active setup."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from torch import nn

from ..composition import AdapterCompositionBlock, Parallel, check_method_support, parse_composition, validate_nesting
from ..configs.base import AdapterConfig
from ..configs.union import ConfigUnion
from ..errors import AdapterError, AdapterNameError
from ..plugins.manager import Registry
from ..plugins.spec import ModelSpec
from .activation import _BUILDING, Activation, ActivationCache, Attachable, ForwardGuard, PerThread, build_into
from .four_bit_layout import four_bit_layers
from .parallel import ParallelHooks, ParallelRuntime

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
        active_setup: the model-wide composition (``set_active_adapters``), or ``None``.
        activation: that setup as built for this model (see :mod:`adapters.core.activation`).
        merged: the adapter whose weights are merged into the model, if any.
        merged_tensors: that adapter's tensors at merge time (CPU copies), which a save checks it against.
        method_data: per-method runtime objects (hook places), keyed by method name.
        parallel: the Parallel runtime of the activation being built, else of the model-wide one.
        skip_layers: layer indices where the active setup's adapters are bypassed (AdapterDrop).
        guard: held shared by every forward pass, exclusively by every change to the adapters.
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
        self.merged_tensors: dict[str, Any] | None = None
        self.method_data: dict[str, Any] = {}
        # AdapterDrop: layers whose adapters the active setup bypasses (no hooks are installed there).
        self.skip_layers: frozenset[int] = frozenset()
        self.activation = Activation(None, frozenset())
        self.guard = ForwardGuard()
        #: bitsandbytes 4-bit layers, put back in their training layout when a pass starts in training mode.
        self.four_bit_layers = four_bit_layers(model)
        # Activations of AdapterSetup blocks, and the places whose hooks are attached for any activation.
        self._activations = ActivationCache()
        self._attached: dict[Attachable, None] = {}
        # Bumped whenever attached hooks are taken off: activations built before then are void.
        self._generation = 0
        # What the adapters were when the model-wide activation was built (see changing()).
        self._built_for: tuple = ()
        self._parallel_hooks: Any = None
        # Pre-hooks of the methods on the model and on its body, run by the pass's own pre-hook there
        # (context.register_pass_pre_hook): the model's list is the body's for a bare model.
        self._model_pre_hooks: list[Any] = []
        self._body_pre_hooks: list[Any] = []
        # Per thread: while generate() runs a Parallel setup, how many copies of its inputs it made.
        self._now = PerThread(inputs_replicated=0)
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
        # A list or dict given as a name is unhashable: answer with the same error as for a string.
        if not isinstance(name, str) or name not in self.configs:
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
        as in the reference library. During a build: the layers the activation being built skips.
        """
        return place_key[0] in self._skip_layers_now()

    def _skip_layers_now(self) -> frozenset[int]:
        build = _BUILDING.get()
        return build.skip_layers if build is not None else self.skip_layers

    @property
    def parallel(self) -> ParallelRuntime | None:
        """The Parallel runtime of the activation being built (in ``activate``), else of the model-wide one."""
        build = _BUILDING.get()
        return build.parallel if build is not None else self.activation.parallel

    @property
    def inputs_replicated(self) -> int:
        """While ``generate()`` runs a Parallel setup in this thread: the copies of its inputs it made."""
        return self._now.inputs_replicated

    @inputs_replicated.setter
    def inputs_replicated(self, copies: int) -> None:
        self._now.inputs_replicated = copies

    def pass_pre_hooks(self, module: nn.Module) -> list[Any]:
        """The methods' pre-hooks on ``module`` (the model or its body), in the order they run."""
        if module is self.model:
            return self._model_pre_hooks
        if module is self.base_model:
            return self._body_pre_hooks
        raise ValueError(f"{type(module).__name__} is neither the model nor its body.")

    # -- activations ----------------------------------------------------------------------
    def apply_setup(self, block: AdapterCompositionBlock | None, skip_layers: frozenset[int] | None = None) -> None:
        """Make ``block`` the model-wide setup: build its activation and attach the hooks it needs.

        ``skip_layers`` (from :meth:`resolve_skip_layers`) replaces the layers bypassed by the setup;
        ``None`` keeps the current ones. A method may refuse the setup only once it sees its places
        (e.g. a Stack of LoRAs on a fused projection); the refusal comes from the build, before any
        hook changes, so a refused activation changes nothing. Waits for the forward passes of other
        threads in flight (they finish under the setup they started with).
        """
        with self.guard.exclusive():
            skip = self.skip_layers if skip_layers is None else skip_layers
            activation = self.build(block, skip)
            # All hooks come off and the new setup's go on, in the methods' order (the order they run in).
            self._detach_all()
            self._attach(activation)
            self.activation, self.active_setup, self.skip_layers = activation, block, skip
            self._built_for = self._adapters_now()

    def build(self, block: AdapterCompositionBlock | None, skip_layers: frozenset[int]) -> Activation:
        """``block`` as it would run on this model: every place's plan; nothing in the model changes.

        Raises what a method refuses (:class:`~adapters.errors.CompositionError`). The caller holds the
        guard (shared at least), so that no change of the adapters runs meanwhile.
        """
        activation = Activation(block, skip_layers)
        with self.guard.building, build_into(activation):
            if block is not None and _has_parallel(block):
                activation.parallel = self._parallel_runtime(block, skip_layers)
                activation.attachments[self._parallel_hooks_of()] = None
            for method in self.registry.methods:
                method.activate(self, block)
        return activation

    def activation_for(self, context: Any) -> Activation:
        """The activation of a forward pass starting now under ``context`` (an open AdapterSetup, or None).

        The caller (the pass's pre-hook) holds the guard shared. The setups of AdapterSetup blocks are
        built once and cached; one that needs hooks no other setup attached waits, once, for the
        passes in flight to attach them.
        """
        if context is None:
            return self.activation
        try:
            block = self.resolve_setup(context.adapter_setup)
        except AdapterNameError:
            if context.ignore_empty:
                return self.activation
            raise
        skip = self.skip_layers if context.skip_layers is None else self.resolve_skip_layers(context.skip_layers)
        if skip == self.skip_layers and block == self.active_setup:
            return self.activation
        key = (block, skip)
        while True:
            found = self._activations.get(key)
            if found is not None:
                return found
            generation = self._generation
            activation = self.build(block, skip)
            if all(a in self._attached for a in activation.attachments) and not activation.fixups:
                with self.guard.building:
                    if self._generation == generation:
                        self._activations.put(key, activation)
                        return activation
                continue
            # Attaching hooks changes modules other passes run through: only with the model to ourselves.
            self.guard.release()
            try:
                with self.guard.exclusive():
                    activation = self.build(block, skip)
                    self._attach(activation)
                    self._activations.put(key, activation)
                    generation = self._generation
            finally:
                self.guard.hold()
            if self._generation == generation:
                return activation

    @contextmanager
    def changing(self) -> Iterator[None]:
        """Hold the model exclusively while its adapters change; rebuild the activations afterwards.

        Wraps every method of the model API that adds, deletes, loads, merges or activates adapters:
        it waits for the forward passes of other threads in flight, and passes that start meanwhile
        wait for it. When the adapters changed, the model-wide setup is built again and the cached
        setups of AdapterSetup blocks are dropped (they may hold deleted modules).
        """
        outermost = not self.guard.is_exclusive()
        with self.guard.exclusive():
            try:
                yield
            finally:
                if outermost and not _same(self._built_for, self._adapters_now()):
                    self.apply_setup(self.active_setup, self.skip_layers)

    def _adapters_now(self) -> tuple:
        """What the activations are built from: adapters (configs, module records), fusions, the merge."""
        fusion = self.method_data.get("fusion")
        fusions = tuple(fusion.fusions.items()) if fusion is not None else ()
        adapters = tuple((name, config, self.modules.get(name)) for name, config in self.configs.items())
        return adapters, fusions, self.merged

    def _attach(self, activation: Activation) -> None:
        for attachment in activation.attachments:
            self._attach_one(attachment)
        for fixup in activation.fixups:
            fixup()

    def _attach_one(self, attachment: Attachable) -> None:
        if attachment not in self._attached:
            attachment.attach_hooks(self)
            self._attached[attachment] = None

    def _detach_all(self) -> None:
        for attachment in reversed(list(self._attached)):
            attachment.detach_hooks()
        self._attached.clear()
        self._activations.clear()
        self._generation += 1

    def _parallel_runtime(self, block: AdapterCompositionBlock, skip_layers: frozenset[int]) -> ParallelRuntime:
        runtime = ParallelRuntime(block.parallel_channels, self)
        runtime.copy_inputs = self.spec.parallel_copies_inputs
        first = self._first_layer_of(block.flatten(), skip_layers)
        runtime.install(first)
        if self._copies_at_last_block(block.flatten(), first):
            runtime.copy_in(next(layer for idx, layer in self.layers if idx >= first))
        return runtime

    def _parallel_hooks_of(self) -> ParallelHooks:
        if self._parallel_hooks is None:
            # Later stacks (a decoder) are entered through their parent module ("decoder" of "decoder.block").
            entries = [self.base_model.get_submodule(s.entry_path) for s in self.spec.stacks[1:]]
            self._parallel_hooks = ParallelHooks(self.layers, [m for m in entries if m is not self.base_model])
        return self._parallel_hooks

    def _first_layer_of(self, names: list[str], skip_layers: frozenset[int]) -> int:
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
                elif idx not in skip_layers:
                    first = min(first, idx)
        return first

    def _copies_at_last_block(self, names: list[str], first: int) -> bool:
        """Whether Parallel's copies can be made by the bottleneck adapters closing layer ``first``.

        So the reference library does: the whole first adapted layer then runs once. Only where
        every module of the setup in that layer is a bottleneck adapter of its post-LN FFN block
        (whose LayerNorm output is the layer's output) and the layer module is not reused (ALBERT).
        Not where a module of the setup lies outside the layers: prefix tuning's act in every layer's
        attention, before that block, and would meet the batch before its copies.
        """
        layer_paths = [self.module_path(module) + "." for _, module in self.layers]
        if any(
            not any(path.startswith(p) for p in layer_paths) for name in names for path in self.modules.get(name, {})
        ):
            return False
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


def _same(before: tuple, now: tuple) -> bool:
    """Whether two :meth:`AdapterState._adapters_now` are of the same objects (compared by identity)."""
    if not before:
        return not now[0] and not now[1] and now[2] is None
    return before[2] == now[2] and _same_items(before[0], now[0]) and _same_items(before[1], now[1])


def _same_items(before: tuple, now: tuple) -> bool:
    return len(before) == len(now) and all(
        a[0] == b[0] and all(x is y for x, y in zip(a[1:], b[1:], strict=True))
        for a, b in zip(before, now, strict=True)
    )
