"""Parallel: copy the batch once, where the first adapter of the setup acts.

Everything below that point runs once for all branches. The copies are made at the input of the
first layer that holds an adapter of the setup (so attention inside that layer already sees them),
or earlier by a place that acts before the layers (e.g. on the embeddings). Where that layer's only
adapters of the setup close its last block (bottleneck adapters at a post-LN FFN block, as in the
reference library), the layer runs once and those adapters make the copies (:meth:`ParallelRuntime.copy_in`).
From there on, every layer's other batch-first inputs (attention masks, position ids, encoder
states) are copied to match, so the model code needs no change. Outputs are ``copies`` times the
batch, branch by branch.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ..errors import CompositionError


class ParallelRuntime:
    """The hooks of one active Parallel setup; ``batch_size`` is the batch of the current forward."""

    def __init__(self, copies: int) -> None:
        self.copies = copies
        self.batch_size: int | None = None
        self.replicated = False
        # Copy the model's inputs instead of a layer's (everything then runs once per branch).
        self.copy_inputs = False
        # The model's inputs hold the copies already (generate() made them): nothing is copied.
        self.inputs_replicated = False
        # The first layer, when its last block's adapters make the copies (see copy_in), and the
        # names of its positional parameters.
        self._copying_layer: nn.Module | None = None
        self._copying_layer_params: tuple[str, ...] = ()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def copy_in(self, layer: nn.Module) -> None:
        """Let the adapters at the last block of ``layer`` (the first adapted layer) copy the batch.

        Call only where no other adapter of the setup acts in ``layer`` and that block's output is
        the layer's output (bottleneck adapters before a post-LN FFN block's LayerNorm): the rest of
        the layer then runs once for all branches. A forward whose layer inputs include batch-first
        tensors other than those consumed before that block (masks, encoder states: see
        ``_READ_BEFORE_LAST_BLOCK``; e.g. X-MOD's ``lang_ids``) is copied at the layer input as usual.
        """
        self._copying_layer = layer
        try:
            parameters = inspect.signature(layer.forward).parameters.values()
            self._copying_layer_params = tuple(
                p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            )
        except (TypeError, ValueError):
            self._copying_layer_params = ()

    def install(self, base_model: nn.Module, layers: list[nn.Module], stack_entries: list[nn.Module] = ()) -> None:
        """``stack_entries``: the modules running a later layer stack (an encoder-decoder's decoder), whose
        other inputs are copied on entry once the batch was copied in an earlier stack."""
        self._handles.append(base_model.register_forward_pre_hook(self.start_forward, with_kwargs=True))
        for module in stack_entries:
            self._handles.append(module.register_forward_pre_hook(self._stack_inputs, with_kwargs=True))
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
        if self.inputs_replicated and self.batch_size is not None:
            if self.batch_size % self.copies:
                raise CompositionError(
                    f"A Parallel setup of {self.copies} branches got {self.batch_size} rows of copied inputs, which "
                    "is not a multiple of the branches."
                )
            self.batch_size //= self.copies
            self.replicated = True
            return None
        if self.copy_inputs and self.batch_size is not None:
            self.replicated = True
            return _copy_batch(args, self.batch_size, self.copies), _copy_batch(kwargs, self.batch_size, self.copies)
        return None

    def _stack_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        # The decoder gets the copied encoder output but the model's own decoder inputs and masks:
        # copy those (tensors already holding the copies have another first dimension and stay).
        if self.batch_size is None or not self.replicated or getattr(self, "inputs_replicated", False):
            return args, kwargs
        return _copy_batch(args, self.batch_size, self.copies), _copy_batch(kwargs, self.batch_size, self.copies)

    def _layer_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        batch = self.batch_size
        if batch is None or self.inputs_replicated:
            return args, kwargs
        hidden = args[0] if args else kwargs.get("hidden_states")
        copying = isinstance(hidden, torch.Tensor) and hidden.shape[0] == batch
        if copying:
            if module is self._copying_layer and self._copies_in_layer(args, kwargs, batch):
                return args, kwargs  # the adapters at the layer's last block copy the batch
            self.replicated = True
        elif not self.replicated:
            return args, kwargs
        return _copy_batch(args, batch, self.copies), _copy_batch(kwargs, batch, self.copies)

    def _copies_in_layer(self, args: tuple, kwargs: dict, batch: int) -> bool:
        """Whether every other batch-first input of the layer is read before its last block."""
        names = self._copying_layer_params
        for index, value in enumerate(args[1:], start=1):
            if _batch_first(value, batch) and (index >= len(names) or names[index] not in _READ_BEFORE_LAST_BLOCK):
                return False
        return all(
            key in _READ_BEFORE_LAST_BLOCK or key in _NOT_BATCH_FIRST or not _batch_first(value, batch)
            for key, value in kwargs.items()
            if key != "hidden_states"
        )


def _batch_first(value: Any, batch: int) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dim() >= 1 and value.shape[0] == batch
    if isinstance(value, (tuple, list)):
        return any(_batch_first(v, batch) for v in value)
    if isinstance(value, dict):
        return any(_batch_first(v, batch) for v in value.values())
    return False


# Layer arguments that the attention blocks read, before a layer's last (FFN) block.
_READ_BEFORE_LAST_BLOCK = frozenset({"attention_mask", "encoder_hidden_states", "encoder_attention_mask"})
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
