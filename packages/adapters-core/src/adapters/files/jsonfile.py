"""Read the small JSON files of adapter folders (configs), refusing ones no save could have written.

A config file of the reference format is a few kilobytes and a handful of levels deep. A larger
or deeper one is corrupt or hostile: it is refused before it is parsed (size) or before anything
walks it (depth), instead of exhausting memory or raising ``RecursionError``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import AdapterConfigError, AdapterLoadError

#: The largest config file read (1 MiB); saved configs are a few kB.
MAX_CONFIG_BYTES = 1 << 20
#: The deepest nesting of dicts and lists accepted in a config (file or dict); saved ones have a few levels.
MAX_NESTING = 32


def check_nesting(data: Any, limit: int = MAX_NESTING) -> None:
    """Refuse dicts and lists nested deeper than ``limit`` (walked without recursion)."""
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise AdapterConfigError(
                f"The config is nested more than {limit} levels deep; no adapter config is. The file or dict is "
                "corrupt or hostile."
            )
        if isinstance(item, Mapping):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)



def read_json(path: Path, what: str = "config") -> Any:
    """The parsed content of ``path``; raise :class:`AdapterLoadError` for a file too large, too deep or not JSON."""
    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise AdapterLoadError(
            f"{path} is over {MAX_CONFIG_BYTES >> 20} MiB; a {what} file is a few kB, so this one is corrupt or not "
            "a config file. Nothing was loaded."
        )
    try:
        parsed = json.loads(data.decode("utf-8"))
    except RecursionError:
        parsed = None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterLoadError(f"{path} is not valid JSON ({error}); the file is corrupt.") from error
    else:
        try:
            check_nesting(parsed)
            return parsed
        except AdapterConfigError:
            pass
    raise AdapterLoadError(
        f"{path} is nested more than {MAX_NESTING} levels deep; no {what} file is, so this one is corrupt or "
        "hostile. Nothing was loaded."
    )
