"""ReFT adapters under BatchSplit, Parallel and Average (and nested Stacks).

The state after a layer is its output and, per example, where the real tokens start and end: every
adapter finds its positions from those bounds, so an example keeps its own positions in any slice
of the batch and in every Parallel copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ...composition.blocks import AdapterCompositionBlock, Average
from ...composition.engine import ComposablePlace, cat_states, compose, slice_state
from ...errors import CompositionError
from ..base import AdapterDict
from .positions import InterventionPositions, check_within, gather_indices


class ReftState(NamedTuple):
    hidden: torch.Tensor
    offsets: torch.Tensor  # first real position of each example
    ends: torch.Tensor  # one past its last real position


class ComposedRefts(ComposablePlace[ReftState]):
    """Runs one composition block over the ReFT modules after one layer (a forward hook on the layer).

    Example:
        Activated by ``ReftPlace.activate`` for any setup but a plain Stack, e.g.
        ``model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 1]))``.
    """

    def __init__(
        self,
        refts: AdapterDict,
        positions: InterventionPositions,
        block: AdapterCompositionBlock,
        padded: bool,
        from_encoder: bool = False,
    ) -> None:
        _check_averages(block, refts)
        self.refts = refts
        self.positions = positions
        self.padded = padded
        self.from_encoder = from_encoder
        self.block = block
        self.names = frozenset(n for n in block.flatten() if n in refts._modules)

    def __call__(self, module: torch.nn.Module, args: tuple, output):
        hidden = output[0] if isinstance(output, tuple) else output
        runtime = self.parallel_runtime
        copies = runtime.copies if runtime is not None and runtime.batch_size is not None else 1
        bounds = self.positions.bounds(hidden, copies, self.padded, self.from_encoder)
        state = compose(self.block, ReftState(hidden, *bounds), self)
        return (state.hidden, *output[1:]) if isinstance(output, tuple) else state.hidden

    # -- ComposablePlace ----------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self.names

    def single(self, name: str, state: ReftState) -> ReftState:
        reft = self.refts[name]
        hidden = state.hidden
        # The encoder's sequence length in a decoder layer (see InterventionPositions).
        length = self.positions.length(hidden, self.from_encoder)
        index = gather_indices(
            reft.prefix_positions, reft.suffix_positions, state.offsets, state.ends, length, hidden.shape[2]
        )
        return state._replace(hidden=reft.apply_at(hidden, *check_within(index, hidden.shape[1], length)))

    def batch_size(self, state: ReftState) -> int:
        return state.hidden.shape[0]

    def seq_len(self, state: ReftState) -> int:
        return state.hidden.shape[1]

    def slice(self, state: ReftState, dim: int, index: slice) -> ReftState:
        if dim != 0:  # Split is refused for ReFT by supported_blocks; guard the invariant anyway
            raise CompositionError("ReFT positions are per sequence; a sequence Split cannot cut them.")
        return slice_state(state, dim, index)

    def cat(self, states: Sequence[ReftState], dim: int) -> ReftState:
        return cat_states(states, dim)

    def average(self, states: Sequence[ReftState], weights: Sequence[float]) -> ReftState:
        # Weights sum to 1 (checked at activation), so this is the input plus the weighted edits.
        hidden = sum(w * s.hidden for w, s in zip(weights, states, strict=True))
        return states[0]._replace(hidden=hidden)


def _check_averages(block: AdapterCompositionBlock, refts: AdapterDict) -> None:
    """Refuse an Average of ReFT adapters whose weights do not sum to 1 (it would rescale every position)."""
    averages_refts = isinstance(block, Average) and any(n in refts._modules for n in block.flatten())
    if averages_refts and abs(sum(block.weights) - 1.0) > 1e-6:
        raise CompositionError(
            f"{block!r}: ReFT adapters are averaged as the input plus the weighted sum of their edits, which "
            f"needs weights summing to 1 (got {sum(block.weights)}); use normalize_weights=True."
        )
    for child in block:
        if isinstance(child, AdapterCompositionBlock):
            _check_averages(child, refts)
