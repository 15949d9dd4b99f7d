"""The reference format's names for an adapter's modules and the model fields of its config files.

Every item saved in that format (adapters by :mod:`adapters.io`, fusions by
:mod:`adapters.methods.fusion`) keys its tensors by the module's path as the reference library
names it (:func:`saved_path`) and describes the model it was saved from (:func:`saved_config_dict`).
This knowledge lives here, with the state it reads, so that methods and the io layer share it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import AdapterLoadError
from ..files import format as fmt
from ..files import integrity
from ..files.jsonfile import read_json

if TYPE_CHECKING:
    from .state import AdapterState


def _body_prefix(state: AdapterState) -> str:
    names = state.spec.reference_names
    return names.body_prefix if names is not None else ""


def saved_path(state: AdapterState, path: str) -> str:
    """The key prefix the reference format gives a module at ``path`` (relative to the base model).

    The model's own module path with the base prefix of a model with a head (``bert.``), except
    where the model plugin maps paths that transformers 5 renamed to their 4.x names, or keys a
    body that the 4.x class wrapped under ``body_prefix`` (``ModelSpec.reference_names``).
    """
    names = state.spec.reference_names
    reference = state.spec.reference_path(path)
    if names is not None and names.body_prefix:
        return reference if reference.split(".", 1)[0] in names.outer_modules else names.body_prefix + reference
    return state.base_prefix + reference


def loaded_path(state: AdapterState, path: str) -> str:
    """:func:`saved_path` as the keys read back look after :func:`strip_base_prefix`."""
    return saved_path(state, path) if _body_prefix(state) else state.spec.reference_path(path)


def saved_config_dict(
    state: AdapterState, name: str, config: dict[str, Any], meta: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """The reference format's config file: the model fields every saved adapter or fusion carries."""
    base_config = state.base_model.config
    data = {
        **extra,
        "config": config,
        "hidden_size": state.hidden_size,
        "model_class": state.model_class_name,
        "model_name": getattr(base_config, "name_or_path", "") or None,
        "model_type": base_config.model_type,
        "name": name,
        "version": f"{fmt.FORMAT_VERSION_PREFIX}{fmt.FORMAT_VERSION}",
    }
    if meta:
        data.update(meta)
    return data


def write_config(path: Path, data: dict[str, Any], weights_name: str, weights_record: dict[str, Any]) -> None:
    """Write a config file that names (by size and SHA-256) the weights file saved with it."""
    data = {**data, integrity.KEY: {weights_name: weights_record}}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)


def read_config_file(folder: Path, filename: str, loader: str, saver: str, kind: str) -> dict[str, Any]:
    """The JSON dict of ``folder/filename``, which must hold a ``config`` object (adapter or fusion files)."""
    path = folder / filename
    if not path.is_file():
        raise AdapterLoadError(f"{folder} has no {filename}; point {loader}() at a folder written by {saver}().")
    data = read_json(path, f"{kind} config")
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise AdapterLoadError(f"{path} has no 'config' object; it is not an {kind} config file.")
    # The saved name keys the weights in the file, also when the caller renames the item (load_as).
    if data.get("name") is not None and not isinstance(data["name"], str):
        raise AdapterLoadError(
            f"{path} gives the {kind} the name {data['name']!r}, which is not a string: the file is corrupt or was "
            f"edited. Re-save the {kind}, or set its 'name' field to the name its weights are saved under."
        )
    return data


def check_compatible(state: AdapterState, data: dict[str, Any], folder: Path) -> None:
    """Refuse adapters saved for another model type or hidden size, before touching the model."""
    model_type = state.base_model.config.model_type
    saved_type = data.get("model_type")
    if saved_type is not None and saved_type != model_type:
        raise AdapterLoadError(
            f"The adapter in {folder} was saved for model_type {saved_type!r}; this model is {model_type!r}."
        )
    saved_size = data.get("hidden_size")
    # Models of several stacks (CLIPModel) have no single hidden size; the file says null then.
    if saved_size is not None and state.hidden_size is not None and saved_size != state.hidden_size:
        raise AdapterLoadError(
            f"The adapter in {folder} was saved for hidden_size {saved_size}; this model has {state.hidden_size}."
        )


def strip_base_prefix(state: AdapterState, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys saved from a model with a head carry the body's prefix (``bert.``); drop it.

    Models keyed with a ``body_prefix`` (CLIP's towers) are keyed alike with and without a head.
    """
    prefix = f"{state.base_model.base_model_prefix}."
    if not _body_prefix(state) and tensors and all(k.startswith(prefix) for k in tensors):
        return {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def expected_keys(state: AdapterState, name: str, saved_name: str) -> dict[str, str]:
    """Map keys as saved (with ``saved_name``, no base prefix) to our keys (with ``name``)."""
    mapping = {}
    for path, module in state.modules_of(name).items():
        saved = loaded_path(state, path)
        saved = saved[: -len(name)] + saved_name if saved.endswith(name) else saved
        for key in module.state_dict():
            mapping[f"{saved}.{key}"] = f"{path}.{key}"
    return mapping
