"""Hot swapping: a loaded adapter's weights copied into an existing adapter's tensors, in place.

Copying weights changes no module, no tensor object and no setup, only values: a compiled graph
runs the new adapter as it is, and the folder's adapter never needs a name of its own in the model.
"""

from __future__ import annotations

from typing import Any

from ..core.state import AdapterState
from ..errors import AdapterConfigError, AdapterError, AdapterLoadError
from .averaging import config_differences


def check_not_merged(state: AdapterState, target: str) -> None:
    if state.merged == target:
        raise AdapterError(
            f"Adapter {target!r} is merged into the weights; call reset_adapter() before hot-swapping it."
        )


def check_swappable(state: AdapterState, target: str, source: str) -> None:
    """Refuse a swap between adapters whose configs differ in more than dropout and initialization."""
    differing = config_differences(state, target, source)
    if differing:
        raise AdapterConfigError(
            f"Cannot hot-swap {source!r} into {target!r}: their configs differ in {differing}. Hot swapping copies "
            "weights into tensors of the same shapes; add the adapter with add_adapter/load_adapter instead."
        )


def copy_weights(state: AdapterState, target: str, source: str) -> None:
    """Copy every parameter and buffer of ``source``'s modules into ``target``'s (same paths, same shapes)."""
    if target == source:
        return
    check_swappable(state, target, source)
    targets = state.modules_of(target)
    pairs: list[tuple[Any, Any]] = []
    for path, module in state.modules_of(source).items():
        counterpart = targets.get(path[: -len(source)] + target)
        if counterpart is None:
            raise AdapterLoadError(f"{target!r} has no module where {source!r} has {path!r}.")
        pairs.append((counterpart, module))
    # Checked in full before the first copy, so that a refusal leaves the target as it was.
    for counterpart, module in pairs:
        counterpart.load_state_dict(module.state_dict())
