"""Prefix tuning under Stack, BatchSplit, Parallel and Average (and their nestings).

At one self-attention the state is the prefix built so far for each example: a Stack puts each
adapter's prefix in front of the previous ones, BatchSplit and Parallel give every slice (every
copy of the batch) its own children's prefixes, and Average is the weighted sum of its children's
prefix keys and values (the plain sum with the block's weights, so ``weights=[1, 0]`` is the first
adapter). Slices whose prefixes differ in length are joined by padding the shorter ones in front
with positions their examples never see (``valid``), so every example attends exactly to its own
prefix, as if it ran alone.

Prefixes are kept as segments (oldest first) and concatenated once at the end: a segment all
examples share stays a broadcast ``(1, heads, n, head_dim)`` tensor, and Average weights only what
its children added on top of the prefix they received.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ...composition.blocks import AdapterCompositionBlock, Average, BatchSplit, Parallel, Stack
from ...composition.engine import ComposablePlace, compose
from ...errors import CompositionError


class PrefixEntry(NamedTuple):
    """One adapter at one layer: its prefix module, this layer's index among its slices, its gate here."""

    prefix: nn.Module
    index: int
    gate: nn.Module | None


Segment = tuple[torch.Tensor, torch.Tensor]  # keys, values: (batch or 1, heads, n, head_dim)


def adapter_prefix(entry: PrefixEntry, hidden: torch.Tensor | None, batch: int) -> Segment:
    """One adapter's keys and values at one layer, each ``(1 or batch, heads, n, head_dim)``.

    With dropout in training, or a gate (UniPELT: the mean over positions of ``sigmoid(W h + b)``,
    one score for keys and values or one each), the result has one row per example.
    """
    prefix, index, gate = entry
    key, value = prefix.layer_key_values(index)
    key, value = key.unsqueeze(0), value.unsqueeze(0)
    if prefix.dropout.training and prefix.dropout.p > 0:
        # One dropout mask per example, as the reference draws it over the batch.
        key = prefix.dropout(key.expand(batch, -1, -1, -1))
        value = prefix.dropout(value.expand(batch, -1, -1, -1))
    if gate is not None:
        scores = torch.sigmoid(gate(hidden)).mean(dim=1)
        key = key * scores[:, 0].view(-1, 1, 1, 1)
        value = value * scores[:, -1].view(-1, 1, 1, 1)
    return key, value


class PrefixState(NamedTuple):
    #: Batch-first rows of the attention input (the hidden states, for gates; else an empty anchor).
    rows: torch.Tensor
    #: The prefix so far, oldest segment first (attention sees the newest first).
    segments: tuple[Segment, ...]
    #: ``(batch, n)`` bool over the concatenated prefix (newest first), False at padding; None: all seen.
    valid: torch.Tensor | None


