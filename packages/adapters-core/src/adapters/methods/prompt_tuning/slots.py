"""Prompt tuning through placeholder tokens, for models that shape their outputs by ``input_ids``.

GPT-2's forward takes the sequence length from ``input_ids`` and reshapes its last hidden state to
it, so a prompt inserted into the embeddings' output (as for other models) breaks that shape. For
such models (``ModelSpec.prompt_token_slots``) the base model's pre-hook instead inserts
``prompt_length`` placeholder tokens into ``input_ids`` where the prompt goes, and the embeddings'
forward hook overwrites their embeddings with the prompt: every shape the model derives from its
inputs is the prompted one, and position embeddings count the prompt positions. Given
``position_ids`` get the prompt's positions inserted too. With a filled KV cache (``generate``
after its first step) the prompt is in the cache already: nothing is inserted, and given positions
move past the prompt. A given ``cache_position`` (the cache slots of this call's tokens, which
some transformers releases pass and build their causal mask from) gets the same treatment: the
prompt's slots with the first step, a shift by the prompt's length after it. Any Parallel copying
of the inputs happens after this pre-hook, so the embeddings hook sees the copies and gives each
its branch's prompt.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...core.activation import PerThread
from ...core.attention import input_at, replace_input
from ...core.context import register_pass_pre_hook
from ...errors import AdapterError, CompositionError

if TYPE_CHECKING:
    from .method import PromptPlan

_CACHE_KEYWORDS = ("cache", "past_key_values")


def insert_columns(tensor: torch.Tensor, runs: list[tuple[int, int]], n: int, fill: int) -> torch.Tensor:
    """``tensor`` (batch, sequence) with ``n`` columns of ``fill`` at each run of examples' insert position."""
    parts = tensor.split([size for size, _ in runs]) if len(runs) > 1 else (tensor,)
    out = []
    for part, (_, at) in zip(parts, runs, strict=True):
        inserted = torch.full((part.shape[0], n), fill, dtype=part.dtype, device=part.device)
        out.append(torch.cat([part[:, :at], inserted, part[:, at:]], dim=1))
    return out[0] if len(out) == 1 else torch.cat(out)


