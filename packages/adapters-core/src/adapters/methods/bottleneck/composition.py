"""Bottleneck adapters under any composition block (Split, BatchSplit, Parallel, Average, Fuse).

The state at a residual block is the running hidden state plus the sub-block output ``h`` and
the residual input ``x`` that every adapter's ``pre_forward`` reads. One adapter is
``pre_forward`` then ``forward``; after the whole block the last adapter's ``post_forward``
closes the residual block, as in the reference library. Because that closing step runs once for
all slices, the adapters of a slicing or averaging block must agree on where the residual and
the LayerNorm sit (checked at activation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from ...composition.blocks import AdapterCompositionBlock, Fuse
from ...composition.engine import ComposablePlace, cat_states, compose, slice_state
from ...errors import CompositionError
from ..base import AdapterDict

# Fields that decide how the block output is formed around the adapters.
PLACEMENT_FIELDS = ("is_parallel", "original_ln_before", "original_ln_after", "residual_before_ln")


class BottleneckState(NamedTuple):
    hidden: torch.Tensor
    h: torch.Tensor
    x: torch.Tensor
    #: The last adapter's scaled up-projection output (``Bottleneck.project``), read by AdapterFusion.
    up: torch.Tensor | None = None


class ComposedBottlenecks(ComposablePlace[BottleneckState]):
    """Runs one composition block over the bottleneck adapters of one residual block."""

    def __init__(
        self,
        adapters: AdapterDict,
        block: AdapterCompositionBlock,
        fuser: Callable[[ComposedBottlenecks, Fuse, BottleneckState], BottleneckState] | None = None,
    ) -> None:
        present = [n for n in block.flatten() if n in adapters._modules]
        placements = {tuple(adapters[n].config[f] for f in PLACEMENT_FIELDS) for n in present}
        if len(placements) > 1:
            raise CompositionError(
                f"{block!r} combines bottleneck adapters with different residual/LayerNorm placement "
                f"({', '.join(PLACEMENT_FIELDS)}); their outputs cannot share one block output. "
                "Compose adapters of the same kind (e.g. all seq_bn or all par_bn)."
            )
        self.adapters = adapters
        self.block = block
        self.names = frozenset(present)
        self.last = adapters[present[-1]]
        self.fuser = fuser
        # Only AdapterFusion reads the up-projections a slicing block joins; without a Fuse they are not joined.
        self._joins_up = _has_fuse(block)
        self._layer_norm: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(
        self, h: torch.Tensor, x: torch.Tensor, layer_norm, summed: torch.Tensor | None = None
    ) -> torch.Tensor:
        self._layer_norm = layer_norm
        state = compose(self.block, BottleneckState(h, h, x), self)
        return self.last.post_forward(state.hidden, state.h, state.x, layer_norm)

    @property
    def layer_norm(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The block's own LayerNorm during the current call (``None`` where the model adds x itself)."""
        return self._layer_norm

    # -- ComposablePlace ----------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self.names

    def single(self, name: str, state: BottleneckState) -> BottleneckState:
        adapter = self.adapters[name]
        hidden, residual = adapter.pre_forward(state.hidden, state.x, self._layer_norm)
        up = adapter.project(hidden)
        return state._replace(hidden=adapter.finish(up, hidden, residual), up=up)

    def batch_size(self, state: BottleneckState) -> int:
        return state.hidden.shape[0]

    def seq_len(self, state: BottleneckState) -> int:
        return state.hidden.shape[1]

    def slice(self, state: BottleneckState, dim: int, index: slice) -> BottleneckState:
        return slice_state(state, dim, index)

    def cat(self, states: Sequence[BottleneckState], dim: int) -> BottleneckState:
        if any(s.up is None for s in states):
            # A part no adapter acted on has no up-projection; then the joined state has none.
            states = [s._replace(up=None) for s in states]
        return cat_states(states, dim)

    def repeat(self, state: BottleneckState, copies: int) -> BottleneckState:
        # Before any adapter ran, hidden is h: copy it once.
        h, x = _repeat(state.h, copies), _repeat(state.x, copies)
        hidden = h if state.hidden is state.h else _repeat(state.hidden, copies)
        up = None if state.up is None or not self._joins_up else _repeat(state.up, copies)
        return BottleneckState(hidden, h, x, up)

    def join(self, whole: BottleneckState, parts: Sequence[BottleneckState], dim: int) -> BottleneckState:
        # The adapters never change h and x (see single, average, fuse): the parts hold slices of whole's.
        hidden = torch.cat([part.hidden for part in parts], dim)
        up = None
        if self._joins_up and all(part.up is not None for part in parts):
            up = torch.cat([part.up for part in parts], dim)
        return BottleneckState(hidden, whole.h, whole.x, up)

    def average(self, states: Sequence[BottleneckState], weights: Sequence[float]) -> BottleneckState:
        hidden = torch.stack([s.hidden for s in states]).mul_(
            torch.tensor(weights, dtype=states[0].hidden.dtype, device=states[0].hidden.device).view(-1, 1, 1, 1)
        )
        return states[0]._replace(hidden=hidden.sum(0))

    def fuse(self, block: Fuse, state: BottleneckState) -> BottleneckState:
        # AdapterFusion lives in methods/fusion; its runtime hands a fuser to each place.
        if self.fuser is None:
            return super().fuse(block, state)
        return self.fuser(self, block, state)


def _has_fuse(block: AdapterCompositionBlock) -> bool:
    return isinstance(block, Fuse) or any(
        isinstance(child, AdapterCompositionBlock) and _has_fuse(child) for child in block
    )


def _repeat(tensor: torch.Tensor, copies: int) -> torch.Tensor:
    return tensor.repeat(copies, *([1] * (tensor.dim() - 1)))
