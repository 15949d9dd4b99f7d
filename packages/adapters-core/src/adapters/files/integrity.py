"""The ``integrity`` field: which weights file belongs to a config file, by size and SHA-256.

Saves write ``"integrity": {"adapter.safetensors": {"size": 1234, "sha256": "..."}}`` into the
config file (``adapter_config.json``, ``head_config.json``, ``adapter_fusion_config.json``). The
reference library reads only the fields it knows, so its loaders ignore this one, and its saves
write config files without it, which then load as before: without the check.

A config and a weights file of two different saves (a folder torn by an interrupted copy, or by
a save of an older version that replaced files one by one) then no longer load silently.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..errors import AdapterLoadError

KEY = "integrity"


def record(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def listed_files(expected: Any, folder: Path, config_name: str) -> set[str]:
    """The weights files the ``integrity`` field names (empty without the field); refuse a malformed field."""
    if expected is None:
        return set()
    if not isinstance(expected, dict) or not expected or not all(_is_record(v) for v in expected.values()):
        raise AdapterLoadError(
            f"The {KEY!r} field of {config_name} in {folder} is malformed (expected file names mapped to size "
            "and sha256); the file was edited or is corrupt: re-save the adapter."
        )
    return set(expected)


def _is_record(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("size"), int) and isinstance(value.get("sha256"), str)


def verify(data: bytes, expected: dict[str, Any], folder: Path, config_name: str, weights_name: str) -> None:
    """Refuse ``data`` (the bytes of ``weights_name``) unless it is the file ``config_name`` was saved with."""
    got = record(data) if len(data) == expected["size"] else {"size": len(data), "sha256": "(not computed)"}
    if got == {"size": expected["size"], "sha256": expected["sha256"]}:
        return
    raise AdapterLoadError(
        f"{folder} is torn: its {weights_name} ({got['size']} bytes, sha256 {got['sha256'][:16]}) is not the file "
        f"{config_name} was saved with ({expected['size']} bytes, sha256 {expected['sha256'][:16]}), so the two "
        "come from different saves (an interrupted copy, or a save by an older version or another program). "
        "Nothing was loaded: re-save the adapter into this folder, or copy the complete folder again."
    )


__all__ = ["KEY", "listed_files", "record", "verify"]