class ComposedPrefixes(ComposablePlace[PrefixState]):
    """Builds the prefix of one self-attention under any supported block; the hooks' ``PrefixFn``.

    Example:
        >>> composed = ComposedPrefixes(BatchSplit("a", "b", batch_sizes=[1, 1]), entries)  # doctest: +SKIP
        >>> keys, values, valid = composed(None, 2)  # doctest: +SKIP
    """

    def __init__(
        self, block: AdapterCompositionBlock, entries: Mapping[str, PrefixEntry], parallel_runtime=None
    ) -> None:
        _length(block, entries)  # refuses an Average it cannot form, at activation
        self.block = block
        self.entries = dict(entries)
        self.parallel_runtime = parallel_runtime

    def __call__(
        self, hidden: torch.Tensor | None, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if hidden is None:
            # Without gates only the batch size matters; a (batch, 0) tensor carries it through the slicing.
            device = next(next(iter(self.entries.values())).prefix.parameters()).device
            hidden = torch.empty(batch, 0, device=device)
        state = compose(self.block, PrefixState(hidden, (), None), self)
        if not state.segments:  # every slice holding an adapter of this layer was empty
            entry = next(iter(self.entries.values()))
            key, value = entry.prefix.layer_key_values(entry.index)
            return key[None, :, :0], value[None, :, :0], None
        keys, values = _concat(state.segments)
        return keys, values, state.valid

    # -- ComposablePlace ----------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self.entries

    def single(self, name: str, state: PrefixState) -> PrefixState:
        entry = self.entries[name]
        batch = state.rows.shape[0]
        segment = adapter_prefix(entry, state.rows if entry.gate is not None else None, batch)
        valid = state.valid
        if valid is not None:
            valid = torch.cat([valid.new_ones(batch, segment[0].shape[2]), valid], dim=1)
        return PrefixState(state.rows, (*state.segments, segment), valid)

    def batch_size(self, state: PrefixState) -> int:
        return state.rows.shape[0]

    def seq_len(self, state: PrefixState) -> int:
        raise CompositionError("Prefix tuning cannot be split along the sequence (Split); use BatchSplit.")

    def slice(self, state: PrefixState, dim: int, index: slice) -> PrefixState:
        start, length = index.start, index.stop - index.start
        segments = tuple(
            (k, v) if k.shape[0] == 1 else (k.narrow(0, start, length), v.narrow(0, start, length))
            for k, v in state.segments
        )
        valid = state.valid.narrow(0, start, length) if state.valid is not None else None
        return PrefixState(state.rows.narrow(0, start, length), segments, valid)

    def cat(self, states: Sequence[PrefixState], dim: int) -> PrefixState:
        rows = torch.cat([s.rows for s in states])
        common = _common_segments(states)
        tails = [s.segments[len(common) :] for s in states]
        lengths = [_segments_length(t) for t in tails]
        longest, older = max(lengths), _segments_length(common)
        # Padding only where prefixes differ in length (or were padded before): one mask for all parts.
        padded = any(n != longest for n in lengths) or any(s.valid is not None for s in states)
        valid = None
        if padded:
            parts = []
            for state, n in zip(states, lengths, strict=True):
                batch = state.rows.shape[0]
                seen = state.valid if state.valid is not None else rows.new_ones(batch, n + older, dtype=torch.bool)
                parts.append(torch.cat([seen.new_zeros(batch, longest - n), seen], dim=1))
            valid = torch.cat(parts)
        if not longest:
            return PrefixState(rows, common, valid)
        template = next(t for t in tails if t)[0]
        keys, values = [], []
        for state, tail, n in zip(states, tails, lengths, strict=True):
            batch = state.rows.shape[0]
            k, v = _concat(tail) if n else (template[0][:1, :, :0], template[1][:1, :, :0])
            pad = (0, 0, longest - n, 0)  # the shorter prefixes are padded in front
            keys.append(F.pad(k.expand(batch, -1, -1, -1), pad))
            values.append(F.pad(v.expand(batch, -1, -1, -1), pad))
        return PrefixState(rows, (*common, (torch.cat(keys), torch.cat(values))), valid)

    def average(self, states: Sequence[PrefixState], weights: Sequence[float]) -> PrefixState:
        raise NotImplementedError("a prefix Average needs the prefix its children received: see average_of")

    def average_of(self, received: PrefixState, states: Sequence[PrefixState], weights: Sequence[float]) -> PrefixState:
        # Each child's output is the prefix it received with its own positions in front (newest
        # first); only those are weighted. They are told apart by length, not by which segments the
        # children share: a lone child shares all of its own, and a BatchSplit inside a child joins
        # the received per-example segments into its own.
        older = _segments_length(received.segments)
        own = []
        for state in states:
            shared = _shared_count(received.segments, state.segments)
            keys, values = _concat(state.segments[shared:])
            added = keys.shape[2] - (older - _segments_length(received.segments[:shared]))
            own.append((keys[:, :, :added], values[:, :, :added]))
        keys = sum(w * k for w, (k, _) in zip(weights, own, strict=True))
        values = sum(w * v for w, (_, v) in zip(weights, own, strict=True))
        valid = received.valid
        if valid is not None:  # (_length refuses children whose prefixes differ in length)
            valid = torch.cat([valid.new_ones(valid.shape[0], keys.shape[2]), valid], dim=1)
        return PrefixState(received.rows, (*received.segments, (keys, values)), valid)


def _concat(segments: Sequence[Segment]) -> Segment:
    """One (keys, values) pair, the newest segment first, with the batch of any per-example segment."""
    if len(segments) == 1:
        return segments[0]
    rows = max(k.shape[0] for k, _ in segments)
    keys = torch.cat([k.expand(rows, -1, -1, -1) for k, _ in reversed(segments)], dim=2)
    values = torch.cat([v.expand(rows, -1, -1, -1) for _, v in reversed(segments)], dim=2)
    return keys, values


def _segments_length(segments: Sequence[Segment]) -> int:
    return sum(k.shape[2] for k, _ in segments)


def _common_segments(states: Sequence[PrefixState]) -> tuple[Segment, ...]:
    """The leading segments all states share (the same tensors: the prefix their block received)."""
    common = []
    for group in zip(*(s.segments for s in states), strict=False):
        first = group[0]
        if not all(seg[0] is first[0] and seg[1] is first[1] for seg in group):
            break
        common.append(first)
    return tuple(common)


def _shared_count(received: Sequence[Segment], segments: Sequence[Segment]) -> int:
    """How many leading ``segments`` are ``received``'s own tensors (the rest were added or rebuilt)."""
    count = 0
    for mine, theirs in zip(received, segments, strict=False):
        if mine[0] is not theirs[0] or mine[1] is not theirs[1]:
            break
        count += 1
    return count


def _length(child: str | AdapterCompositionBlock, entries: Mapping[str, PrefixEntry]) -> tuple[int, bool]:
    """(prefix length ``child`` adds at this layer, whether its examples' prefixes differ in length)."""
    if isinstance(child, str):
        entry = entries.get(child)
        return (entry.prefix.config.prefix_length if entry is not None else 0), False
    parts = [_length(c, entries) for c in child]
    lengths = [n for n, _ in parts]
    padded = any(p for _, p in parts)
    if isinstance(child, Stack):
        return sum(lengths), padded
    if isinstance(child, (BatchSplit, Parallel)):
        return max(lengths), padded or len(set(lengths)) > 1
    if isinstance(child, Average):
        acting = [(n, p) for n, p in parts if n]
        if acting and len(acting) < len(parts):
            # Not "adds zero keys and values": those would still take attention, so weights=[0, 1]
            # would not give the second child.
            raise CompositionError(
                f"{child!r}: {child[lengths.index(0)]!r} adds no prefix at one of the layers (an adapter of "
                "another method, or prefix tuning left out there), and Average sums its children's prefix keys "
                "and values position by position. Give every child of the Average a prefix of one prefix_length "
                "at every layer, or put the other adapter outside it (Stack(other, Average(...)))."
            )
        if len({n for n, _ in acting}) > 1 or any(p for _, p in acting):
            raise CompositionError(
                f"{child!r} averages prefixes of different lengths ({[n for n, _ in acting]} positions at one "
                "layer); Average sums keys and values position by position, so give its adapters one "
                "prefix_length."
            )
        return (acting[0][0] if acting else 0), False
    raise CompositionError(f"Prefix tuning does not support {type(child).__name__} blocks ({child!r}).")
