"""What a training checkpoint holds, and how it is written and restored.

A checkpoint of :class:`~adapters.AdapterTrainer` holds no copy of the frozen model. It holds:

* one folder per *item* in the reference format, written by the item's kind (``<checkpoint>/<name>/``
  with ``adapter_config.json`` and ``adapter.safetensors`` for an adapter, as the reference
  library's trainer lays them out);
* ``head.safetensors``: every other trainable parameter of the model, keyed by its name in
  ``model.named_parameters()``: the static head of e.g. ``BertForSequenceClassification``
  (``classifier.*``), the input embeddings with ``train_adapter(..., train_embeddings=True)``, or
  the whole body when training it was allowed;
* ``adapters_checkpoint.json``: the manifest naming the items and their kinds.

Kinds are an extension point: adapters are built in; AdapterFusion layers and flexible heads
register theirs with :func:`register_checkpoint_kind`. Whatever a kind claims is left out of
``head.safetensors``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import reference_format
from ..errors import AdapterError, AdapterLoadError
from ..files import format as fmt
from ..files import integrity
from ..files.paths import inside
from ..files.scratch import tidy_before_reading
from ..files.weights import load_weights, save_weights
from ..io import adapter_io
from ..names import check_adapter_name, check_fusion_name

logger = logging.getLogger(__name__)

MANIFEST = "adapters_checkpoint.json"
EXTRA_WEIGHTS = "head.safetensors"
MANIFEST_VERSION = 1

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class CheckpointKind:
    """One kind of thing a checkpoint saves in its own folder (adapters; fusions and heads to come).

    Attributes:
        kind: the name recorded in the manifest (``"adapter"``).
        names_to_save: the names of this kind a checkpoint of ``model`` must hold.
        parameters: ``(name in model.named_parameters(), parameter)`` of one item; they are not
            written again to ``head.safetensors``.
        save: write one item to a folder. ``state_dict`` is the model's full state dict when the
            trainer gathered one (FSDP, DeepSpeed), in which case tensors come from it.
        load: restore one item from a folder, in place when the model has it (the optimizer keeps
            its parameters); return ``True`` when the item was added to the model instead.
        folder: the item's folder name inside the checkpoint.

    Example:
        >>> register_checkpoint_kind(CheckpointKind(  # doctest: +SKIP
        ...     kind="fusion", names_to_save=active_fusions, parameters=fusion_parameters,
        ...     save=save_fusion, load=load_fusion_in_place, folder=lambda name: name))
    """

    kind: str
    names_to_save: Callable[[nn.Module], list[str]]
    parameters: Callable[[nn.Module, str], Iterable[tuple[str, nn.Parameter]]]
    save: Callable[[nn.Module, Path, str, StateDict | None], None]
    load: Callable[[nn.Module, Path, str], bool]
    folder: Callable[[str], str] = field(default=lambda name: name)


_KINDS: dict[str, CheckpointKind] = {}


def register_checkpoint_kind(kind: CheckpointKind) -> None:
    """Add (or replace) a kind of checkpoint item; checkpoints written afterwards include it."""
    _KINDS[kind.kind] = kind


def checkpoint_items(model: nn.Module) -> list[tuple[CheckpointKind, str]]:
    """What a checkpoint of ``model`` holds besides ``head.safetensors``: ``(kind, name)`` pairs."""
    return [(kind, name) for kind in _KINDS.values() for name in kind.names_to_save(model)]


def extra_trainable_parameters(
    model: nn.Module, items: list[tuple[CheckpointKind, str]] | None = None
) -> dict[str, nn.Parameter]:
    """Trainable parameters no item covers (the static head, trainable embeddings): ``head.safetensors``."""
    items = checkpoint_items(model) if items is None else items
    covered = {id(p) for kind, name in items for _, p in kind.parameters(model, name)}
    return {n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered}


def save_checkpoint(model: nn.Module, output_dir: str | os.PathLike, state_dict: StateDict | None = None) -> None:
    """Write every item, ``head.safetensors`` (when anything else is trainable) and the manifest."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    items = checkpoint_items(model)
    entries = []
    for kind, name in items:
        kind.save(model, inside(output_dir, output_dir / kind.folder(name)), name, state_dict)
        trainable = any(p.requires_grad for _, p in kind.parameters(model, name))
        entries.append({"kind": kind.kind, "name": name, "folder": kind.folder(name), "trainable": trainable})
    extra = extra_trainable_parameters(model, items)
    records = {}
    if extra:
        tensors = {n: state_dict[n] if state_dict is not None and n in state_dict else p for n, p in extra.items()}
        records[EXTRA_WEIGHTS] = save_weights(tensors, output_dir / EXTRA_WEIGHTS)
    state = getattr(model, "adapters_state", None)
    manifest = {
        "version": MANIFEST_VERSION,
        "items": entries,
        "extra_weights": EXTRA_WEIGHTS if extra else None,
        "active_setup": str(state.active_setup) if state is not None and state.active_setup is not None else None,
        **({integrity.KEY: records} if records else {}),
    }
    with open(output_dir / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)


