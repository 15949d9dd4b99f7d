"""The static head of a transformers model with a head, saved and loaded beside an adapter.

A model such as ``BertForSequenceClassification`` made adapter-capable with :func:`adapters.init`
has one fixed ("static") head: its parameters outside the body (``classifier.weight``,
``classifier.bias``; GPT-2's ``score.weight``). As in the reference library, ``save_adapter``
writes it next to the adapter (``with_head=True``, the default) in the reference format:

* ``head_config.json``: ``"config": null`` and ``"name": null`` (a static head has neither),
  ``model_class`` (the class name, e.g. ``"BertForSequenceClassification"``), ``model_type``,
  ``model_name``, ``hidden_size``, ``label2id`` and ``num_labels`` of the model config, ``version``;
  ours also records the weights file's size and SHA-256 (``integrity``, which the reference ignores);
* ``model_head.safetensors`` (``pytorch_model_head.bin`` with ``use_safetensors=False``): every
  tensor of the model's state dict outside the body, under its own key (``classifier.weight``).

``load_adapter`` puts them back only into a model of the same class whose head has the same
shapes; anything else is refused, before the adapter or the head is touched. Tensors tied to
the body (an LM head's decoder is the input embeddings) are neither written nor read back: loading
a head does not change the model's embeddings (the reference, which ties them on load, reads such
files as well).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core.reference_format import write_config
from ..errors import AdapterLoadError
from ..files import format as fmt
from ..files import integrity
from ..files.jsonfile import read_json
from ..files.weights import load_weights, save_weights

if TYPE_CHECKING:
    from torch import nn

    from ..core.state import AdapterState

#: The files of a head in an adapter folder (both weights formats: a save owns them all).
HEAD_FILES = frozenset({fmt.HEAD_CONFIG, fmt.HEAD_WEIGHTS, fmt.HEAD_WEIGHTS_LEGACY})


def _is_flexible(model: nn.Module) -> bool:
    # AdapterModel classes keep their heads in ``model.heads``; adapters.heads saves and loads those.
    return callable(getattr(model, "add_prediction_head", None)) and hasattr(model, "heads")


def head_state(model: nn.Module, state: AdapterState) -> dict[str, torch.Tensor]:
    """The static head's tensors (parameters and persistent buffers) by state-dict key; empty without one.

    These are the model's tensors outside its body (``state.base_prefix``): none for a bare
    model (``BertModel``) or a model with flexible heads (``BertAdapterModel``).
    """
    if state.base_model is model or not state.base_prefix or _is_flexible(model):
        return {}
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if not k.startswith(state.base_prefix)}


def saved_head_state(model: nn.Module, state: AdapterState) -> dict[str, torch.Tensor]:
    """The static head's tensors that a save writes: :func:`head_state` without those tied to the body.

    A projection tied to the input embeddings (GPT-2's ``lm_head``) is the body's; loading never
    reads it, so it is not written either (the reference, which ties on load, reads such files).
    """
    tensors = head_state(model, state)
    tied = _tied_to_body(model, state, tensors)
    return {k: v for k, v in tensors.items() if k not in tied}


def has_static_head(model: nn.Module, state: AdapterState) -> bool:
    """Whether ``model`` has a static head that ``save_adapter(..., with_head=True)`` writes."""
    return bool(saved_head_state(model, state))


def _tied_to_body(model: nn.Module, state: AdapterState, tensors: dict[str, torch.Tensor]) -> set[str]:
    """Keys of ``tensors`` that share their storage with a tensor of the body (tied to the input embeddings)."""
    body = {_storage(t) for t in state.base_model.state_dict(keep_vars=True).values() if t.numel()}
    return {key for key, t in tensors.items() if t.numel() and _storage(t) in body}


def _storage(tensor: torch.Tensor) -> tuple[str, int]:
    # A DTensor (a parameter sharded by FSDP2) has data_ptr() 0, as if all were tied: one parameter is one tensor.
    if callable(getattr(tensor, "full_tensor", None)):
        return ("dtensor", id(tensor))
    return ("storage", tensor.data_ptr())


def head_config_dict(model: nn.Module, state: AdapterState) -> dict[str, Any]:
    """The fields of ``head_config.json`` for the static head, as the reference library writes them."""
    config = model.config
    data: dict[str, Any] = {
        "config": None,
        "hidden_size": getattr(config, "hidden_size", None),
        "model_class": type(model).__name__,
        "model_name": getattr(config, "name_or_path", "") or "",
        "model_type": config.model_type,
        "name": None,
        "version": f"{fmt.FORMAT_VERSION_PREFIX}{fmt.FORMAT_VERSION}",
    }
    label2id = getattr(config, "label2id", None)
    if label2id is not None:
        data["label2id"] = {str(label): int(i) for label, i in label2id.items()}
    num_labels = getattr(config, "num_labels", None)
    if num_labels is not None:
        data["num_labels"] = num_labels
    return data


def write_static_head(model: nn.Module, state: AdapterState, folder: Path, use_safetensors: bool = True) -> bool:
    """Write ``head_config.json`` and the head's weights into ``folder`` (a save's scratch folder).

    Returns whether there was a static head to write.
    """
    tensors = saved_head_state(model, state)
    if not tensors:
        return False
    weights_name = fmt.HEAD_WEIGHTS if use_safetensors else fmt.HEAD_WEIGHTS_LEGACY
    record = save_weights(tensors, folder / weights_name, use_safetensors)
    write_config(folder / fmt.HEAD_CONFIG, head_config_dict(model, state), weights_name, record)
    return True


@dataclasses.dataclass
class PreparedStaticHead:
    """A static head read from a folder and checked against the model, not yet copied into it."""

    pairs: list[tuple[torch.Tensor, torch.Tensor]]  # (the model's tensor, the saved tensor)
    label2id: dict[str, int] | None

    def apply(self, model: nn.Module) -> None:
        """Copy the saved tensors into the head and set the config's labels (the checks passed already)."""
        with torch.no_grad():
            for target, source in self.pairs:
                target.copy_(source)
        if self.label2id is not None:
            model.config.label2id = dict(self.label2id)
            model.config.id2label = {i: label for label, i in self.label2id.items()}


