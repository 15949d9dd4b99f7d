"""Quantized linear layers under the LoRA family: bitsandbytes 4-bit (NF4, FP4) and 8-bit (LLM.int8), and
torchao's weight-only int8 and intx (int4 on CPU) weights (see :mod:`.torchao_weights`).

``transformers`` loads a model with ``BitsAndBytesConfig`` as ``bitsandbytes.nn.Linear4bit`` /
``Linear8bitLt`` layers: ``nn.Linear`` subclasses whose weight is stored packed (``uint8``, or
``int8`` with one scale per output row) and computed in floating point. LoRA, IA3 and VeRA only
read such a layer's input and output, so they train on it as on any linear; what needs the weight
itself goes through this module:

* the dtype the adapter's parameters take (:func:`compute_dtype`): the layer's compute dtype, not
  the storage dtype;
* the weight as a float ``(out, in)`` matrix (:func:`dequantized`), for DoRA's row norms;
* merging (:class:`QuantizedMerge`): dequantize, add the update, quantize again with the layer's
  own settings. Re-quantizing rounds the merged weights to the quantization grid again, so the
  merged model is not exactly the adapted one; one warning per merge says by how much
  (:func:`warn_requantized`). ``reset_adapter``
  puts the original quantized parameter (and bitsandbytes' per-layer state) back, bit for bit.

torchao's layers are plain ``nn.Linear`` whose weight is a tensor subclass reporting a floating dtype;
they go through the same steps, with torchao's own dequantization and re-quantization.

bitsandbytes and torchao are imported only when such a layer is met: the core depends on neither.
"""

from __future__ import annotations

import copy
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .torchao_weights import is_torchao, torchao_dequantized, torchao_kind, torchao_requantized


