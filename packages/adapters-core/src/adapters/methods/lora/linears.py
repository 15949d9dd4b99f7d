"""The layers the LoRA family adapts: ``nn.Linear`` (quantized ones too) and transformers' ``Conv1D``.

``Conv1D`` (GPT-2, GPT, ...) computes ``x @ W + b`` with ``W`` stored ``(in, out)``, the transpose
of ``nn.Linear``'s ``(out, in)``. LoRA-family modules read only the layer's input and output, so
they need nothing else from it than its sizes; merging and DoRA's row norms work on the weight
as ``(out, in)``, which for ``Conv1D`` is a transposed *view* of the stored parameter: in-place
updates through it change the parameter itself.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .quantized import dequantized, is_quantized

#: Module types LoRA may adapt.
ADAPTABLE_LINEARS: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)


def is_adaptable(module: nn.Module) -> bool:
    """Whether the LoRA family can adapt ``module`` (a linear map with a 2-D weight)."""
    return isinstance(module, ADAPTABLE_LINEARS)


def linear_features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an adaptable linear layer.

    Example:
        >>> linear_features(Conv1D(nf=12, nx=4))
        (4, 12)
    """
    if isinstance(module, Conv1D):
        in_features, out_features = module.weight.shape
        return in_features, out_features
    return module.in_features, module.out_features


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The layer's weight as ``(out, in)``; a view of the parameter for ``Conv1D`` (no copy).

    A quantized layer's weight (bitsandbytes, torchao) comes dequantized, as a new tensor.

    Example:
        >>> conv = Conv1D(nf=12, nx=4)
        >>> weight_out_in(conv).shape, weight_out_in(conv).data_ptr() == conv.weight.data_ptr()
        (torch.Size([12, 4]), True)
    """
    if is_quantized(module):
        return dequantized(module)
    return module.weight.t() if isinstance(module, Conv1D) else module.weight
