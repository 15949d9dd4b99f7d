"""What a name of an adapter, head or AdapterFusion may be.

A name becomes a segment of module paths and weight keys (``loras.<name>.lora_A``) and the name
of a folder (``save_all_adapters(dir)`` writes ``dir/<name>``). So it must be one harmless path
component: no ``/`` or ``\\``, no ``.`` (which also rules out ``..``), no drive (``C:``), no
whitespace or control characters, and short enough that the folder name always fits the 255
bytes a file system allows per path component.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import AdapterNameError

#: The longest name, in bytes of UTF-8 (128 ASCII characters). Far below the 255 bytes of a path
#: component, so a joined AdapterFusion name of two adapters and any scratch name fit as well.
MAX_NAME_LENGTH = 128

_DOTS_OR_WHITESPACE = re.compile(r"[.\s]")
_RULE = (
    f"use a string of at most {MAX_NAME_LENGTH} bytes (UTF-8) of printable characters without '.', "
    "'/', '\\' or whitespace, e.g. 'sst2' or 'lang_de'"
)


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a name (a short phrase), or ``None`` if it can."""
    if not isinstance(name, str) or not name:
        return "it is not a non-empty string"
    if "/" in name or "\\" in name or PurePosixPath(name).anchor or PureWindowsPath(name).anchor:
        return "it is a path, and saving would write outside the folder given"
    if _DOTS_OR_WHITESPACE.search(name):
        return "it contains '.' or whitespace, which split weight keys"
    if not name.isprintable():
        return "it contains control or other non-printable characters"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_LENGTH:
        return f"it is {size} bytes long, and names are at most {MAX_NAME_LENGTH} bytes"
    return None


def _shown(name: object) -> str:
    text = repr(name)
    return text if len(text) <= 60 else f"{text[:40]}...{text[-10:]} ({len(name)} characters)"


def check_adapter_name(name: object, kind: str = "adapter") -> str:
    """Return ``name`` if it may name an adapter (or a head: ``kind="head"``); raise AdapterNameError if not."""
    problem = name_problem(name)
    if problem is not None:
        raise AdapterNameError(f"Invalid {kind} name {_shown(name)}: {problem}; {_RULE}.")
    return name  # type: ignore[return-value]


def check_fusion_name(name: object) -> str:
    """An AdapterFusion name: an adapter name that may contain commas (the default joins the adapters' names)."""
    problem = name_problem(name)
    if problem is not None:
        raise AdapterNameError(
            f"Invalid AdapterFusion name {_shown(name)}: {problem}; pass name= with another name "
            f"(by default the fused adapters' names joined by commas): {_RULE}."
        )
    return name  # type: ignore[return-value]


def check_saved_name(name: object, folder: str | Path, kind: str = "adapter") -> str:
    """A name read from a file in ``folder``, used when the caller gave no ``load_as``."""
    problem = name_problem(name)
    if problem is not None:
        raise AdapterNameError(
            f"The {kind} in {folder} is saved under the name {_shown(name)}, which cannot be used: {problem}. "
            f"Pass load_as='<name>' to load it under a name of your choice ({_RULE})."
        )
    return name  # type: ignore[return-value]


__all__ = ["MAX_NAME_LENGTH", "check_adapter_name", "check_fusion_name", "check_saved_name", "name_problem"]