def _has_head_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in (fmt.HEAD_WEIGHTS, fmt.HEAD_WEIGHTS_LEGACY))


def _skip_hint() -> str:
    return "pass with_head=False to load only the adapter (and keep this model's head)"


def prepare_static_head(
    model: nn.Module, state: AdapterState, folder: Path, use_safetensors: bool | None = None
) -> PreparedStaticHead | None:
    """Read the head saved in ``folder`` and check that it fits ``model``'s static head.

    ``None`` where there is nothing to load: the model has no static head, or the folder no head
    weights. Every misfit (another head class, another number of labels, missing or extra
    tensors, a corrupt file) raises :class:`AdapterLoadError`; the model is never touched here.
    """
    targets = head_state(model, state)
    if not targets or not _has_head_files(folder):
        return None
    ours = type(model).__name__
    expected = None
    saved_labels = None
    config_path = folder / fmt.HEAD_CONFIG
    if config_path.is_file():  # the reference loads head weights without a config too
        data = read_json(config_path, "head config")
        if not isinstance(data, dict):
            raise AdapterLoadError(f"{config_path} is not a head config file (not a JSON object).")
        saved_class = data.get("model_class")
        if saved_class != ours:
            flexible = isinstance(data.get("config"), dict)
            kind = f"the flexible head {data.get('name')!r} of a" if flexible else "a"
            raise AdapterLoadError(
                f"The head in {folder} was saved from {kind} {saved_class}; this model is a {ours}, whose head "
                f"does not take it. Load the folder into a {saved_class}"
                + (" (AutoAdapterModel)" if flexible else "")
                + f", or {_skip_hint()}."
            )
        expected = data.get(integrity.KEY)
        saved_labels = _saved_labels(data)
    tensors = load_weights(
        folder,
        fmt.HEAD_WEIGHTS,
        fmt.HEAD_WEIGHTS_LEGACY,
        use_safetensors,
        expected=expected,
        config_name=fmt.HEAD_CONFIG,
    )
    # Keys of the body are not the head's (the reference filters them out alike).
    tensors = {k: v for k, v in tensors.items() if not k.startswith(state.base_prefix)}
    return check_head_tensors(model, state, tensors, folder, saved_labels)


def check_head_tensors(
    model: nn.Module,
    state: AdapterState,
    tensors: dict[str, torch.Tensor],
    folder: Path,
    saved_labels: dict[str, int] | None = None,
) -> PreparedStaticHead:
    """Check that ``tensors`` (by state-dict key, ``classifier.weight``) are exactly ``model``'s static head."""
    ours = type(model).__name__
    targets = head_state(model, state)
    tied = _tied_to_body(model, state, targets)
    missing = sorted(set(targets) - set(tensors) - tied)
    unexpected = sorted(set(tensors) - set(targets))
    if missing or unexpected:
        raise AdapterLoadError(
            f"The head weights in {folder} do not fit this {ours}'s head: missing keys {missing[:5]}, unexpected "
            f"keys {unexpected[:5]}. Load the folder into the model class it was saved from, or {_skip_hint()}."
        )
    pairs = []
    for key, target in targets.items():
        if key in tied:  # the body's embeddings: not the head's to change
            continue
        source = tensors[key]
        if source.shape != target.shape:
            labels = "" if saved_labels is None else f" (saved with num_labels={len(saved_labels)})"
            raise AdapterLoadError(
                f"{key} of the head in {folder} has shape {tuple(source.shape)}; this {ours}'s has "
                f"{tuple(target.shape)}{labels}. Create the model with the head's sizes (e.g. "
                f"from_pretrained(..., num_labels=n)), or {_skip_hint()}."
            )
        _check_dtype(key, target, source, folder)
        pairs.append((target, source))
    current = getattr(model.config, "label2id", None)
    if saved_labels is not None and (current is None or len(saved_labels) != len(current)):
        saved_labels = None  # a head whose size is not the label count (QA): keep the config's labels
    return PreparedStaticHead(pairs, saved_labels)


def _saved_labels(data: dict[str, Any]) -> dict[str, int] | None:
    label2id = data.get("label2id")
    if not isinstance(label2id, dict) or not label2id:
        return None
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in label2id.values()):
        return None
    if sorted(label2id.values()) != list(range(len(label2id))):
        return None
    return {str(label): i for label, i in label2id.items()}


def _check_dtype(key: str, target: torch.Tensor, source: torch.Tensor, folder: Path) -> None:
    if target.dtype == source.dtype:
        return
    if not (target.dtype.is_floating_point and source.dtype.is_floating_point):
        raise AdapterLoadError(
            f"{key} of the head in {folder} has dtype {source.dtype}; the model's is {target.dtype}. The file does "
            "not hold this head's weights."
        )
    limit = torch.finfo(target.dtype).max
    if source.numel() and source.detach().abs().max().item() > limit:
        raise AdapterLoadError(
            f"{key} of the head in {folder} holds values beyond the largest {target.dtype} value: cast to this "
            f"model's dtype they would become infinite. Load it into a model in {source.dtype}."
        )


__all__ = [
    "HEAD_FILES",
    "PreparedStaticHead",
    "has_static_head",
    "head_config_dict",
    "head_state",
    "prepare_static_head",
    "saved_head_state",
    "write_static_head",
]
