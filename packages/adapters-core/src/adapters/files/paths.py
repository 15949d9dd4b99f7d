"""Keep what the library writes (or reads by a name from a file) inside the folder it was given."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import AdapterError, AdapterNameError
from ..names import check_adapter_name


def inside(parent: str | os.PathLike, child: str | os.PathLike, error: type[AdapterError] = AdapterNameError) -> Path:
    """``child``, after checking that it resolves (symbolic links followed) to a path strictly below ``parent``.

    Raises ``error`` otherwise: a name that is a path, ``..`` segments or a symbolic link inside
    ``parent`` that leads elsewhere would make a save or load reach outside ``parent`` (and ``.``
    would replace ``parent`` itself).

    Example:
        >>> inside("out", Path("out") / "sst2")
        PosixPath('out/sst2')
    """
    root, resolved = Path(parent).resolve(), Path(child).resolve()
    if root not in resolved.parents:
        raise error(
            f"{child} resolves to {resolved}, outside {root}; refusing to write or read there. Use a plain "
            "name (no path) and remove symbolic links inside the folder that lead elsewhere."
        )
    return Path(child)


def named_child(parent: str | os.PathLike, name: str, kind: str = "adapter") -> Path:
    """``parent/name`` for a save of everything (``save_all_adapters``): a valid name, resolving inside ``parent``."""
    check_adapter_name(name, kind)
    return inside(parent, Path(parent) / name)


def is_hub_id(name_or_path: str | os.PathLike) -> bool:
    """Whether a string is a valid Hub id; Path objects, "./x", "/x", "~/x" and "a/b/c" are local paths."""
    if not isinstance(name_or_path, str) or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return False
    return True


__all__ = ["inside", "is_hub_id", "named_child"]
