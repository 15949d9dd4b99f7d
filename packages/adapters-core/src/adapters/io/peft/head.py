"""PEFT's ``modules_to_save`` as this library's static head, and back.

PEFT trains full copies of the modules named in ``modules_to_save`` (for a classifier, the
``classifier`` or ``score`` head that ``task_type="SEQ_CLS"`` adds) and saves them under the
module's own key (``base_model.model.classifier.weight``). That is what this library (and the
reference) saves beside an adapter as the static head of a ``...ForSequenceClassification`` model,
so on load such tensors go into the model's head (``with_head``), checked as a saved head is; a
module of the body in ``modules_to_save`` (the embeddings, say) has no equivalent (the body stays
frozen) and is refused. On save, the static head of a model that is not a language model is
written as ``modules_to_save``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...errors import AdapterLoadError
from .. import static_head
from . import common

if TYPE_CHECKING:
    from torch import nn

    from ...core.state import AdapterState


def split_modules_to_save(
    data: dict[str, Any], raw: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``raw`` split into the tuner's tensors and the ``modules_to_save`` ones (keyed by model state-dict key)."""
    names = data.get("modules_to_save") or []
    if isinstance(names, str):
        names = [names]
    tuner: dict[str, torch.Tensor] = {}
    saved: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        path = key[len(common.PEFT_PREFIX) :] if key.startswith(common.PEFT_PREFIX) else key
        module = path.rpartition(".")[0]
        # PEFT matches a module to save by the end of its path, as here.
        if any(module == n or module.endswith("." + n) for n in names):
            saved[path] = value
        else:
            tuner[key] = value
    return tuner, saved


def prepare_head(
    model: nn.Module, state: AdapterState, saved: dict[str, torch.Tensor], folder: Path
) -> static_head.PreparedStaticHead | None:
    """The ``modules_to_save`` tensors checked as ``model``'s static head (``None``: nothing to load)."""
    if not saved or not static_head.head_state(model, state):
        return None  # a model without a static head ignores head weights, as with this library's folders
    body = sorted(k for k in saved if state.base_prefix and k.startswith(state.base_prefix))
    if body:
        raise AdapterLoadError(
            f"{folder}: PEFT's modules_to_save holds {body[0]}, a module of the model's body; this library keeps the "
            "body frozen and has no equivalent. Only the model's head maps (pass with_head=False to skip it)."
        )
    return static_head.check_head_tensors(model, state, saved, folder)


def head_weights(model: nn.Module, state: AdapterState) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The static head as PEFT's ``modules_to_save`` tensors and module names (none for language models)."""
    if common.task_type(model) in common.LANGUAGE_MODEL_TASKS:
        return {}, []  # an LM head is the pretrained one; PEFT's LM tasks do not save it either
    tensors = static_head.saved_head_state(model, state)
    weights = {f"{common.PEFT_PREFIX}{key}": value.detach().contiguous() for key, value in tensors.items()}
    return weights, sorted({key.rpartition(".")[0] for key in tensors})
