"""One adapted linear layer: its LoRA-family modules, the forward hook, merging into its weights."""

from __future__ import annotations

import functools

import torch
from torch import nn

from ...composition.blocks import AdapterCompositionBlock
from ...core.activation import building, current
from ...core.hook_order import HookStage, register_staged_forward_hook
from ...errors import AdapterError, CompositionError
from ..base import AdapterDict, adapter_dict
from .base import LoRAFamilyModule
from .batched import BatchedLoRAs
from .composition import ComposedLoRAs
from .layer import AdditiveModule
from .linears import weight_out_in
from .quantized import QuantizedMerge, dequantized, is_quantized


class LoRAPlace:
    """The LoRA-family modules of one linear layer, and the forward hook that applies them.

    The layer is an ``nn.Linear`` or a ``Conv1D`` (weight stored ``(in, out)``); merging works on
    its weight as ``(out, in)`` (:func:`weight_out_in`), so both kinds merge alike.

    A single adapter acts through its own ``apply``. A Stack follows the reference library:
    additive adapters (LoRA, VeRA) chain, each reading the previous one's update; (IA)^3
    adapters multiply their scaling vectors. Mixing the two kinds, or DoRA in a Stack, has no
    meaning and is refused.

    The hook on the linear runs the plan of the pass's activation (the hook of its setup here), or
    nothing; it is attached while some activation of the model has a plan here.
    """

    def __init__(self, linear: nn.Module) -> None:
        self.linear = linear
        self.loras: AdapterDict = adapter_dict(linear, "loras")
        self.container = self.loras
        self._handle = None
        self._state = None
        # The linear's weight and bias as they were before a merge: reset_adapter copies them back, so
        # the restore is bit for bit whatever the adapter's parameters became since (see merge()).
        self._original: tuple[torch.Tensor | QuantizedMerge, torch.Tensor | None] | None = None

    # -- activation -----------------------------------------------------------------------
    def activate(
        self, names: tuple[str, ...], block: AdapterCompositionBlock | None = None, parallel_runtime=None
    ) -> None:
        """Apply ``names`` as a Stack, or run ``block`` (any other composition) when given, in the
        activation being built."""
        modules = tuple(self.loras[n] for n in names)
        composed = None
        if block is not None and modules:
            composed = ComposedLoRAs(self.linear, self.loras, block, self._check_stack)
            composed.parallel_runtime = parallel_runtime
        if len(modules) > 1 and composed is None:
            self._check_stack(names, modules)
        if not modules:
            return
        if composed is not None:
            # A BatchSplit of plain LoRAs runs as two batched multiplies (validated by ComposedLoRAs first).
            hook = BatchedLoRAs.build(self.linear, self.loras, block) or composed
        elif len(modules) == 1:
            hook = functools.partial(self._apply_single, modules[0])
        else:
            stack = self._scale_stack if modules[0].composition_mode == "scale" else self._add_stack
            hook = functools.partial(stack, modules)
        building().add(self, hook, attach=self)

    def attach_hooks(self, state) -> None:
        self._state = state
        # The update is part of what the linear computes: every other hook on it must see it.
        self._handle = register_staged_forward_hook(self.linear, self._run, HookStage.COMPUTE)

    def detach_hooks(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _run(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        hook = current(self._state).plans.get(self)
        return hook(module, args, output) if hook is not None else None

    @staticmethod
    def _check_stack(names: tuple[str, ...], modules: tuple[LoRAFamilyModule, ...]) -> None:
        modes = {m.composition_mode for m in modules}
        if len(modes) > 1:
            raise CompositionError(
                f"Stack of {list(names)} mixes additive (LoRA, VeRA) and scaling ((IA)^3) adapters on one layer; "
                "a Stack of either kind is defined, a mix is not. Activate them separately or merge one first."
            )
        if any(getattr(m, "m", None) is not None for m in modules):
            raise CompositionError(
                f"Stack of {list(names)} contains a DoRA adapter; DoRA rescales the whole weight of the layer, "
                "so it cannot read another adapter's update. Activate it alone, or merge_adapter() it and "
                "stack the others on top."
            )
        if modes == {"scale"}:
            return
        if any(m.fused for m in modules):
            raise CompositionError(
                f"Stack of LoRA adapters {list(names)} on a fused linear layer (e.g. q/k/v in one "
                "projection): a stacked LoRA reads the previous LoRA's output, which has another size."
            )
        if any(m.in_features != m.out_features for m in modules[1:]):
            raise CompositionError(
                f"Stack of LoRA adapters {list(names)} on a non-square linear layer: a stacked LoRA "
                "reads the previous LoRA's output, which needs in_features == out_features."
            )

    def _apply_single(
        self, adapter: LoRAFamilyModule, module: nn.Module, args: tuple, output: torch.Tensor
    ) -> torch.Tensor:
        # Only DoRA reads the weight (a quantized one is dequantized for it: not for the others).
        weight = weight_out_in(self.linear) if getattr(adapter, "m", None) is not None else None
        return adapter.apply(output, args[0], weight)

    @staticmethod
    def _add_stack(
        adapters: tuple[LoRAFamilyModule, ...], module: nn.Module, args: tuple, output: torch.Tensor
    ) -> torch.Tensor:
        # Each additive adapter reads the previous one's update; gates read the layer input.
        layer_input = hidden = args[0]
        for adapter in adapters:
            hidden = adapter.delta(hidden, layer_input)
        return output + hidden

    @staticmethod
    def _scale_stack(
        adapters: tuple[LoRAFamilyModule, ...], module: nn.Module, args: tuple, output: torch.Tensor
    ) -> torch.Tensor:
        scale = adapters[0].scale_vector(args[0])
        for adapter in adapters[1:]:
            scale = scale * adapter.scale_vector(args[0])
        return output * scale

    # -- merging --------------------------------------------------------------------------
    def merge_scale(self, name: str) -> torch.Tensor | None:
        """The per-row factor merging ``name`` multiplies weight and bias by (None: purely additive)."""
        adapter = self.loras[name]
        if adapter.gate is not None:
            raise AdapterError(
                f"Adapter {name!r} is gated (use_gating=True): its gate depends on the input, so it cannot be "
                "merged into the weights."
            )
        weight = weight_out_in(self.linear)
        if adapter.composition_mode == "scale":
            scale = adapter.weight_scale()
        elif adapter.m is not None:
            scale = adapter.dora_scale(weight)
        else:
            return None
        scale = scale.detach().to(weight.dtype)
        # (Zero entries merge: reset_adapter copies the weights back, it does not divide.)
        if not torch.isfinite(scale).all():
            raise AdapterError(
                f"Cannot merge adapter {name!r}: its scaling of {type(self.linear).__name__} has non-finite entries "
                "(a DoRA row of zero norm, say), which would put inf or NaN into the weights. Use it unmerged."
            )
        return scale

    @torch.no_grad()
    def merge(self, name: str, scale: torch.Tensor | None) -> None:
        """Add (and multiply by) the adapter's update in place, keeping a copy of the weights to restore.

        The copy goes to CPU memory, so a merged model on an accelerator needs no more of its
        memory; it costs one copy of each merged layer's weight (and bias) until reset or delete.
        Subtracting the update again would restore the weights only up to rounding, and only if
        the adapter's parameters had not changed since. A quantized layer (bitsandbytes, torchao) gets new
        quantized weights (dequantized, updated, quantized again; :attr:`requantized` says how far
        that rounded them); its original parameter object is kept to put back.
        """
        if self._original is not None:
            raise AdapterError(
                f"{type(self.linear).__name__} has a merged adapter already; call reset_adapter() first."
            )
        adapter = self.loras[name]
        bias = self.linear.bias
        kept_bias = bias.detach().to("cpu", copy=True) if bias is not None else None
        if is_quantized(self.linear):
            original = dequantized(self.linear)
            merged = original.clone()
            self._apply_update(merged, bias, adapter, scale)
            self._original = (QuantizedMerge.merge(self.linear, original, merged), kept_bias)
            return
        weight = weight_out_in(self.linear)
        self._original = (self.linear.weight.detach().to("cpu", copy=True), kept_bias)
        self._apply_update(weight, bias, adapter, scale)

    @staticmethod
    def _apply_update(
        weight: torch.Tensor, bias: torch.Tensor | None, adapter: LoRAFamilyModule, scale: torch.Tensor | None
    ) -> None:
        if isinstance(adapter, AdditiveModule):
            weight.add_(adapter.delta_weight().to(weight.dtype))
        if scale is not None:
            weight.mul_(scale.unsqueeze(1).to(weight.dtype))
            if bias is not None:
                bias.mul_(scale.to(bias.dtype))

    @property
    def requantized(self) -> QuantizedMerge | None:
        """What a merge into this quantized layer replaced and rounded (None: not merged, or not quantized)."""
        kept = self._original[0] if self._original is not None else None
        return kept if isinstance(kept, QuantizedMerge) else None

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        """Copy back the weights kept by :meth:`merge` (a cast or move since is applied to them too)."""
        if self._original is None:
            return
        (weight, bias), self._original = self._original, None
        if isinstance(weight, QuantizedMerge):
            weight.restore(self.linear)
        else:
            self.linear.weight.copy_(weight)
        if bias is not None:
            self.linear.bias.copy_(bias)
