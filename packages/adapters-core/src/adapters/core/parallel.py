"""Parallel: copy the batch once, where the first adapter of the setup acts.

Everything below that point runs once for all branches. The copies are made at the input of the
first layer that holds an adapter of the setup (so attention inside that layer already sees them),
or earlier by a place that acts before the layers (e.g. on the embeddings). Where that layer's only
adapters of the setup close its last block (bottleneck adapters at a post-LN FFN block, as in the
reference library), the layer runs once and those adapters make the copies (:meth:`ParallelRuntime.copy_in`).
From there on, every layer's other batch-first inputs (attention masks, position ids, encoder
states) are copied to match, so the model code needs no change. Outputs are ``copies`` times the
batch, branch by branch.

A :class:`ParallelRuntime` belongs to one built setup (an activation); the model's
:class:`ParallelHooks` run the runtime of each pass's own setup, and what a pass records (its
batch size, whether its batch holds the copies) is kept per thread, so passes under different
setups may run at once.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn

from ..errors import CompositionError
from .activation import PerThread, current


class ParallelRuntime:
    """One Parallel setup as built for a model; ``batch_size`` is the batch of this thread's current pass.

    The runtime belongs to an :class:`~adapters.core.activation.Activation`; the model's
    :class:`ParallelHooks` call it in the passes that run that activation. What a pass records
    (its batch size, whether its batch holds the copies yet) is per thread.
    """

    def __init__(self, copies: int, state: Any = None) -> None:
        self.copies = copies
        # Copy the model's inputs instead of a layer's (everything then runs once per branch).
        self.copy_inputs = False
        self._state = state
        # The index of the first adapted layer: the inputs of the layers from there on are copied.
        self.first = 0
        # The first layer, when its last block's adapters make the copies (see copy_in), and the
        # names of its positional parameters.
        self._copying_layer: nn.Module | None = None
        self._copying_layer_params: tuple[str, ...] = ()
        self._now = PerThread(batch_size=None, replicated=False, inputs_replicated=False)

    @property
    def batch_size(self) -> int | None:
        return self._now.batch_size

    @batch_size.setter
    def batch_size(self, value: int | None) -> None:
        self._now.batch_size = value

    @property
    def replicated(self) -> bool:
        return self._now.replicated

    @replicated.setter
    def replicated(self, value: bool) -> None:
        self._now.replicated = value

    @property
    def inputs_replicated(self) -> bool:
        """The model's inputs hold the copies already (this thread's generate() made them): nothing is copied."""
        if self._state is not None:
            return bool(self._state.inputs_replicated)
        return self._now.inputs_replicated

    @inputs_replicated.setter
    def inputs_replicated(self, value: bool) -> None:
        self._now.inputs_replicated = value

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

    def install(self, first: int) -> None:
        """Copy the inputs of the layers from index ``first`` (the first adapted layer) on, in each pass."""
        self.first = first

    def start_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Record the batch size of a forward pass of the base model (its pre-hook).

        With ``copy_inputs`` set (by a place that must act on each copy before the layers, such as
        per-branch invertible adapters on the embeddings) the model's inputs are copied here.
        """
        first = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
        batch = first.shape[0] if first is not None else None
        self.replicated = False
        if self.inputs_replicated and batch is not None:
            if batch % self.copies:
                self.batch_size = None
                raise CompositionError(
                    f"A Parallel setup of {self.copies} branches got {batch} rows of copied inputs, which "
                    "is not a multiple of the branches."
                )
            self.batch_size = batch // self.copies
            self.replicated = True
            return None
        self.batch_size = batch
        if self.copy_inputs and batch is not None:
            self.replicated = True
            return _copy_batch(args, batch, self.copies), _copy_batch(kwargs, batch, self.copies)
        return None

    def _stack_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        # The decoder gets the copied encoder output but the model's own decoder inputs and masks:
        # copy those (tensors already holding the copies have another first dimension and stay).
        if self.batch_size is None or not self.replicated or self.inputs_replicated:
            return args, kwargs
        return _copy_batch(args, self.batch_size, self.copies), _copy_batch(kwargs, self.batch_size, self.copies)

    def _layer_inputs(self, index: int, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        batch = self.batch_size
        if batch is None or self.inputs_replicated or index < self.first:
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


class ParallelHooks:
    """The hooks of one model that run the Parallel runtime of each pass's activation (if it has one).

    Attached once a setup with a Parallel block is built for the model: a pre-hook on the entry of
    every later stack (a decoder) and on every layer. A pass whose activation has no Parallel block
    passes through them. Each pass's runtime is started (its batch size recorded, or the model's
    inputs copied) by the pass's own pre-hook on the body, after the body's other pre-hooks
    (:func:`adapters.core.context.track`).
    """

    def __init__(self, layers: list[tuple[int, nn.Module]], stack_entries: list[nn.Module]) -> None:
        # Each layer module once, with the last index it runs at (ALBERT runs one layer module at every index).
        last: dict[int, tuple[int, nn.Module]] = {}
        for index, layer in layers:
            last[id(layer)] = (index, layer)
        self.layers = list(last.values())
        self.stack_entries = stack_entries
        self._state: Any = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach_hooks(self, state: Any) -> None:
        self._state = state
        for module in self.stack_entries:
            self._handles.append(module.register_forward_pre_hook(self._stack_inputs, with_kwargs=True))
        for index, layer in self.layers:
            hook = functools.partial(self._layer_inputs, index)
            self._handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))

    def detach_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _stack_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        runtime = current(self._state).parallel
        return runtime._stack_inputs(module, args, kwargs) if runtime is not None else None

    def _layer_inputs(self, index: int, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        runtime = current(self._state).parallel
        return runtime._layer_inputs(index, module, args, kwargs) if runtime is not None else None


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