def positions_with_prompt(
    positions: torch.Tensor, runs: list[tuple[int, int]], n: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``position_ids`` (batch, sequence) with ``n`` consecutive prompt positions at each run's insert position.

    The prompt takes the positions from the first real token after it on (positions from a left-padded
    row's mask start at its first real token), and every later token moves ``n`` further. Padding
    positions carry filler values (0 or 1, by transformers release), so the first real token is found
    through the (batch, sequence) padding ``mask`` when given (with or without the prompt's columns).
    """
    batch = sum(size for size, _ in runs)
    positions = positions.expand(batch, -1) if positions.shape[0] != batch else positions
    length = positions.shape[1]
    if mask is not None and (mask.dim() != 2 or mask.shape[1] not in (length, length + n)):
        mask = None
    if mask is not None and mask.shape[0] != batch:
        mask = mask.expand(batch, -1)
    sizes = [size for size, _ in runs]
    parts = positions.split(sizes) if len(runs) > 1 else (positions,)
    masks = (mask.split(sizes) if len(runs) > 1 else (mask,)) if mask is not None else (None,) * len(runs)
    out = []
    for part, part_mask, (_, at) in zip(parts, masks, runs, strict=True):
        if at >= length:
            start = part[:, -1:] + 1
        elif part_mask is not None:
            # A mask that already has the prompt's columns has them at ``at``: the tokens follow them.
            real = part_mask[:, at + part_mask.shape[1] - length :] != 0
            start = part[:, at:].gather(1, real.int().argmax(-1, keepdim=True))  # no real token: the first
        else:
            start = part[:, at : at + 1]
        prompt = start + torch.arange(n, device=part.device, dtype=part.dtype)
        out.append(torch.cat([part[:, :at], prompt, part[:, at:] + n], dim=1))
    return out[0] if len(out) == 1 else torch.cat(out)


def _signature_index(module: nn.Module, name: str) -> int | None:
    try:
        names = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return None
    return names.index(name) if name in names else None


class PromptSlots:
    """The two hooks of placeholder-token prompt tuning for one base model.

    ``plan_for_call`` gives the prompt plan of the current forward pass (``None``: no prompt).
    """

    def __init__(
        self, base_model: nn.Module, embeddings: nn.Module, plan_for_call: Callable[[], PromptPlan | None]
    ) -> None:
        self.embeddings = embeddings
        self.plan_for_call = plan_for_call
        self._ids_index = _signature_index(base_model, "input_ids") or 0
        self._positions_index = _signature_index(base_model, "position_ids")
        self._mask_index = _signature_index(base_model, "attention_mask")
        self._slots_index = _signature_index(base_model, "cache_position")
        self._cache_indices = {k: _signature_index(base_model, k) for k in _CACHE_KEYWORDS}
        # The plan whose placeholders the embeddings fill next, in this thread's pass.
        self._now = PerThread(pending=None)

    def hooks(self, state: Any) -> list[Any]:
        """Register both hooks (the first on the body of ``state``'s model); returns their handles."""
        return [
            register_pass_pre_hook(state, state.base_model, self.before_model),
            self.embeddings.register_forward_hook(self.fill),
        ]

    def _cached(self, args: tuple, kwargs: dict) -> bool:
        for keyword, index in self._cache_indices.items():
            cache = input_at(index if index is not None else len(args), keyword, args, kwargs)
            length = getattr(cache, "get_seq_length", None)
            if length is not None and length() > 0:
                return True
        return False

    def before_model(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        self._now.pending = None
        plan = self.plan_for_call()
        if plan is None:
            return None
        n = plan.length
        where = self._positions_index if self._positions_index is not None else len(args)
        positions = input_at(where, "position_ids", args, kwargs)
        slots_at = self._slots_index if self._slots_index is not None else len(args)
        slots = input_at(slots_at, "cache_position", args, kwargs)
        if self._cached(args, kwargs):
            # The prompt entered the cache with the first step; these tokens come after it.
            if positions is not None:
                args, kwargs = replace_input(where, "position_ids", positions + n, args, kwargs)
            if slots is not None:
                args, kwargs = replace_input(slots_at, "cache_position", slots + n, args, kwargs)
            return args, kwargs
        if kwargs.get("token_type_ids") is not None:
            raise AdapterError(
                "Prompt tuning inserts prompt positions that have no token type; call the model without "
                "token_type_ids while a prompt-tuning adapter is active."
            )
        input_ids = input_at(self._ids_index, "input_ids", args, kwargs)
        embeds = kwargs.get("inputs_embeds")
        if input_ids is not None:
            runs = plan.insert_at(input_ids.shape[0])
            args, kwargs = replace_input(
                self._ids_index, "input_ids", insert_columns(input_ids, runs, n, 0), args, kwargs
            )
            self._now.pending = plan
        elif embeds is not None:
            if plan.parallel and len(plan.prompts) > 1:
                raise CompositionError(
                    "A Parallel setup of several prompts needs input_ids (the copies of the batch get their prompts "
                    "after the copying); pass input_ids instead of inputs_embeds."
                )
            runs = plan.insert_at(embeds.shape[0])
            kwargs = {**kwargs, "inputs_embeds": _prompted(embeds, plan)}
        else:
            return None
        if positions is not None:
            mask_at = self._mask_index if self._mask_index is not None else len(args)
            mask = input_at(mask_at, "attention_mask", args, kwargs)
            mask = mask if isinstance(mask, torch.Tensor) else None
            positions = positions_with_prompt(positions, runs, n, mask)
            args, kwargs = replace_input(where, "position_ids", positions, args, kwargs)
        if slots is not None:
            # The sequence is n longer: its cache slots run on from the first given one.
            longer = slots[:1] + torch.arange(slots.shape[-1] + n, device=slots.device, dtype=slots.dtype)
            args, kwargs = replace_input(slots_at, "cache_position", longer, args, kwargs)
        return args, kwargs

    def fill(self, module: nn.Module, args: tuple, output: Any) -> Any:
        now = self._now
        plan, now.pending = now.pending, None
        if plan is None:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = _prompted(hidden, plan, overwrite=True)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _prompted(hidden: torch.Tensor, plan: PromptPlan, overwrite: bool = False) -> torch.Tensor:
    """``hidden`` (batch, sequence, dim) with each slice's prompt inserted (or written over placeholders)."""
    slices = plan.slices(hidden.shape[0])
    parts = hidden.split([size for size, _ in slices]) if len(slices) > 1 else (hidden,)
    out = [prompt(part, overwrite=overwrite) for part, (_, prompt) in zip(parts, slices, strict=True)]
    return out[0] if len(out) == 1 else torch.cat(out)
