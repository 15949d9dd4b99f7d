"""Save and load single heads in the reference format (``head_config.json`` + ``model_head.safetensors``).

Weight keys are ``heads.<name>.<layer>.<param>``. A head's projection tied to the input
embeddings belongs to the body, so it is neither written nor read: loading a head never changes
the model's embeddings, and the reference library, which ties on load, reads such files as well.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core.reference_format import write_config
from ..errors import AdapterLoadError
from ..files import format as fmt
from ..files import integrity
from ..files.atomic import atomic_directory
from ..files.scratch import tidy_before_reading
from ..files.weights import load_weights, save_weights
from ..names import check_saved_name
from .conversion import static_head

if TYPE_CHECKING:
    from .base import PredictionHead
    from .mixin import ModelWithFlexibleHeadsAdaptersMixin


def has_head(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return any((folder / name).is_file() for name in (fmt.HEAD_WEIGHTS, fmt.HEAD_WEIGHTS_LEGACY))


def head_tensors(model: ModelWithFlexibleHeadsAdaptersMixin, name: str) -> dict[str, torch.Tensor]:
    """The head's tensors under ``heads.<name>.``, without those tied to the input embeddings."""
    head = model.heads[name]
    tied = model.tied_head_params(name)
    return {f"heads.{name}.{key}": value for key, value in head.state_dict().items() if key not in tied}


HEAD_FILES = frozenset({fmt.HEAD_CONFIG, fmt.HEAD_WEIGHTS, fmt.HEAD_WEIGHTS_LEGACY})


def save_head(
    model: ModelWithFlexibleHeadsAdaptersMixin,
    directory: str | os.PathLike,
    name: str,
    use_safetensors: bool = True,
) -> None:
    """Replace the head's files in ``directory``, as one whole-folder swap (other files there stay)."""
    with atomic_directory(directory, HEAD_FILES) as scratch:
        write_head(model, scratch, name, use_safetensors)


def write_head(
    model: ModelWithFlexibleHeadsAdaptersMixin, folder: Path, name: str, use_safetensors: bool = True
) -> None:
    """Write the head's config and weights into ``folder`` (a save's scratch folder)."""
    base_config = model.config
    data = {
        "config": model.heads[name].config,
        "hidden_size": getattr(base_config, "hidden_size", None),
        "model_class": type(model).__name__,
        "model_name": getattr(base_config, "name_or_path", "") or "",
        "model_type": base_config.model_type,
        "name": name,
        "version": f"{fmt.FORMAT_VERSION_PREFIX}{fmt.FORMAT_VERSION}",
    }
    weights_name = fmt.HEAD_WEIGHTS if use_safetensors else fmt.HEAD_WEIGHTS_LEGACY
    record = save_weights(head_tensors(model, name), folder / weights_name, use_safetensors)
    write_config(folder / fmt.HEAD_CONFIG, data, weights_name, record)


@dataclass
class PreparedHead:
    """A head built and filled from a folder, not yet part of the model."""

    head: PredictionHead
    config: dict[str, Any]


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / fmt.HEAD_CONFIG
    if not path.is_file():
        raise AdapterLoadError(
            f"{folder} has no {fmt.HEAD_CONFIG}; point load_head() at a folder written by save_head()."
        )
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterLoadError(f"{path} is not valid JSON ({error}); the file is corrupt.") from error
    if not isinstance(data, dict) or "model_class" not in data:
        raise AdapterLoadError(f"{path} is not a head config file (no 'model_class').")
    return data


def _labels(id2label: dict | None) -> dict[str, int] | None:
    return {label: int(i) for i, label in id2label.items()} if id2label else None


