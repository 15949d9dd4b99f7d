"""LoRA-family adapters under Split, BatchSplit, Parallel and Average (and nested Stacks).

The state at a linear layer is its input, its output and the pending update of the adapters
run so far (``hidden``): additive adapters (LoRA, VeRA) chain their updates as in a Stack, (IA)^3
multiplies scaling vectors, and DoRA, which rescales the whole output, turns the output itself
into the new state. Slices whose adapters leave different kinds of pending updates are first
turned into their outputs, so any mix of slices joins back into one tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ...composition.blocks import AdapterCompositionBlock, Stack
from ...composition.engine import ComposablePlace, cat_states, compose, slice_state
from ...errors import CompositionError
from ..base import AdapterDict
from .linears import weight_out_in


class LoRAState(NamedTuple):
    layer_input: torch.Tensor
    output: torch.Tensor
    hidden: torch.Tensor | None  # pending additive update or scaling vector


class ComposedLoRAs(ComposablePlace[LoRAState]):
    """Runs one composition block over the LoRA-family modules of one linear layer."""

    def __init__(self, linear: nn.Module, loras: AdapterDict, block: AdapterCompositionBlock, check_stack) -> None:
        present = [n for n in block.flatten() if n in loras._modules]
        modes = {loras[n].composition_mode for n in present}
        if len(modes) > 1:
            raise CompositionError(
                f"{block!r} mixes additive (LoRA, VeRA) and scaling ((IA)^3) adapters on one layer; compose "
                "adapters of one kind."
            )
        _check_stacks(block, loras, check_stack)
        self.linear = linear
        self.loras = loras
        self.block = block
        self.names = frozenset(present)
        self.scaling_mode = modes == {"scale"}

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return self._finish(compose(self.block, LoRAState(args[0], output, None), self))

    def _finish(self, state: LoRAState) -> torch.Tensor:
        if state.hidden is None:
            return state.output
        return state.output * state.hidden if self.scaling_mode else state.output + state.hidden

    # -- ComposablePlace ----------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self.names

    def single(self, name: str, state: LoRAState) -> LoRAState:
        adapter = self.loras[name]
        x = state.layer_input
        if getattr(adapter, "m", None) is not None:  # DoRA rescales the full output
            return state._replace(output=adapter.apply(self._finish(state), x, weight_out_in(self.linear)), hidden=None)
        if self.scaling_mode:
            scale = adapter.scale_vector(x)
            return state._replace(hidden=scale if state.hidden is None else state.hidden * scale)
        return state._replace(hidden=adapter.delta(x if state.hidden is None else state.hidden, x))

    def batch_size(self, state: LoRAState) -> int:
        return state.layer_input.shape[0]

    def seq_len(self, state: LoRAState) -> int:
        return state.layer_input.shape[1]

    def slice(self, state: LoRAState, dim: int, index: slice) -> LoRAState:
        if state.hidden is not None and state.hidden.shape != state.output.shape:
            # A scaling vector has no batch or sequence axis to cut: apply it first.
            state = LoRAState(state.layer_input, self._finish(state), None)
        return slice_state(state, dim, index)

    def cat(self, states: Sequence[LoRAState], dim: int) -> LoRAState:
        if any(s.hidden is None or s.hidden.shape != s.output.shape for s in states):
            states = [LoRAState(s.layer_input, self._finish(s), None) for s in states]
        return cat_states(states, dim)

    def average(self, states: Sequence[LoRAState], weights: Sequence[float]) -> LoRAState:
        if all(s.hidden is not None for s in states):
            return states[0]._replace(hidden=sum(w * s.hidden for w, s in zip(weights, states, strict=True)))
        output = sum(w * self._finish(s) for w, s in zip(weights, states, strict=True))
        return LoRAState(states[0].layer_input, output, None)


def _check_stacks(block: AdapterCompositionBlock, loras: AdapterDict, check_stack) -> None:
    """Apply the single-layer Stack rules to every Stack of the setup that meets here twice or more."""
    if isinstance(block, Stack):
        names = tuple(n for n in block.flatten() if n in loras._modules)
        if len(names) > 1:
            check_stack(names, tuple(loras[n] for n in names))
    for child in block:
        if isinstance(child, AdapterCompositionBlock):
            _check_stacks(child, loras, check_stack)
