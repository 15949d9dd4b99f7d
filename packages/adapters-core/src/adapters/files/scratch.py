"""The folders a save makes beside its target, and how the next save or load cleans them up.

A save of ``dir/x`` writes ``dir/.adp-<key>.tmp-<random>`` (scratch), briefly moves the old
``dir/x`` to ``dir/.adp-<key>.old-<random>`` (backup) and finally to ``.del-`` (trash), where
``<key>`` is 16 hex digits of the SHA-256 of ``x``: the names are 34 bytes whatever the target's
name, so a target name of up to 255 bytes saves. Saves into a folder that cannot be renamed (a
mount point, the working directory) use ``dir/x/.adp-tmp-<random>`` instead.

A scratch folder is *live* while its writer holds an exclusive ``flock`` on it; the kernel drops
the lock when the writer dies (also by SIGKILL). Moving folders happens under a ``flock`` on the
parent folder, so a reader or writer holding that lock sees no save half-way through its renames.
Where the file system offers no ``flock`` (some network file systems), every scratch folder counts
as stale: a concurrent save may then fail, but never leaves a torn folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

logger = logging.getLogger(__name__)

PREFIX = ".adp-"
_OURS = re.compile(r"\.adp-([0-9a-f]{16})\.(tmp|old|del)-[0-9a-f]{8}")
_INNER = re.compile(r"\.adp-tmp-[0-9a-f]{8}")
# tempfile.mkdtemp's names, as releases before whole-folder saves left them: ".<target>.tmp-XXXXXXXX".
_LEGACY_SUFFIX = re.compile(r"[a-z0-9_]{8}")


def key(name: str) -> str:
    return hashlib.sha256(os.fsencode(name)).hexdigest()[:16]


def sibling(target: Path, kind: str) -> Path:
    """A fresh name beside ``target`` for its scratch (``tmp``), backup (``old``) or trash (``del``) folder."""
    return target.parent / f"{PREFIX}{key(target.name)}.{kind}-{secrets.token_hex(4)}"


def inner(target: Path) -> Path:
    """A fresh scratch name inside ``target``, for saves that replace files in place."""
    return target / f"{PREFIX}tmp-{secrets.token_hex(4)}"


def leftovers(target: Path) -> dict[str, list[Path]]:
    """The folders of saves of ``target`` that still exist: by kind ``tmp``, ``old``, ``del``, ``legacy``, ``inner``."""
    found: dict[str, list[Path]] = {"tmp": [], "old": [], "del": [], "legacy": [], "inner": []}
    own, legacy = key(target.name), f".{target.name}.tmp-"
    for folder, inside in ((target.parent, False), (target, True)):
        try:
            entries = list(os.scandir(folder))
        except OSError:  # missing, or not a folder
            continue
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            match = None if inside else _OURS.fullmatch(entry.name)
            if inside and _INNER.fullmatch(entry.name):
                found["inner"].append(Path(entry.path))
            elif match and match.group(1) == own:
                found[match.group(2)].append(Path(entry.path))
            elif not inside and entry.name.startswith(legacy) and _LEGACY_SUFFIX.fullmatch(entry.name[len(legacy) :]):
                found["legacy"].append(Path(entry.path))
    return found


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` (waiting for it); without ``flock`` support, just run."""
    fd = _open_folder(folder)
    try:
        if fd is not None and fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)


def hold(folder: Path) -> int | None:
    """Mark ``folder`` live (an exclusive ``flock`` until :func:`release`); the handle, or None."""
    fd = _open_folder(folder)
    if fd is not None and fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def is_live(folder: Path) -> bool:
    """Whether another writer holds ``folder`` (its lock is taken); False where locks are unsupported."""
    fd = _open_folder(folder)
    if fd is None or fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def _open_folder(folder: Path) -> int | None:
    try:
        return os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None


def tidy(target: Path) -> None:
    """Recover and clean up after interrupted saves of ``target``; the caller holds the parent's lock.

    The recovery rule: when ``target`` is missing and a backup exists, a save died between moving
    the old folder aside and the new one in, so the old folder (complete: it was moved as a whole)
    goes back. Scratch folders of dead writers never count: their save had not finished.
    """
    found = leftovers(target)
    if found["old"] and not os.path.lexists(target):
        # Backups exist only between two renames done under the parent's lock: at most one survives.
        os.rename(found["old"].pop(), target)
        logger.warning("Restored %s from the backup of a save that was interrupted.", target)
    for path in found["tmp"] + found["inner"]:
        if not is_live(path):
            remove(path)
    for path in found["old"]:
        # A backup of a finished save: first renamed, so a half-removed one is never restored.
        trash = sibling(target, "del")
        with contextlib.suppress(OSError):
            os.rename(path, trash)
            path = trash
        remove(path)
    for path in found["del"] + found["legacy"]:
        remove(path)


def tidy_before_reading(folder: str | os.PathLike) -> None:
    """Before a load: recover ``folder`` from an interrupted save and remove stale scratch folders.

    Cheap when there is nothing to do (a listing of the parent); best effort where the folder is
    read-only, so loading from a read-only copy still works.
    """
    target = Path(os.path.realpath(folder))
    if not any(leftovers(target).values()):
        return
    try:
        with locked(target.parent):
            tidy(target)
    except OSError as error:
        logger.info("Could not clean up after an interrupted save of %s: %s", target, error)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


__all__ = ["hold", "inner", "is_live", "leftovers", "locked", "release", "sibling", "tidy", "tidy_before_reading"]
