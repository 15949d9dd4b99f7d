"""torchao weight-only quantized linears: int8 (``Int8WeightOnlyConfig``) and intx (``IntxWeightOnlyConfig``).

``transformers`` loads a model with ``TorchAoConfig(quant_type=...)`` (or ``torchao.quantization.quantize_``
converts one) by replacing each ``nn.Linear``'s weight with a torchao tensor subclass: the layer stays a
plain ``nn.Linear``, and its weight reports a *floating* dtype (the compute dtype) while it stores
integer codes and scales. So the integer-dtype test that finds bitsandbytes' layers misses it;
:func:`is_torchao` recognises it by its class, without importing torchao (the core does not depend on it).

Merging needs the layer's quantization settings to quantize the merged weight again, and torchao's
tensors do not keep the config they were made with. What they do keep (their class, ``block_size``,
target dtype, zero points) determines the weight-only config for the types below
(:func:`torchao_config`); a re-quantized weight whose class or attributes differ from the original's
is refused, so a merge never changes a layer's format. Not recorded in the tensor, and so not
recovered: how the scales were chosen within that grid (``IntxWeightOnlyConfig``'s
``SYMMETRIC_NO_CLIPPING_ERR`` mapping or ``HQQ_SCALE_ONLY`` algorithm re-quantize as torchao's default
``SYMMETRIC``/``AFFINE``); the merge warning reports the rounding either way.

``Int4WeightOnlyConfig`` (torchao 0.18) runs on CUDA only: every packing format fails on CPU
("plain" and "preshuffled" need the CUDA-only ``mslk`` kernels, "plain_int32" does not support CPU,
"tile_packed_to_4d" takes bfloat16 only, then asks CUDA for its compute capability), and its tensors do
not implement ``dequantize()``. DoRA and merging, which read the weight, raise :class:`TypeError`
naming the type on such layers (the methods that read only a layer's input and output do not touch
its weight; untested on them here, for want of CUDA). On CPU, int4 weight-only is
``IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def is_torchao(weight: Any) -> bool:
    """Whether ``weight`` is a torchao tensor subclass (any class in its MRO defined in torchao)."""
    # Plain weights answer without walking the MRO: DoRA reads its layer's weight on every pass, and
    # torch.compile cannot trace iteration over a class's __mro__.
    if type(weight) in (torch.Tensor, nn.Parameter) or not isinstance(weight, torch.Tensor):
        return False
    return any(cls.__module__.partition(".")[0] == "torchao" for cls in type(weight).__mro__)


def torchao_kind(weight: torch.Tensor) -> str:
    """A short name of the format, for the merge warning: ``"torchao int8"``, ``"torchao int4"``."""
    target = getattr(weight, "target_dtype", None)  # IntxUnpackedToInt8Tensor: the codes' own width
    if isinstance(target, torch.dtype):
        return f"torchao {str(target).removeprefix('torch.')}"
    if type(weight).__name__ == "Int8Tensor":
        return "torchao int8"
    return f"torchao {type(weight).__name__}"


def torchao_dequantized(weight: torch.Tensor) -> torch.Tensor:
    """The weight as a plain float tensor in its own (compute) dtype."""
    # torch.Tensor.dequantize (for torch's own quantized tensors) is inherited by every subclass: only a
    # torchao class that overrides it dequantizes (torchao 0.18's Int4Tensor does not: its call raises
    # NotImplementedError from torchao's dispatch).
    if type(weight).dequantize is torch.Tensor.dequantize:
        raise TypeError(
            f"The layer's weight is a torchao {type(weight).__name__}, which has no dequantize() in this torchao "
            "release, so DoRA and merge_adapter, which read the weight, cannot run on it (the other methods read only "
            "the layer's input and output). Weights of Int8WeightOnlyConfig and IntxWeightOnlyConfig dequantize."
        )
    with torch.no_grad():
        return weight.dequantize().to(weight.dtype)


def _granularity(weight: torch.Tensor, per_row: Any, per_tensor: Any = None) -> Any:
    """torchao's granularity for the weight's ``block_size``: groups of a row, a row, or the whole tensor."""
    from torchao.quantization import PerGroup

    block, shape = list(weight.block_size), list(weight.shape)
    if block[-1] != shape[-1]:
        return PerGroup(block[-1])
    # (A one-row weight quantizes alike per row and per tensor.)
    return per_tensor if per_tensor is not None and block == shape and shape[0] != 1 else per_row


def _zero_points_are_zero(weight: torch.Tensor) -> bool:
    zero_point = getattr(weight, "zero_point", None)
    return zero_point is None or not bool(zero_point.any())


def torchao_config(weight: torch.Tensor) -> Any:
    """The torchao weight-only config that quantizes a float weight into ``weight``'s format.

    Raises:
        TypeError: ``weight`` is of another torchao type, or quantizes its activations too.
    """
    from torchao.quantization import (
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        MappingType,
        PerAxis,
        PerRow,
        PerTensor,
    )

    name = type(weight).__name__
    # Activation quantization (Int8DynamicActivation...) is not weight-only: its config is another one.
    if name == "Int8Tensor" and getattr(weight, "act_quant_kwargs", None) is None and _zero_points_are_zero(weight):
        # set_inductor_config=False: the re-quantization must not change torch.compile's global settings.
        granularity = _granularity(weight, PerRow(), PerTensor())
        return Int8WeightOnlyConfig(granularity=granularity, set_inductor_config=False)
    if name == "IntxUnpackedToInt8Tensor" and getattr(weight, "activation_quantization", None) is None:
        # (IntxWeightOnlyConfig quantizes per group or per row: it has no per-tensor granularity.)
        granularity = _granularity(weight, PerAxis(0))
        # Symmetric mappings store zero points of 0; asymmetric ones offset the grid per group.
        mapping = MappingType.SYMMETRIC if _zero_points_are_zero(weight) else MappingType.ASYMMETRIC
        scale_dtype = weight.scale.dtype if weight.scale.dtype != weight.dtype else None
        return IntxWeightOnlyConfig(
            weight_dtype=weight.target_dtype, granularity=granularity, mapping_type=mapping, scale_dtype=scale_dtype
        )
    raise TypeError(
        f"Cannot quantize a merged weight again as a torchao {name}: its quantization settings cannot be read from "
        "it. Supported: the weights of torchao's Int8WeightOnlyConfig and IntxWeightOnlyConfig. Use the adapter "
        "unmerged on this model."
    )


def torchao_requantized(weight: torch.Tensor, merged: torch.Tensor) -> nn.Parameter:
    """``merged`` (float ``(out, in)``) quantized in ``weight``'s format: a new frozen parameter."""
    from torchao.quantization import quantize_

    config = torchao_config(weight)
    # quantize_ works on modules: a temporary linear holds the merged weight in the original's dtype.
    holder = nn.Linear(merged.shape[1], merged.shape[0], bias=False, device="meta")
    holder.weight = nn.Parameter(merged.detach().to(weight.device, weight.dtype).contiguous(), requires_grad=False)
    quantize_(holder, config)
    new = holder.weight
    names = [*getattr(weight, "tensor_attribute_names", ()), *getattr(weight, "optional_tensor_attribute_names", ())]
    differs = [n for n in names if _attribute(new, n) != _attribute(weight, n)]
    if type(new) is not type(weight) or differs:
        raise TypeError(
            f"Quantizing the merged weight with {type(config).__name__} gave a {type(new).__name__} "
            f"(differing in {differs or 'type'}), not the layer's own {type(weight).__name__} format; "
            "use the adapter unmerged on this model."
        )
    return new  # (quantize_ made it a frozen parameter)


def _attribute(tensor: torch.Tensor, name: str) -> Any:
    value = getattr(tensor, name, None)
    return tuple(value) if isinstance(value, (list, tuple, torch.Size)) else value