def load_checkpoint(model: nn.Module, checkpoint_dir: str | os.PathLike) -> list[str]:
    """Restore what :func:`save_checkpoint` wrote (or a reference-library checkpoint); return the item names.

    Items the model has are overwritten in place, so parameters, their ``requires_grad`` and an
    existing optimizer stay valid; missing ones are added with the trainability they had when saved.
    """
    checkpoint_dir = Path(checkpoint_dir)
    manifest = _read_manifest(checkpoint_dir)
    entries = manifest["items"] if manifest is not None else _scan_reference_layout(checkpoint_dir)
    # Every entry is checked before any is loaded, so a refused checkpoint changes nothing.
    folders = [_entry_folder(checkpoint_dir, entry) for entry in entries]
    loaded = []
    for entry, folder in zip(entries, folders, strict=True):
        added = _KINDS[entry["kind"]].load(model, folder, entry["name"])
        if added:
            for _, param in _KINDS[entry["kind"]].parameters(model, entry["name"]):
                param.requires_grad = bool(entry.get("trainable", True))
        loaded.append(entry["name"])
    extra = (manifest or {}).get("extra_weights")
    if extra:
        _load_extra_weights(model, checkpoint_dir, extra, (manifest or {}).get(integrity.KEY))
    if not loaded and not extra:
        raise AdapterLoadError(
            f"No adapters in the checkpoint {checkpoint_dir}: expected {MANIFEST} or adapter folders "
            f"(with {fmt.ADAPTER_CONFIG}), as AdapterTrainer writes them."
        )
    return loaded


def _entry_folder(checkpoint_dir: Path, entry: Any) -> Path:
    """The folder of a manifest entry, which must be a known kind with a valid name, inside the checkpoint."""
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("kind", "name", "folder")):
        raise AdapterLoadError(f"{checkpoint_dir / MANIFEST} has a malformed item {entry!r}; the checkpoint is corrupt")
    if entry["kind"] not in _KINDS:
        raise AdapterLoadError(
            f"{checkpoint_dir} holds a {entry['kind']!r} item ({entry['name']!r}) and no installed part of "
            f"adapters can read it; known kinds: {sorted(_KINDS)}."
        )
    # Built-in kinds add what they load under that name; other kinds' names are their own business.
    if entry["kind"] == "fusion":
        check_fusion_name(entry["name"])
    elif entry["kind"] == "adapter":
        check_adapter_name(entry["name"])
    return inside(checkpoint_dir, checkpoint_dir / entry["folder"], AdapterLoadError)


def _read_manifest(checkpoint_dir: Path) -> dict[str, Any] | None:
    path = checkpoint_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterLoadError(f"{path} is not valid JSON ({error}); the checkpoint is corrupt.") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("items"), list):
        raise AdapterLoadError(f"{path} has no 'items' list; it is not an adapters checkpoint manifest.")
    return manifest