def prepare_head(
    model: ModelWithFlexibleHeadsAdaptersMixin,
    folder: str | os.PathLike,
    name: str | None,
    id2label: dict | None = None,
    use_safetensors: bool | None = None,
) -> PreparedHead:
    """Build the head saved in ``folder`` (flexible, or a static head converted) and load its weights.

    ``name`` overrides the saved name; a static head has none saved, so it needs one. Every
    problem raises :class:`AdapterLoadError` before the model is touched.
    """
    folder = Path(folder)
    tidy_before_reading(folder)
    data = _read_config(folder)
    saved_type = data.get("model_type")
    if saved_type is not None and saved_type != model.config.model_type:
        raise AdapterLoadError(
            f"The head in {folder} was saved for model_type {saved_type!r}; this model is {model.config.model_type!r}."
        )
    saved_size, size = data.get("hidden_size"), getattr(model.config, "hidden_size", None)
    if saved_size is not None and size is not None and saved_size != size:
        raise AdapterLoadError(f"The head in {folder} was saved for hidden_size {saved_size}; this model has {size}.")
    label2id = _labels(id2label)
    saved = data.get("config")
    zero_buffers: frozenset[str] = frozenset()
    if isinstance(saved, dict) and "head_type" in saved:
        name = name or check_saved_name(data.get("name"), folder, "head")
        config = copy.deepcopy(saved)
        prefix = f"heads.{data.get('name')}."

        def rename(key: str) -> str | None:
            return key[len(prefix) :] if key.startswith(prefix) else None

    else:
        conversion = static_head(str(data["model_class"]))
        if conversion is None:
            raise AdapterLoadError(
                f"The head in {folder} comes from a {data['model_class']}, which has no conversion to a flexible head; "
                "load it into that model class instead."
            )
        if not name:
            raise AdapterLoadError(f"The static head in {folder} has no saved name; pass load_as=.")
        config = conversion.head_config(label2id or data.get("label2id"), data.get("num_labels"))
        rename = conversion.head_key
        zero_buffers = conversion.zero_buffers
    if label2id is not None:
        config["label2id"] = label2id
    head = model.build_head(name, config)
    tensors = load_weights(
        folder,
        fmt.HEAD_WEIGHTS,
        fmt.HEAD_WEIGHTS_LEGACY,
        use_safetensors,
        expected=data.get(integrity.KEY),
        config_name=fmt.HEAD_CONFIG,
    )
    if zero_buffers:
        tensors = _without_zero_buffers(tensors, zero_buffers, str(data["model_class"]), folder)
    _load_head_weights(model, head, name, tensors, rename, folder)
    return PreparedHead(head, head.config)


def _without_zero_buffers(
    tensors: dict[str, torch.Tensor], zero_buffers: frozenset[str], model_class: str, folder: Path
) -> dict[str, torch.Tensor]:
    """``tensors`` without the static head's buffers that the flexible head lacks, which must be zero."""
    for key in zero_buffers & tensors.keys():
        if tensors[key].count_nonzero():
            raise AdapterLoadError(
                f"The {model_class} head in {folder} has a non-zero {key}, which the flexible head has no place for: "
                f"its outputs would change. Load the folder into a {model_class} instead."
            )
    return {key: value for key, value in tensors.items() if key not in zero_buffers}


def _load_head_weights(model, head, name: str, tensors: dict[str, torch.Tensor], rename, folder: Path) -> None:
    params = head.state_dict(keep_vars=True)
    tied = model.tied_head_params(name, head)
    mapped: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in tensors.items():
        target = rename(key)
        if target is None or target not in params:
            unexpected.append(key)
        elif target not in tied:  # tied projections are the model's embeddings: keep those
            mapped[target] = value
    missing = sorted(set(params) - set(mapped) - tied)
    if missing or unexpected:
        raise AdapterLoadError(
            f"The head weights in {folder} do not match the head's config: missing keys {missing[:5]}, "
            f"unexpected keys {sorted(unexpected)[:5]}."
        )
    for key, value in mapped.items():
        if params[key].shape != value.shape:
            raise AdapterLoadError(
                f"{key} of the head in {folder} has shape {tuple(value.shape)}; "
                f"the head expects {tuple(params[key].shape)}."
            )
    with torch.no_grad():
        for key, value in mapped.items():
            params[key].copy_(value)
