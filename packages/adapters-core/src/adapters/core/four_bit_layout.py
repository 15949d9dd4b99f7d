"""bitsandbytes' CPU inference layout of 4-bit weights, undone when a model with adapters trains.

On a CPU with AVX512-BF16 instructions, bitsandbytes' ``Linear4bit`` repacks its weight for a faster
inference kernel on its first forward pass in eval mode without gradients, and keeps that layout:
the matmul it then runs has no backward, so no layer before it gets a gradient, and adapters there
silently stop training (bitsandbytes 0.50 marks the layout "only for inference"; a model evaluated
before or during training runs into it). A forward pass of a model with adapters that starts in
training mode puts such weights back in bitsandbytes' standard layout first (the conversion
bitsandbytes itself runs before moving a layer to a GPU).
"""

from __future__ import annotations

from torch import nn


def four_bit_layers(model: nn.Module) -> tuple[nn.Module, ...]:
    """The bitsandbytes 4-bit layers of ``model`` (modules whose weight carries a 4-bit ``quant_state``)."""
    return tuple(module for module in model.modules() if hasattr(getattr(module, "weight", None), "quant_state"))


def restore_training_layout(layers: tuple[nn.Module, ...]) -> None:
    """Put every weight of ``layers`` repacked for bitsandbytes' CPU inference kernel back in its standard layout."""
    for layer in layers:
        weight = layer.weight
        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            import bitsandbytes.functional as bnb_functional

            weight.data, weight.quant_state = bnb_functional._convert_weight_packed_for_cpu_inverse(
                weight.data, weight.quant_state
            )
            if hasattr(layer, "quant_state"):
                layer.quant_state = weight.quant_state