def is_quantized(linear: nn.Module) -> bool:
    """Whether ``linear`` stores its weight quantized: an integer dtype (bitsandbytes' layers), or a torchao
    tensor subclass (whose dtype is the floating one it computes in)."""
    weight = getattr(linear, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return False
    return not (weight.dtype.is_floating_point or weight.dtype.is_complex) or is_torchao(weight)


def compute_dtype(linear: nn.Module) -> torch.dtype:
    """The floating dtype the layer computes in: what the LoRA family's parameters for it use."""
    if not is_quantized(linear) or is_torchao(linear.weight):
        return linear.weight.dtype
    declared = getattr(linear, "compute_dtype", None)  # Linear4bit's bnb_4bit_compute_dtype
    if declared is not None:
        return declared
    bias = getattr(linear, "bias", None)
    return bias.dtype if bias is not None else torch.get_default_dtype()


def _kind(linear: nn.Module) -> str:
    weight = linear.weight
    if is_torchao(weight):
        return torchao_kind(weight)
    if hasattr(weight, "quant_state"):
        return "4bit"
    if hasattr(weight, "SCB") or hasattr(getattr(linear, "state", None), "SCB"):
        return "8bit"
    raise TypeError(
        f"{type(linear).__name__} stores its weight as {weight.dtype} in a format this library cannot read "
        "(bitsandbytes' Linear4bit and Linear8bitLt, and torchao's weight-only tensors are supported)."
    )


def _row_scales_8bit(linear: nn.Module) -> torch.Tensor:
    # Linear8bitLt moves the scales from the weight to its state on the first forward pass.
    scales = getattr(linear.weight, "SCB", None)
    return scales if scales is not None else linear.state.SCB


def dequantized(linear: nn.Module) -> torch.Tensor:
    """The layer's weight as a float ``(out, in)`` matrix in its compute dtype (a new tensor)."""
    weight = linear.weight
    if is_torchao(weight):
        return torchao_dequantized(weight)
    import bitsandbytes.functional as bnb_functional

    if _kind(linear) == "4bit":
        data, state = weight.data, weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            # bitsandbytes repacks 4-bit weights for its CPU kernels on the first inference pass. Its
            # inverse rewrites the state it is given, so it gets a copy: the layer keeps its own.
            data, state = bnb_functional._convert_weight_packed_for_cpu_inverse(data, copy.copy(state))
        full = bnb_functional.dequantize_4bit(data, state)
    else:
        # LLM.int8: each output row is stored as round(127 * w / max|w|) with its max|w| kept in SCB.
        full = weight.data.float() * (_row_scales_8bit(linear).float().unsqueeze(1) / 127.0)
    return full.to(compute_dtype(linear))


def _quantized_like(linear: nn.Module, weight: torch.Tensor) -> nn.Parameter:
    """A new parameter holding ``weight`` quantized with ``linear``'s own settings."""
    old = linear.weight
    if is_torchao(old):
        return torchao_requantized(old, weight)
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnb_functional

    if _kind(linear) == "4bit":
        state = old.quant_state
        # A state repacked for the CPU kernels records the double quantization it had before.
        nested = getattr(state, "original_nested", state.nested)
        packed, new_state = bnb_functional.quantize_4bit(
            weight.to(old.device).contiguous(),
            blocksize=state.blocksize,
            compress_statistics=nested,
            quant_type=state.quant_type,
            quant_storage=old.quant_storage,
        )
        return bnb.nn.Params4bit(
            packed,
            requires_grad=False,
            quant_state=new_state,
            blocksize=state.blocksize,
            compress_statistics=nested,
            quant_type=state.quant_type,
            quant_storage=old.quant_storage,
            module=linear,
            bnb_quantized=True,
        )
    codes, scales, _ = bnb_functional.int8_vectorwise_quant(weight.to(old.device, torch.float16).contiguous())
    return bnb.nn.Int8Params(codes, requires_grad=False, has_fp16_weights=False, CB=codes, SCB=scales)


@dataclass
class QuantizedMerge:
    """A quantized layer's state before a merge (the parameter object itself and bitsandbytes' per-layer
    state), and how far re-quantizing the merged weights rounded them."""

    weight: nn.Parameter
    module_state: dict[str, Any]
    kind: str
    max_error: float = 0.0
    mean_error: float = 0.0
    mean_update: float = 0.0

    @classmethod
    def merge(cls, linear: nn.Module, original: torch.Tensor, merged: torch.Tensor) -> QuantizedMerge:
        """Quantize ``merged`` (float ``(out, in)``, ``original`` plus the update) into ``linear``."""
        kept = cls(linear.weight, _module_state(linear), _kind(linear))
        linear.weight = _quantized_like(linear, merged)
        _reset_module_state(linear)
        error = (dequantized(linear).float() - merged.float()).abs()
        kept.max_error, kept.mean_error = error.max().item(), error.mean().item()
        kept.mean_update = (merged.float() - original.float()).abs().mean().item()
        return kept

    def restore(self, linear: nn.Module) -> None:
        linear.weight = self.weight
        for key, value in self.module_state.items():
            _set_path(linear, key, value)


def warn_requantized(adapter_name: str, merges: list[QuantizedMerge]) -> None:
    """One warning for a merge into quantized layers: how far re-quantization moved the weights, against the update."""
    if not merges:
        return
    kinds = " and ".join(sorted({m.kind for m in merges}))
    max_error = max(m.max_error for m in merges)
    mean_error = sum(m.mean_error for m in merges) / len(merges)
    mean_update = sum(m.mean_update for m in merges) / len(merges)
    warnings.warn(
        f"Merging adapter {adapter_name!r} into {len(merges)} {kinds}-quantized layers re-quantizes their weights: "
        f"the merged weights differ from the exact sum by up to {max_error:.3g} (mean {mean_error:.3g}), against "
        f"a mean update of {mean_update:.3g}. reset_adapter() restores the original quantized weights exactly; "
        "to keep the update exact, leave the adapter unmerged.",
        UserWarning,
        stacklevel=_user_stacklevel(),
    )


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside adapters and torch: the user's call."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] in ("adapters", "torch"):
        frame, level = frame.f_back, level + 1
    return level


# bitsandbytes keeps copies of the quantization state on the layer too: Linear4bit.quant_state, and
# Linear8bitLt.state.CB/SCB (moved there from the weight on the first forward pass).
_MODULE_STATE = ("quant_state", "state.CB", "state.SCB")


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj


def _set_path(obj: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def _module_state(linear: nn.Module) -> dict[str, Any]:
    return {key: _get_path(linear, key) for key in _MODULE_STATE if _has_path(linear, key)}


def _has_path(obj: Any, path: str) -> bool:
    *parents, last = path.split(".")
    for part in parents:
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return hasattr(obj, last)


def _reset_module_state(linear: nn.Module) -> None:
    """Point the layer's own copies of the quantization state at the new weight's."""
    if _has_path(linear, "quant_state"):
        linear.quant_state = linear.weight.quant_state
    if _has_path(linear, "state.CB"):
        # The next forward pass moves the new weight's CB/SCB into the state (Linear8bitLt.init_8bit_state).
        linear.state.CB = None
        linear.state.SCB = None
