"""The merged state: merging and resetting, and what saved checkpoints record about it.

A merged adapter is part of the model weights, so the library keeps it from acting twice:

* ``save_pretrained`` records it in the checkpoint's ``config.json`` (``adapters_merged``: name,
  method, config and the SHA-256 of its tensors) and marks its folder (``"merged": true`` in
  ``adapters/<name>/adapter_config.json``); transformers keeps unknown config fields as
  attributes, so a model loaded from that checkpoint carries the record, and saves it again.
* ``load_adapter`` refuses an adapter whose tensors are those of a recorded merge.
* While merged, the adapter is frozen, ``train_adapter`` refuses it, and a setup that it would
  change (a Stack over its layers, a composition block, skip_layers) is refused.
* ``reset_adapter`` copies back the weights kept at merge time (bit for bit).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import AdapterError, AdapterLoadError, CompositionError
from ..io.adapter_io import adapter_state_dict

if TYPE_CHECKING:
    from ..core.state import AdapterState

logger = logging.getLogger(__name__)

#: The ``config.json`` field listing the adapters merged into a checkpoint's weights.
CONFIG_FIELD = "adapters_merged"
#: The ``adapter_config.json`` field marking an adapter saved merged, beside its checkpoint.
ADAPTER_FIELD = "merged"


def weights_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A digest of an adapter's tensors (keys, dtypes, shapes and values), as saved or as read back.

    Example:
        >>> weights_sha256({"w": torch.zeros(2)}) == weights_sha256({"w": torch.zeros(2)})
        True
    """
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def merge(state: AdapterState, name: str) -> None:
    """Merge adapter ``name`` into the weights; refuse (changing nothing) what would apply it twice."""
    if state.merged == name:
        raise AdapterError(
            f"Adapter {name!r} is merged already: merging it again would apply it twice. It acts as it is; "
            "reset_adapter() undoes the merge."
        )
    if state.merged is not None:
        raise AdapterError(f"Adapter {state.merged!r} is merged already; call reset_adapter() first.")
    parts = state.methods_of(state.require(name))
    unsupported = [m.name for m, _ in parts if not m.supports_merge]
    if unsupported:
        raise AdapterError(f"Adapter {name!r} uses {unsupported}, which cannot be merged into weights.")
    setup = state.active_setup
    # The active setup is installed as it will run once merged (no hook for the merged adapter),
    # before any weight changes: a setup that needs it unmerged refuses the merge.
    state.merged = name
    try:
        state.apply_setup(setup)
    except CompositionError as error:
        state.merged = None
        state.apply_setup(setup)
        reason = getattr(error, "merged_reason", str(error)).replace("is merged", "would be merged")
        raise CompositionError(
            f"Adapter {name!r} cannot be merged while {setup!r} is active: {reason}. Activate {name!r} alone "
            "(without skip_layers) or another setup first, then merge it."
        ) from error
    merged = []
    try:
        for method, _ in parts:
            method.merge(state, name)
            merged.append(method)
    except BaseException:
        for method in merged:
            method.unmerge(state, name)
        state.merged = None
        state.apply_setup(setup)
        raise
    # Frozen while merged: its update in the weights no longer follows its parameters.
    for _, param in state.parameters_of(name):
        param.requires_grad = False
    # What save_pretrained checks the adapter against: its folder must hold the merged update.
    state.merged_tensors = {k: v.detach().to("cpu", copy=True) for k, v in adapter_state_dict(state, name).items()}


def reset(state: AdapterState) -> None:
    """Give the merged adapter's layers back the weights they had before the merge."""
    if state.merged is None:
        return
    name, state.merged, state.merged_tensors = state.merged, None, None
    for method, _ in state.methods_of(state.configs[name]):
        method.unmerge(state, name)
    state.apply_setup(state.active_setup)


def refuse_training(state: AdapterState, names: list[str]) -> None:
    if state.merged is not None and state.merged in names:
        raise AdapterError(
            f"Adapter {state.merged!r} is merged into the model weights and cannot be trained there (its update "
            "would no longer follow its parameters); call reset_adapter() first, then train_adapter()."
        )


def saved_records(model: Any) -> list[dict[str, Any]]:
    """The merges ``config.json`` records for a save of ``model`` now: earlier ones and the live one.

    Refuses a merged adapter whose parameters changed since the merge: its folder would hold
    other weights than the update in the checkpoint.
    """
    state: AdapterState = model.adapters_state
    records = [r for r in getattr(model.config, CONFIG_FIELD, None) or [] if isinstance(r, dict)]
    name = state.merged
    if name is None:
        return records
    current = adapter_state_dict(state, name)
    kept = state.merged_tensors or {}
    # A cast (model.half()) converts the adapter as it converts the merged weights: compared in the new dtype.
    if set(current) != set(kept) or not all(
        torch.equal(kept[k].to(v.dtype), v.detach().to("cpu")) for k, v in current.items()
    ):
        raise AdapterError(
            f"Adapter {name!r} changed since it was merged, so the update in the weights is not the adapter any "
            f"more and its saved folder would not match them. Call reset_adapter() and merge_adapter({name!r}) "
            "again before save_pretrained(), or restore the adapter's parameters."
        )
    config = state.configs[name]
    methods = sorted({method.name for method, _ in state.methods_of(config)})
    record = {
        "name": name,
        "method": "+".join(methods),
        "config": config.to_dict(),
        "weights_sha256": weights_sha256(current),
    }
    return [*records, record]


@contextmanager
def recorded_in_config(config: Any, records: list[dict[str, Any]]) -> Iterator[None]:
    """Set ``config.adapters_merged`` for the length of a ``save_pretrained``; the live config is left as it was."""
    missing = object()
    before = config.__dict__.get(CONFIG_FIELD, missing)
    if records:
        setattr(config, CONFIG_FIELD, records)
    elif before is not missing:
        delattr(config, CONFIG_FIELD)  # no empty field in config.json
    try:
        yield
    finally:
        if before is missing:
            config.__dict__.pop(CONFIG_FIELD, None)
        else:
            setattr(config, CONFIG_FIELD, before)


def refuse_merged_twice(model: Any, data: dict[str, Any], tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """Refuse to load an adapter that the model's weights contain already (recorded by ``save_pretrained``)."""
    records = getattr(model.config, CONFIG_FIELD, None) or []
    digest = weights_sha256(tensors) if records else None
    for record in records:
        if isinstance(record, dict) and record.get("weights_sha256") == digest:
            raise AdapterLoadError(
                f"The weights of this model already contain adapter {record.get('name')!r}: it was merged into "
                f"them before save_pretrained() (config.{CONFIG_FIELD} records it), and {folder} holds that same "
                "adapter, so loading it would apply it twice. Use the model as it is, or load the adapter onto "
                "the base model it was trained on."
            )
    if data.get(ADAPTER_FIELD) is True:
        logger.warning(
            "The adapter in %s was merged into the weights of the checkpoint saved with it, but this model's "
            "config records no such merge (config.%s), so it is loaded as an ordinary adapter. If this model "
            "was loaded from that checkpoint, its weights contain the adapter already: do not activate it.",
            folder,
            CONFIG_FIELD,
        )