def _scan_reference_layout(checkpoint_dir: Path) -> list[dict[str, Any]]:
    """Checkpoints of the reference library's trainer: one adapter folder per adapter, no manifest."""
    if not checkpoint_dir.is_dir():
        raise AdapterLoadError(f"{checkpoint_dir} is not a checkpoint folder.")
    return [
        {"kind": "adapter", "name": adapter_io.read_adapter_config(sub).get("name") or sub.name, "folder": sub.name}
        for sub in sorted(checkpoint_dir.iterdir())
        # Fusion folders are named "a,b" in that layout; they belong to the fusion kind.
        if sub.is_dir() and "," not in sub.name and (sub / fmt.ADAPTER_CONFIG).is_file()
    ]


def _load_extra_weights(model: nn.Module, checkpoint_dir: Path, filename: str, records: Any) -> None:
    path = inside(checkpoint_dir, checkpoint_dir / filename, AdapterLoadError)
    tensors = load_weights(checkpoint_dir, path.name, path.name, True, expected=records, config_name=MANIFEST)
    params = dict(model.named_parameters())
    missing = sorted(set(tensors) - set(params))
    if missing:
        raise AdapterLoadError(f"{path} holds parameters this model does not have: {missing[:5]}.")
    for key, value in tensors.items():
        if params[key].shape != value.shape:
            raise AdapterLoadError(
                f"{key} in {path} has shape {tuple(value.shape)}; this model's has {tuple(params[key].shape)}."
            )
    with torch.no_grad():
        for key, value in tensors.items():
            params[key].copy_(value)


# -- the built-in kind: adapters ---------------------------------------------------------------
def _adapters_to_save(model: nn.Module) -> list[str]:
    """Adapters of the active setup and every adapter with a trainable parameter, in the order added."""
    state = getattr(model, "adapters_state", None)
    if state is None:  # a model without adapters.init: its trainable parameters go to head.safetensors
        return []
    active = set(state.active_setup.flatten()) if state.active_setup is not None else set()
    return [
        name for name in state.configs if name in active or any(p.requires_grad for _, p in state.parameters_of(name))
    ]


def _adapter_parameters(model: nn.Module, name: str) -> Iterable[tuple[str, nn.Parameter]]:
    state = model.adapters_state
    return ((f"{state.base_prefix}{path}", p) for path, p in state.parameters_of(name))


def _save_adapter(model: nn.Module, folder: Path, name: str, state_dict: StateDict | None) -> None:
    if state_dict is None:
        model.save_adapter(folder, name)
        return
    # The trainer gathered the full weights (FSDP, DeepSpeed): the module's own tensors may be shards.
    adapter_io.save_adapter(model.adapters_state, folder, name, tensors=dict(state_dict))


def _load_adapter(model: nn.Module, folder: Path, name: str) -> bool:
    state = model.adapters_state
    tidy_before_reading(folder)
    if name not in state.configs:
        logger.info("Adding adapter %r from the checkpoint folder %s.", name, folder)
        model.load_adapter(folder, load_as=name)
        return True
    if state.merged == name:
        raise AdapterError(f"Adapter {name!r} is merged into the model weights; call reset_adapter() first.")
    data = adapter_io.read_adapter_config(folder)
    reference_format.check_compatible(state, data, folder)
    saved = adapter_io.parse_saved_config(data, folder)
    if saved.to_dict() != state.configs[name].to_dict():
        raise AdapterLoadError(
            f"The adapter {name!r} in {folder} has another config than the model's adapter {name!r}: "
            f"{saved.to_dict()} vs {state.configs[name].to_dict()}. Add it with the config it was trained with."
        )
    tensors = adapter_io.read_adapter_weights(folder, data)
    adapter_io.load_into(state, name, data.get("name") or folder.name, tensors, folder)
    return False


register_checkpoint_kind(
    CheckpointKind(
        kind="adapter",
        names_to_save=_adapters_to_save,
        parameters=_adapter_parameters,
        save=_save_adapter,
        load=_load_adapter,
    )
)
