"""Parallel: copy the batch once, where the first adapter of the setup acts.

Everything below that point runs once for all branches. The copies are made at the input of the
first layer that holds an adapter of the setup (so attention inside that layer already sees them),
or earlier by a place that acts before the layers (e.g. on the embeddings). From there on, every
layer's other batch-first inputs (attention masks, position ids, encoder states) are copied to
match, so the model code needs no change. Outputs are ``copies`` times the batch, branch by branch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ParallelRuntime:
    """The hooks of one active Parallel setup; ``batch_size`` is the batch of the current forward."""

    def __init__(self, copies: int) -> None:
        self.copies = copies
        self.batch_size: int | None = None
        self.replicated = False
        # Copy the model's inputs instead of a layer's (everything then runs once per branch).
        self.copy_inputs = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def install(self, base_model: nn.Module, layers: list[nn.Module]) -> None:
        self._handles.append(base_model.register_forward_pre_hook(self.start_forward, with_kwargs=True))
        seen: set[int] = set()
        for layer in layers:
            if id(layer) not in seen:  # ALBERT runs one layer module several times
                seen.add(id(layer))
                self._handles.append(layer.register_forward_pre_hook(self._layer_inputs, with_kwargs=True))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def start_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Record the batch size of a forward pass of the base model (its pre-hook).

        With ``copy_inputs`` set (by a place that must act on each copy before the layers, such as
        per-branch invertible adapters on the embeddings) the model's inputs are copied here.
        """
        first = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
        self.batch_size = first.shape[0] if first is not None else None
        self.replicated = False
        if self.copy_inputs and self.batch_size is not None:
            self.replicated = True
            return _copy_batch(args, self.batch_size, self.copies), _copy_batch(kwargs, self.batch_size, self.copies)
        return None

    def _layer_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        batch = self.batch_size
        if batch is None:
            return args, kwargs
        hidden = args[0] if args else kwargs.get("hidden_states")
        copying = isinstance(hidden, torch.Tensor) and hidden.shape[0] == batch
        if copying:
            self.replicated = True
        elif not self.replicated:
            return args, kwargs
        return _copy_batch(args, batch, self.copies), _copy_batch(kwargs, batch, self.copies)


# Layer arguments whose first dimension is not the batch even when its size happens to match.
_NOT_BATCH_FIRST = frozenset({"cache_position"})


def _copy_batch(value: Any, batch: int, copies: int) -> Any:
    """Copy every batch-first tensor (first dim == batch, e.g. masks, X-MOD's lang_ids) ``copies`` times."""
    if isinstance(value, torch.Tensor):
        if value.dim() >= 1 and value.shape[0] == batch:
            return value.repeat(copies, *([1] * (value.dim() - 1)))
        return value
    if isinstance(value, tuple):
        return tuple(_copy_batch(v, batch, copies) for v in value)
    if isinstance(value, list):
        return [_copy_batch(v, batch, copies) for v in value]
    if isinstance(value, dict):
        return {k: v if k in _NOT_BATCH_FIRST else _copy_batch(v, batch, copies) for k, v in value.items()}
    return value
