"""``generate()`` under a Parallel setup: one sequence per branch and input row.

A forward pass under Parallel returns ``copies`` times the batch (branch by branch), but
``generate`` keeps its own per-row bookkeeping (the growing ``input_ids``, the attention mask,
the stopping criteria, the KV cache) sized by the batch it was given. So, as the reference library
does, the inputs are copied once before generation starts: every forward pass of the generation
then sees the full ``copies * batch`` rows, the cache is built at that size, and the Parallel
runtime is told not to copy again (its branches are the row blocks it would have made).
The layers below the first adapter then run once per branch instead of once; generation is
dominated by the per-token steps, where that costs a token's worth of compute per branch.

Only the main input and the batch-first tensors among the generation kwargs are copied, which
covers encoder-decoder models too (their encoder input, or given ``encoder_outputs``): the
encoder then runs on the copies as well, and the decoder's start tokens are made for them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..core import context
from ..core.activation import current_frame
from ..core.context import setup_for_next_forward
from ..errors import CompositionError


class ParallelGenerationMixin:
    """Mixed into generative models by ``adapters.init``: ``generate`` accepts Parallel setups.

    With ``Parallel("a", "b")`` active and a batch of ``B`` prompts, ``generate`` returns ``2 * B``
    sequences: rows ``0..B-1`` generated with ``a``, rows ``B..2B-1`` with ``b``, each what the
    adapter generates alone. Without a Parallel setup ``generate`` is transformers' own.

    Example:
        >>> model.set_active_adapters(Parallel("a", "b"))  # doctest: +SKIP
        >>> out = model.generate(**prompt, max_new_tokens=20)  # doctest: +SKIP
        >>> out_a, out_b = out.chunk(2)  # doctest: +SKIP
    """

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        state = self.adapters_state
        setup = setup_for_next_forward(state)
        copies = setup.parallel_channels if setup is not None else 1
        if copies == 1 or state.inputs_replicated:
            return super().generate(*args, **kwargs)
        if kwargs.get("past_key_values") is not None:
            raise CompositionError(
                f"generate() under {setup!r} copies the prompts once per branch, so it cannot continue from a given "
                "past_key_values (built for the uncopied batch); generate without it."
            )
        _mark(state, copies)
        try:
            return super().generate(*args, **kwargs)
        finally:
            _mark(state, 0)

    def _prepare_model_inputs(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, str | None, dict[str, Any]]:
        inputs, input_name, model_kwargs = super()._prepare_model_inputs(*args, **kwargs)
        copies = self.adapters_state.inputs_replicated
        if copies:
            batch = inputs.shape[0]
            inputs = copy_rows(inputs, batch, copies)
            model_kwargs = {key: copy_rows(value, batch, copies) for key, value in model_kwargs.items()}
        return inputs, input_name, model_kwargs

    def _prepare_text_encoder_decoder_kwargs_for_generation(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self._encode_for_generation(super()._prepare_text_encoder_decoder_kwargs_for_generation, args, kwargs)

    def _prepare_encoder_decoder_kwargs_for_generation(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # The same step's name before transformers 5.18 (a release defines only one of the two).
        return self._encode_for_generation(super()._prepare_encoder_decoder_kwargs_for_generation, args, kwargs)

    def _encode_for_generation(self, prepare: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
        # generate() runs an encoder-decoder model's encoder by itself, not through the base model's
        # forward, whose hooks open the pass (its setup: an AdapterSetup's, else the model's) and
        # start a Parallel forward (the batch size its branches split by): run those around this
        # encoder call too. The hooks are this call's own: a pass of another thread meanwhile
        # finds no open pass of its own here and passes through them.
        state = self.adapters_state
        base = state.base_model
        thread = threading.get_ident()

        def enter(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if threading.get_ident() != thread:
                return None
            frame = context.enter_pass(state, module) or current_frame(state)
            runtime = frame.activation.parallel if frame is not None else None
            return runtime.start_forward(module, args, kwargs) if runtime is not None else None

        def leave(module: nn.Module, args: tuple, output: Any) -> None:
            if threading.get_ident() == thread:
                context.leave_pass(state, module)

        encoder = self.get_encoder()
        if encoder is base:  # the base model's own hooks run
            return prepare(*args, **kwargs)
        handles = [
            encoder.register_forward_pre_hook(enter, with_kwargs=True),
            encoder.register_forward_hook(leave, always_call=True),
        ]
        try:
            return prepare(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()


def _mark(state: Any, copies: int) -> None:
    # Per thread: the Parallel runtime of each of this thread's passes reads it (another thread's
    # passes on the model, meanwhile, copy their own inputs).
    state.inputs_replicated = copies


def copy_rows(value: Any, batch: int, copies: int) -> Any:
    """``value`` with every batch-first tensor (first dim == ``batch``) stacked ``copies`` times.

    Mappings keep their type (a ``ModelOutput`` such as given ``encoder_outputs`` stays one).

    Example:
        >>> copy_rows(torch.tensor([[1, 2]]), 1, 2).tolist()
        [[1, 2], [1, 2]]
    """
    if isinstance(value, torch.Tensor):
        if value.dim() >= 1 and value.shape[0] == batch:
            return value.repeat(copies, *([1] * (value.dim() - 1)))
        return value
    if type(value) in (tuple, list):
        return type(value)(copy_rows(v, batch, copies) for v in value)
    if type(value) is dict:
        return {k: copy_rows(v, batch, copies) for k, v in value.items()}
    if isinstance(value, Mapping):  # ModelOutput: keyword construction keeps its fields
        return type(value)(**{k: copy_rows(v, batch, copies) for k, v in value.items()})
    return value
