"""Which sequence positions ReFT intervenes on: the first and last non-padding tokens.

The attention mask is only visible to the base model's forward; a pre-hook there keeps it for the
layers, and the gather indices are computed once per forward pass and shared by all layers.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ...core.activation import PerThread
from ...core.context import register_pass_pre_hook
from ...errors import AdapterError


class InterventionPositions:
    """Prefix and suffix indices of the current forward pass of one model.

    For sequence ``b`` with its first real token at ``offset[b]`` and ``length[b]`` real tokens
    (from the attention mask; no mask means no padding), the prefix positions are
    ``offset[b] + [0, p)`` and the suffix positions ``offset[b] + length[b] + [-s, 0)``, so left
    and right padding are both respected. Positions are clipped to the sequence.

    The decoder layers of an encoder-decoder (``from_encoder``) intervene, as in the reference
    library, at the positions of the encoder's sequence: its bounds from the attention mask (the
    encoder's) and its length. A position beyond the decoder's sequence cannot be intervened on
    (the reference fails there with an index error); it raises an ``AdapterError``.
    """

    def __init__(self, base_model: nn.Module, state=None) -> None:
        self.base_model = base_model
        self._state = state
        parameters = list(inspect.signature(base_model.forward).parameters)
        self._mask_index = parameters.index("attention_mask") if "attention_mask" in parameters else None
        # This thread's pass: its mask, and the indices computed from it (shared by all layers).
        self._now = PerThread(mask=None, source_length=None, cache={})
        self._handle = None

    # -- the hook on the base model (installed while the model has ReFT adapters) ----------------
    def attach(self) -> None:
        if self._handle is None:
            if self._state is not None:
                self._handle = register_pass_pre_hook(self._state, self.base_model, self._capture)
            else:
                self._handle = self.base_model.register_forward_pre_hook(self._capture, with_kwargs=True)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._now = PerThread(mask=None, source_length=None, cache={})

    def _capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and self._mask_index is not None and len(args) > self._mask_index:
            mask = args[self._mask_index]
        now = self._now
        now.mask = mask
        now.source_length = _input_length(args, kwargs) if mask is None else mask.shape[-1]
        now.cache = {}

    # -- indices ----------------------------------------------------------------------------
    def indices(
        self, prefix: int, suffix: int, hidden: torch.Tensor, padded: bool = True, from_encoder: bool = False
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Gather/scatter indices (batch x n x hidden) for ``prefix`` and ``suffix`` positions."""
        key = (prefix, suffix, *hidden.shape, hidden.device, padded, from_encoder)
        cache = self._now.cache
        cached = cache.get(key)
        if cached is None:
            offsets, ends = self.bounds(hidden, padded=padded, from_encoder=from_encoder)
            length = self.length(hidden, from_encoder)
            cached = gather_indices(prefix, suffix, offsets, ends, length, hidden.shape[2])
            cache[key] = check_within(cached, hidden.shape[1], length)
        return cached

    def length(self, hidden: torch.Tensor, from_encoder: bool = False) -> int:
        """The length of the sequence whose positions ``hidden`` is intervened at (the encoder's for a decoder)."""
        if not from_encoder:
            return hidden.shape[1]
        length = self._now.source_length
        if length is None:
            raise AdapterError(
                "ReFT in a decoder layer intervenes at the positions of the encoder's sequence, but this forward "
                "pass gave neither the encoder's attention_mask nor its input_ids or inputs_embeds. Pass the "
                "attention_mask to the model."
            )
        return length

    def bounds(
        self, hidden: torch.Tensor, copies: int = 1, padded: bool = True, from_encoder: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """First real position and end (exclusive) of every sequence of ``hidden`` (batch x length x width).

        With ``copies`` > 1 (a Parallel setup) ``hidden`` may hold that many copies of the mask's batch.
        ``padded=False`` (layers the attention mask does not describe, e.g. CLIP's vision tower) means
        every position is real. ``from_encoder`` (decoder layers): the bounds of the encoder's sequences.
        """
        batch, length, _ = hidden.shape
        if from_encoder:
            length = self.length(hidden, from_encoder)
        device = hidden.device
        mask = self._now.mask if padded else None
        if mask is None:
            offsets = torch.zeros(batch, dtype=torch.long, device=device)
            return offsets, torch.full((batch,), length, dtype=torch.long, device=device)
        if mask.dim() == 2 and copies > 1 and mask.shape[0] * copies == batch:
            mask = mask.repeat(copies, 1)
        if mask.dim() != 2 or tuple(mask.shape) != (batch, length):
            raise AdapterError(
                f"ReFT finds padding from a (batch x sequence) attention mask; got a mask of shape "
                f"{tuple(mask.shape)} for hidden states of shape {(batch, length)}. Pass the tokenizer's "
                "2-D attention_mask to the model."
            )
        valid = (mask != 0).to(device)
        offsets = valid.int().argmax(dim=1)
        return offsets, offsets + valid.sum(dim=1)


def gather_indices(
    prefix: int, suffix: int, offsets: torch.Tensor, ends: torch.Tensor, length: int, width: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gather/scatter indices (batch x n x width): ``prefix`` positions from ``offsets``, ``suffix`` before ``ends``."""
    batch, device = offsets.shape[0], offsets.device
    out: list[torch.Tensor | None] = []
    for count, start, first in ((prefix, offsets, 0), (suffix, ends, -min(suffix, length))):
        count = min(count, length)
        if count == 0:
            out.append(None)
            continue
        steps = torch.arange(first, first + count, device=device)
        index = (start.unsqueeze(1) + steps).clamp_(0, length - 1)
        out.append(index.unsqueeze(-1).expand(batch, count, width))
    return out[0], out[1]


def check_within(
    indices: tuple[torch.Tensor | None, torch.Tensor | None], length: int, source_length: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``indices`` if all lie in a sequence of ``length``; they were computed for one of ``source_length``."""
    if length < source_length:
        beyond = [int(index.max()) for index in indices if index is not None and int(index.max()) >= length]
        if beyond:
            raise AdapterError(
                f"ReFT in a decoder layer intervenes at the positions of the encoder's sequence (as the reference "
                f"library does), up to position {max(beyond)} here, but the decoder's sequence has only {length} "
                f"positions (the encoder's has {source_length}). Give the decoder at least {max(beyond) + 1} "
                "positions, or add the ReFT adapter to the encoder's layers only (layers=[...])."
            )
    return indices


def _input_length(args: tuple, kwargs: dict) -> int | None:
    """The sequence length of a forward pass's main input (``input_ids``, ``inputs_embeds`` or encoder outputs)."""
    for key in ("input_ids", "inputs_embeds"):
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return value.shape[1]
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 2:
        return args[0].shape[1]
    encoder_outputs = kwargs.get("encoder_outputs")
    if encoder_outputs is not None:
        first = encoder_outputs[0]
        if isinstance(first, torch.Tensor) and first.dim() == 3:
            return first.shape[1]
    return None
