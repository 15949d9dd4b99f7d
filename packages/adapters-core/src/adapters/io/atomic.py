"""Atomic writes: a reader never sees a half-written adapter folder or file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a scratch folder beside ``target``; on success its files replace those in ``target``.

    Each file is moved with ``os.replace`` (atomic on one file system); on error nothing in
    ``target`` changes and the scratch folder is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield scratch
        for path in scratch.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        if not target.exists():
            os.replace(scratch, target)
            return
        for path in scratch.iterdir():
            os.replace(path, target / path.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
