"""Atomic saves: a folder is replaced as a whole, so a crash leaves the old folder or the new one.

A save writes the complete new folder as a scratch sibling of the target and syncs it to disk,
then, holding a lock on the parent folder, renames the old target to a backup name, the scratch
folder to the target name, and the backup to a trash name that is then removed. A crash (even
SIGKILL) at any moment leaves the old folder, the new one, or, between the first two renames,
no target and a complete backup, which the next load or save of the target moves back
(:func:`adapters.files.scratch.tidy`). Leftover scratch folders are removed by the next save or load.

Files in the old folder that the save does not write itself (a model card, another item's files)
are carried into the new folder by hard link (copied where links are unsupported). Files the
save owns but does not write (the weights of the other format) are left out, so the folder
never holds two weights files.

A target that cannot be renamed (a mount point, or the working directory or a folder above it)
gets its files replaced one by one instead, config files first: an interrupted save there may
leave a folder that loading refuses as torn (:mod:`adapters.files.integrity`), never a silent mix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from . import scratch


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, owned: Iterable[str] = ()) -> Iterator[Path]:
    """Yield an empty scratch folder; once the block finishes, it replaces ``target`` as a whole.

    ``owned`` names the files the caller writes (and their other-format twins): those of the old
    folder are dropped, every other entry is kept. On an error nothing in ``target`` changes and
    the scratch folder is removed.

    Example:
        >>> with atomic_directory("out/sst2", {"adapter_config.json"}) as folder:  # doctest: +SKIP
        ...     (folder / "adapter_config.json").write_text("{}")
    """
    target = Path(os.path.realpath(target))
    if os.path.lexists(target) and not target.is_dir():
        raise NotADirectoryError(f"{target} is a file; saving needs a folder path (existing or not).")
    if _cannot_rename(target):
        with _in_place(target, set(owned)) as folder:
            yield folder
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with scratch.locked(target.parent):
        scratch.tidy(target)
        work = scratch.sibling(target, "tmp")
        os.mkdir(work)
        live = scratch.hold(work)
    try:
        yield work
        _sync_files(work)
        with scratch.locked(target.parent):
            if target.is_dir():
                _carry_over(target, work, set(owned))
            _sync_folder(work)
            trash = _swap(target, work)
        if trash is not None:
            scratch.remove(trash)
    except BaseException:
        scratch.remove(work)
        raise
    finally:
        scratch.release(live)


def _swap(target: Path, work: Path) -> Path | None:
    """Put ``work`` in the place of ``target``; return the old folder's trash name to remove (or None)."""
    if not os.path.lexists(target):
        os.rename(work, target)
        _sync_folder(target.parent)
        return None
    backup = scratch.sibling(target, "old")
    os.rename(target, backup)
    try:
        os.rename(work, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(backup, target)
        raise
    _sync_folder(target.parent)
    trash = scratch.sibling(target, "del")
    os.rename(backup, trash)
    return trash


def _cannot_rename(target: Path) -> bool:
    if os.path.ismount(target):
        return True
    try:
        cwd = Path(os.path.realpath(os.getcwd()))
    except OSError:  # the working directory was deleted
        return False
    # Renaming the working directory (or a folder above it) would move this process's own cwd away.
    return cwd == target or target in cwd.parents


@contextlib.contextmanager
def _in_place(target: Path, owned: set[str]) -> Iterator[Path]:
    with scratch.locked(target):
        scratch.tidy(target)
        work = scratch.inner(target)
        os.mkdir(work)
        live = scratch.hold(work)
    try:
        yield work
        _sync_files(work)
        with scratch.locked(target):
            # Config files first: a crash then leaves a config whose integrity record refuses the old weights.
            written = sorted(os.listdir(work), key=lambda name: (not name.endswith(".json"), name))
            for name in written:
                os.replace(work / name, target / name)
            for name in owned - set(written):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target / name)
            _sync_folder(target)
        os.rmdir(work)
    except BaseException:
        scratch.remove(work)
        raise
    finally:
        scratch.release(live)


def _carry_over(old: Path, new: Path, owned: set[str]) -> None:
    for entry in os.scandir(old):
        if entry.name in owned or entry.name.startswith(scratch.PREFIX) or os.path.lexists(new / entry.name):
            continue
        _link_tree(Path(entry.path), new / entry.name)


def _link_tree(source: Path, dest: Path) -> None:
    if source.is_symlink():
        os.symlink(os.readlink(source), dest)
    elif source.is_dir():
        os.mkdir(dest)
        shutil.copystat(source, dest)
        for entry in os.scandir(source):
            _link_tree(Path(entry.path), dest / entry.name)
    else:
        try:
            os.link(source, dest)
        except OSError:  # file systems without hard links
            shutil.copy2(source, dest)


def _sync_files(folder: Path) -> None:
    for entry in os.scandir(folder):
        if entry.is_file(follow_symlinks=False):
            fd = os.open(entry.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _sync_folder(folder)


def _sync_folder(folder: Path) -> None:
    # Makes renames and new entries durable; some systems (Windows) cannot open folders: skip there.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["atomic_directory"]
