"""Running a composition block at one place of the model.

A method's place (the adapters of one module of one layer) describes its per-forward state and how
one adapter transforms it, by implementing :class:`ComposablePlace`. :func:`compose` then runs any
block over it: Stack folds the state through the children, Split and BatchSplit run each child on
its slice of the sequence or the batch, Average weights the children's outputs, and Parallel runs
each child on its own copy of the batch (the copies are made once per forward pass, see
:mod:`.parallel`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Generic, TypeVar

import torch

from ..errors import CompositionError
from .blocks import AdapterCompositionBlock, Average, BatchSplit, Fuse, Parallel, Split, Stack

S = TypeVar("S")


class ComposablePlace(ABC, Generic[S]):
    """What a method's place implements so that every block runs over it.

    ``S`` is the state flowing through the adapters at this place, usually a NamedTuple of
    batch-first tensors; :func:`slice_state` and :func:`cat_states` cover the common cases.
    """

    #: Set by the Parallel runtime while a Parallel setup is active (original batch size per forward).
    parallel_runtime = None

    @abstractmethod
    def has(self, name: str) -> bool:
        """Whether adapter ``name`` has a module at this place (others are skipped here)."""

    @abstractmethod
    def single(self, name: str, state: S) -> S:
        """Run one adapter."""

    @abstractmethod
    def batch_size(self, state: S) -> int: ...

    @abstractmethod
    def seq_len(self, state: S) -> int: ...

    @abstractmethod
    def slice(self, state: S, dim: int, index: slice) -> S:
        """The part of the state for examples (dim 0) or positions (dim 1) ``index``."""

    @abstractmethod
    def cat(self, states: Sequence[S], dim: int) -> S:
        """Inverse of :meth:`slice`: join the parts back along ``dim``."""

    @abstractmethod
    def average(self, states: Sequence[S], weights: Sequence[float]) -> S:
        """The children's outputs of one input, weighted."""

    def average_of(self, received: S, states: Sequence[S], weights: Sequence[float]) -> S:
        """:meth:`average`, for a place that must know the state its children received (default: it need not).

        Prefix tuning does: each child's output holds the prefix it received, and only what the
        child added is weighted; with one child nothing else tells the two apart.
        """
        return self.average(states, weights)

    def join(self, whole: S, parts: Sequence[S], dim: int) -> S:
        """The state after a slicing block's children ran on the parts of ``whole`` (default: :meth:`cat`).

        A place whose state carries inputs the adapters only read can take those from ``whole``
        instead of joining copies of its own slices (one copy of the batch less per field).
        """
        return self.cat(parts, dim)

    def repeat(self, state: S, copies: int) -> S:
        """The state for ``copies`` copies of the batch, stacked along dim 0."""
        return self.cat([state] * copies, 0)

    def fuse(self, block: Fuse, state: S) -> S:
        raise CompositionError(f"{block!r}: this method cannot be fused (AdapterFusion needs bottleneck adapters).")


def compose(block: AdapterCompositionBlock, state: S, place: ComposablePlace[S]) -> S:
    """Run ``block`` over ``state`` at ``place``.

    Example:
        With a place whose state is a tensor and whose adapters add constants, ``Average("a", "b")``
        returns the input plus the weighted constants (see ``tests/test_composition_engine.py``).
    """
    if isinstance(block, Stack):
        for child in block:
            state = _child(child, state, place)
        return state
    if isinstance(block, BatchSplit):
        _check_sizes(block.batch_sizes, place.batch_size(state), block, "batch size")
        return _run_slices(block, block.batch_sizes, 0, state, place)
    if isinstance(block, Split):
        _check_sizes(block.splits, place.seq_len(state), block, "sequence length")
        return _run_slices(block, block.splits, 1, state, place)
    if isinstance(block, Parallel):
        return _parallel(block, state, place)
    if isinstance(block, Average):
        outputs, weights = [], []
        for child, weight in zip(block, block.weights, strict=True):
            if _acts_here(child, place):
                outputs.append(_child(child, state, place))
                weights.append(weight)
        return place.average_of(state, outputs, weights) if outputs else state
    if isinstance(block, Fuse):
        return place.fuse(block, state) if any(place.has(n) for n in block.flatten()) else state
    raise CompositionError(f"Unknown composition block {block!r}.")


def _child(child: str | AdapterCompositionBlock, state: S, place: ComposablePlace[S]) -> S:
    if isinstance(child, AdapterCompositionBlock):
        return compose(child, state, place)
    return place.single(child, state) if place.has(child) else state


def _acts_here(child: str | AdapterCompositionBlock, place: ComposablePlace) -> bool:
    names = child.flatten() if isinstance(child, AdapterCompositionBlock) else [child]
    return any(place.has(n) for n in names)


def _check_sizes(sizes: list[int], actual: int, block: AdapterCompositionBlock, what: str) -> None:
    if sum(sizes) != actual:
        raise CompositionError(f"{block!r} covers {sum(sizes)} but the input has {what} {actual}; adjust its sizes.")


def _run_slices(block: AdapterCompositionBlock, sizes: list[int], dim: int, state: S, place: ComposablePlace[S]) -> S:
    parts, start = [], 0
    for child, size in zip(block, sizes, strict=True):
        part = place.slice(state, dim, slice(start, start + size))
        parts.append(_child(child, part, place))
        start += size
    return place.join(state, parts, dim)


def _parallel(block: Parallel, state: S, place: ComposablePlace[S]) -> S:
    runtime = place.parallel_runtime
    if parallel_needs_copies(block, place.batch_size(state), runtime):
        state = place.repeat(state, len(block))
    return _run_slices(block, [runtime.batch_size] * len(block), 0, state, place)


def parallel_needs_copies(block: Parallel, batch: int, runtime) -> bool:
    """Whether a place that sees ``batch`` examples under ``block`` must make the branches' copies now.

    True at the first place acting on the original batch (before any layer, or at the last block of
    the first adapted layer); False where the batch holds the copies already. Any other size is an error.
    """
    if runtime is None or runtime.batch_size is None:
        raise CompositionError(f"{block!r} is active but its runtime is not installed; activate it with the model API.")
    if batch == runtime.batch_size:
        runtime.replicated = True
        return True
    if batch != runtime.batch_size * len(block):
        raise CompositionError(f"{block!r}: expected a batch of {runtime.batch_size * len(block)} here, got {batch}.")
    return False


# -- helpers for NamedTuple states of batch-first tensors ---------------------------------------
def slice_state(state: S, dim: int, index: slice) -> S:
    return type(state)(
        *(t.narrow(dim, index.start, index.stop - index.start) if _sliceable(t, dim) else t for t in state)
    )


def cat_states(states: Sequence[S], dim: int) -> S:
    first = states[0]
    fields = []
    for i, value in enumerate(first):
        fields.append(torch.cat([s[i] for s in states], dim) if _sliceable(value, dim) else value)
    return type(first)(*fields)


def _sliceable(value: object, dim: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > dim


class ExampleBranches:
    """Which branch of a BatchSplit each example of the batch belongs to, as an index tensor per device.

    For batched paths that pick each example's adapter weights (``weights[index]``) in one gather.

    >>> ExampleBranches([1, 2])(torch.device("cpu"))
    tensor([0, 1, 1])
    """

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = list(sizes)
        self._index: torch.Tensor | None = None

    def __call__(self, device: torch.device) -> torch.Tensor:
        if self._index is None or self._index.device != device:
            counts = torch.tensor(self.sizes, device=device)
            self._index = torch.repeat_interleave(torch.arange(len(self.sizes), device=device), counts)
        return self._index
