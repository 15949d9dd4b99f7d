"""One adapted linear layer: its LoRA-family modules, the forward hook, merging into its weights."""

from __future__ import annotations

import torch
from torch import nn

from ...composition.blocks import AdapterCompositionBlock
from ...core.hook_order import HookStage, register_staged_forward_hook
from ...errors import AdapterError, CompositionError
from ..base import AdapterDict, adapter_dict
from .base import LoRAFamilyModule
from .batched import BatchedLoRAs
from .composition import ComposedLoRAs
from .layer import AdditiveModule
from .linears import weight_out_in


class LoRAPlace:
    """The LoRA-family modules of one linear layer, and the forward hook that applies them.

    The layer is an ``nn.Linear`` or a ``Conv1D`` (weight stored ``(in, out)``); merging works on
    its weight as ``(out, in)`` (:func:`weight_out_in`), so both kinds merge alike.

    A single adapter acts through its own ``apply``. A Stack follows the reference library:
    additive adapters (LoRA, VeRA) chain, each reading the previous one's update; (IA)^3
    adapters multiply their scaling vectors. Mixing the two kinds, or DoRA in a Stack, has no
    meaning and is refused.
    """

    def __init__(self, linear: nn.Module) -> None:
        self.linear = linear
        self.loras: AdapterDict = adapter_dict(linear, "loras")
        self.container = self.loras
        self._handle = None
        self._modules: tuple[LoRAFamilyModule, ...] = ()
        # The per-row factor a scaling merge (IA3, DoRA) multiplied the weight by, to undo it exactly.
        self._merged_scale: torch.Tensor | None = None

    # -- activation -----------------------------------------------------------------------
    def activate(
        self, names: tuple[str, ...], block: AdapterCompositionBlock | None = None, parallel_runtime=None
    ) -> None:
        """Apply ``names`` as a Stack, or run ``block`` (any other composition) when given."""
        modules = tuple(self.loras[n] for n in names)
        composed = None
        if block is not None and modules:
            composed = ComposedLoRAs(self.linear, self.loras, block, self._check_stack)
            composed.parallel_runtime = parallel_runtime
        if len(modules) > 1 and composed is None:
            self._check_stack(names, modules)
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._modules = modules
        if not modules:
            return
        if composed is not None:
            # A BatchSplit of plain LoRAs runs as two batched multiplies (validated by ComposedLoRAs first).
            hook = BatchedLoRAs.build(self.linear, self.loras, block) or composed
        elif len(modules) == 1:
            hook = self._apply_single
        else:
            hook = self._scale_stack if modules[0].composition_mode == "scale" else self._add_stack
        # The update is part of what the linear computes: every other hook on it must see it.
        self._handle = register_staged_forward_hook(self.linear, hook, HookStage.COMPUTE)

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

    def _apply_single(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return self._modules[0].apply(output, args[0], weight_out_in(self.linear))

    def _add_stack(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        # Each additive adapter reads the previous one's update; gates read the layer input.
        layer_input = hidden = args[0]
        for adapter in self._modules:
            hidden = adapter.delta(hidden, layer_input)
        return output + hidden

    def _scale_stack(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        scale = self._modules[0].scale_vector(args[0])
        for adapter in self._modules[1:]:
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
        if not torch.isfinite(scale).all() or (scale == 0).any():
            raise AdapterError(
                f"Cannot merge adapter {name!r}: its scaling of {type(self.linear).__name__} has zero or non-finite "
                "entries, so merging could not be undone by reset_adapter(). Use it unmerged."
            )
        return scale

    @torch.no_grad()
    def merge(self, name: str, scale: torch.Tensor | None) -> None:
        adapter = self.loras[name]
        weight, bias = weight_out_in(self.linear), self.linear.bias
        if isinstance(adapter, AdditiveModule):
            weight.add_(adapter.delta_weight().to(weight.dtype))
        if scale is not None:
            weight.mul_(scale.unsqueeze(1))
            if bias is not None:
                bias.mul_(scale)
        self._merged_scale = scale

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        adapter = self.loras[name]
        weight, bias = weight_out_in(self.linear), self.linear.bias
        scale, self._merged_scale = self._merged_scale, None
        if scale is not None:
            weight.div_(scale.unsqueeze(1))
            if bias is not None:
                bias.div_(scale)
        if isinstance(adapter, AdditiveModule):
            weight.sub_(adapter.delta_weight().to(weight.dtype))
