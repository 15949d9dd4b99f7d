"""``output_adapter_gating_scores=True``: the gate values of gated adapters, returned with the outputs.

Gated adapters (``use_gating``: bottleneck adapters, LoRA and prefix tuning, together UniPELT)
scale their output by ``mean over positions of sigmoid(gate(x))`` per example. As in the reference
library, a forward pass called with ``output_adapter_gating_scores=True`` returns those values:
a ``ModelOutput`` gains the field ``adapter_gating_scores`` (a tuple output gets them as its last
element), ``{adapter name: {layer index: {location: numpy array}}}``. The locations are the
reference's: ``mh_adapter`` / ``output_adapter`` / ``cross_adapter`` (bottleneck), ``selfattn_lora``
/ ``intermediate_lora`` / ``output_lora`` (LoRA) and the prefix place (``self_prefix``). An array is
the score squeezed, ``(batch,)`` for one gate value per example; several gates at one location
(LoRA on q and v) are stacked as columns in the order they ran, ``(batch, n)``.

The recorder exists while the model has a gated adapter (methods call :meth:`GatingScores.ensure`
when they create gates): a forward pre-hook on the model takes the keyword, and only for a call
that asks for the scores are forward hooks put on the gates (each method lists them through
:meth:`~adapters.methods.base.AdapterMethod.gate_sites`); they are removed when the call returns.
What a call records is its thread's own: calls of other threads meanwhile record nothing of it.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .activation import PerThread
from .context import register_pass_pre_hook

if TYPE_CHECKING:
    from .state import AdapterState

#: Key of the recorder in ``AdapterState.method_data``.
KEY = "gating_scores"
#: The forward keyword that asks for the scores, and the output field holding them.
OUTPUT_FLAG = "output_adapter_gating_scores"
OUTPUT_FIELD = "adapter_gating_scores"


class GateSite(NamedTuple):
    """One gate: ``gate`` is the linear layer whose output ``o`` gives the score ``mean_t sigmoid(o)``."""

    name: str
    layer_idx: int
    location: str
    gate: nn.Module


def gate_score(gate_output: torch.Tensor) -> torch.Tensor:
    """The gate value per example from the gate layer's output: sigmoid, averaged over the positions."""
    score = torch.sigmoid(gate_output)
    if score.dim() > 2:
        score = score.mean(dim=tuple(range(1, score.dim() - 1)))
    return score


def as_reference_array(scores: list[torch.Tensor]) -> np.ndarray:
    """The reference's layout: each score squeezed (at least 1-D), repeated gates stacked as columns."""
    result = None
    for score in scores:
        array = np.atleast_1d(score.detach().float().squeeze().cpu().numpy())
        result = array if result is None else np.column_stack((result, array))
    return result


class GatingScores:
    """Records the gates of one model for the forward passes that ask for them.

    Example:
        >>> model.add_adapter("u", config="unipelt", set_active=True)  # doctest: +SKIP
        >>> scores = model(**batch, output_adapter_gating_scores=True).adapter_gating_scores  # doctest: +SKIP
        >>> sorted(scores["u"][0])  # doctest: +SKIP
        ['output_adapter', 'self_prefix', 'selfattn_lora']
    """

    def __init__(self, state: AdapterState) -> None:
        self.state = state
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        # This thread's call: what it records, and the hooks it put on the gates.
        self._now = PerThread(recording=None, gate_handles=[])

    @property
    def recording(self) -> dict[str, dict[int, dict[str, list[torch.Tensor]]]] | None:
        """name -> layer -> location -> scores, during this thread's forward pass that asked for them."""
        return self._now.recording

    @classmethod
    def ensure(cls, state: AdapterState) -> GatingScores:
        """The model's recorder, created (with its model hooks) on the first gated adapter."""
        recorder = state.method_data.get(KEY)
        if recorder is None:
            recorder = state.method_data[KEY] = cls(state)
            model = state.model
            recorder._handles = [
                register_pass_pre_hook(state, model, recorder._start),
                model.register_forward_hook(recorder._finish, always_call=True),
            ]
        return recorder

    @classmethod
    def release_if_unused(cls, state: AdapterState) -> None:
        """Remove the recorder and its hooks once no gate is left (called when adapters are deleted)."""
        recorder = state.method_data.get(KEY)
        if recorder is not None and not recorder.sites():
            for handle in recorder._handles:
                handle.remove()
            recorder._handles.clear()
            del state.method_data[KEY]

    def sites(self) -> list[GateSite]:
        return [site for method in self.state.registry.methods for site in method.gate_sites(self.state)]

    # -- model hooks ----------------------------------------------------------------------
    def _start(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        # The model's own forward does not know the keyword: take it out before the call.
        self._remove_gate_hooks()  # left over if a previous call raised before the model's hooks ran
        now = self._now
        if not kwargs.pop(OUTPUT_FLAG, False):
            now.recording = None
            return args, kwargs
        recording = now.recording = {}
        # Each thread's hooks record its own calls only (the gates are shared by all threads' passes).
        thread = threading.get_ident()
        now.gate_handles = [
            site.gate.register_forward_hook(functools.partial(_record, recording, site, thread))
            for site in self.sites()
        ]
        return args, kwargs

    def _finish(self, module: nn.Module, args: tuple, output: Any) -> Any:
        self._remove_gate_hooks()
        now = self._now
        recorded, now.recording = now.recording, None
        if recorded is None or output is None:
            return None
        scores = {
            name: {
                layer: {location: as_reference_array(values) for location, values in places.items()}
                for layer, places in layers.items()
            }
            for name, layers in recorded.items()
        }
        if isinstance(output, tuple):
            return (*output, scores)
        output[OUTPUT_FIELD] = scores
        return output

    def _remove_gate_hooks(self) -> None:
        now = self._now
        for handle in now.gate_handles:
            handle.remove()
        now.gate_handles = []


def _record(recording: dict, site: GateSite, thread: int, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    if threading.get_ident() == thread:
        places = recording.setdefault(site.name, {}).setdefault(site.layer_idx, {})
        places.setdefault(site.location, []).append(gate_score(output).detach())
