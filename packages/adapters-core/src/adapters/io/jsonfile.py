"""Read the small JSON files of adapter folders (configs), refusing ones no save could have written.

A config file of the reference format is a few kilobytes and a handful of levels deep. A larger
or deeper one is corrupt or hostile: it is refused before it is parsed (size) or before anything
walks it (depth), instead of exhausting memory or raising ``RecursionError``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..configs.checks import MAX_NESTING, check_nesting
from ..errors import AdapterConfigError, AdapterLoadError

#: The largest config file read (1 MiB); saved configs are a few kB.
MAX_CONFIG_BYTES = 1 << 20


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
