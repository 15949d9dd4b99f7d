"""The composition engine on a toy place: each block's meaning, independent of any method."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

from adapters import CompositionError
from adapters.composition import Average, BatchSplit, Fuse, Parallel, Split, Stack
from adapters.composition.engine import ComposablePlace, cat_states, compose, slice_state
from adapters.core.parallel import ParallelRuntime
from adapters.testing import assert_close


class Hidden(NamedTuple):
    hidden: torch.Tensor


class AffinePlace(ComposablePlace[Hidden]):
    """Adapter ``n`` maps h to ``scale[n] * h + shift[n]``: order, slices and weights all show."""

    def __init__(self, adapters: dict[str, tuple[float, float]]) -> None:
        self.adapters = adapters

    def has(self, name):
        return name in self.adapters

    def single(self, name, state):
        scale, shift = self.adapters[name]
        return Hidden(state.hidden * scale + shift)

    def batch_size(self, state):
        return state.hidden.shape[0]

    def seq_len(self, state):
        return state.hidden.shape[1]

    def slice(self, state, dim, index):
        return slice_state(state, dim, index)

    def cat(self, states, dim):
        return cat_states(states, dim)

    def average(self, states, weights):
        return Hidden(sum(w * s.hidden for w, s in zip(weights, states, strict=True)))


PLACE = AffinePlace({"a": (2.0, 1.0), "b": (3.0, -1.0), "c": (0.5, 0.0)})


# f computes what AffinePlace.single does, with the same element-wise ops: whatever the engine slices, stacks or
# concatenates, its result is bit-identical (torch.equal); only a weighted sum is another computation.
def f(name, h):
    scale, shift = PLACE.adapters[name]
    return h * scale + shift


@pytest.fixture
def h():
    return torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0))


def run(block, h):
    return compose(block, Hidden(h), PLACE).hidden


def test_stack_applies_in_order_and_skips_adapters_absent_here(h):
    assert torch.equal(run(Stack("a", "b"), h), f("b", f("a", h)))
    assert not torch.allclose(run(Stack("b", "a"), h), run(Stack("a", "b"), h))
    assert torch.equal(run(Stack("elsewhere", "a"), h), f("a", h))


def test_batch_split_runs_each_child_on_its_examples(h):
    out = run(BatchSplit("a", Stack("b", "c"), batch_sizes=[1, 3]), h)
    assert torch.equal(out, torch.cat([f("a", h[:1]), f("c", f("b", h[1:]))]))
    with pytest.raises(CompositionError, match="covers 3 but the input has batch size 4"):
        run(BatchSplit("a", "b", batch_sizes=[1, 2]), h)


def test_split_runs_each_child_on_its_positions(h):
    out = run(Split("a", "b", splits=[2, 3]), h)
    assert torch.equal(out, torch.cat([f("a", h[:, :2]), f("b", h[:, 2:])], dim=1))
    with pytest.raises(CompositionError, match="sequence length 5"):
        run(Split("a", "b", splits=[2, 2]), h)


def test_average_weights_the_outputs(h):
    assert_close(run(Average("a", "b", weights=[1, 3]), h), 0.25 * f("a", h) + 0.75 * f("b", h))
    assert_close(run(Average("a", "b", weights=[1, 0]), h), f("a", h))
    # Children with no module here drop out of the average at this place.
    assert_close(run(Average("a", "elsewhere", weights=[1, 1], normalize_weights=False), h), f("a", h))


def test_parallel_copies_the_batch_once_and_runs_one_branch_per_copy(h):
    runtime = ParallelRuntime(copies=2)
    runtime.batch_size = 4
    place = AffinePlace(PLACE.adapters)
    place.parallel_runtime = runtime
    once = compose(Parallel("a", "b"), Hidden(h), place).hidden
    assert runtime.replicated
    assert torch.equal(once, torch.cat([f("a", h), f("b", h)]))
    # At a later place the batch is already copied: each branch gets its own copy.
    again = compose(Parallel("a", "b"), Hidden(once), place).hidden
    assert torch.equal(again, torch.cat([f("a", f("a", h)), f("b", f("b", h))]))
    with pytest.raises(CompositionError, match="expected a batch of 8 here, got 3"):
        compose(Parallel("a", "b"), Hidden(h[:3]), place)


def test_fuse_is_refused_by_a_place_that_cannot_fuse(h):
    with pytest.raises(CompositionError, match="cannot be fused"):
        run(Fuse("a", "b"), h)
