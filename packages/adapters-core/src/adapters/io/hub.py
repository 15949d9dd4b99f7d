"""Adapters on the Hugging Face Hub: hub ids resolve to cached folders; push uploads a folder and a card.

``huggingface_hub`` is imported only when a hub id is used, so ``import adapters`` stays fast.
Downloads go through the hub library's own cache (``HF_HUB_CACHE``, revisions, ``HF_HUB_OFFLINE``),
so a folder downloaded once loads offline afterwards.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..errors import AdapterLoadError
from ..files.paths import inside, is_hub_id
from ..files.scratch import tidy_before_reading
from .model_card import adapter_card

if TYPE_CHECKING:
    from ..model.model_mixin import ModelAdaptersMixin

# Keyword arguments of load_adapter() that concern hub ids only.
HUB_OPTIONS = ("revision", "version", "subfolder", "cache_dir", "token", "local_files_only", "force_download")


def resolve_adapter_folder(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    version: str | None = None,
    subfolder: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> Path:
    """The local folder of an adapter: ``name_or_path`` itself, or the cached snapshot of a hub repository.

    A local folder always wins (after recovering it from an interrupted save, see
    :func:`adapters.files.scratch.tidy`). Any other string that is a valid hub id (``"org/name"``) is
    downloaded with ``huggingface_hub.snapshot_download`` at ``revision`` (a branch, tag or commit;
    ``version`` is the reference library's name for it), or taken from the cache when offline;
    ``subfolder`` is a folder inside the repository. ``revision`` and ``subfolder`` are checked
    before any lookup: neither may climb out of the cache (``..``, absolute paths), and the folder
    found must lie inside the cache.

    Example:
        >>> resolve_adapter_folder("out/sst2")  # doctest: +SKIP
        PosixPath('out/sst2')
        >>> resolve_adapter_folder("AdapterHub/bert-base-uncased-pf-sst2", revision="main")  # doctest: +SKIP
        PosixPath('/root/.cache/huggingface/hub/models--AdapterHub--bert-base-uncased-pf-sst2/snapshots/...')
    """
    folder = Path(name_or_path)
    tidy_before_reading(folder)
    if folder.is_dir():
        return folder
    if not is_hub_id(name_or_path):
        raise AdapterLoadError(
            f"{name_or_path!s} is not a folder. Pass the folder that save_adapter() wrote, or a Hugging Face Hub "
            "id such as 'org/name'."
        )
    if revision is not None and version is not None and revision != version:
        raise TypeError("load_adapter() got both revision= and version= with different values; pass one.")
    revision = check_revision(revision or version)
    parts = check_subfolder(subfolder)
    snapshot = Path(
        _download(
            str(name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
            allow_patterns=[f"{'/'.join(parts)}/*"] if parts else None,
        )
    )
    if ".." in snapshot.parts:
        # huggingface_hub joins the commit hash of a refs file into the path unchecked (a tampered cache).
        raise AdapterLoadError(
            f"The Hugging Face cache points {name_or_path!r} at {snapshot}, outside its snapshots; the cache's refs "
            "file was tampered with: delete that repository from the cache and download it again."
        )
    return inside(snapshot, snapshot.joinpath(*parts), AdapterLoadError) if parts else snapshot


def check_revision(revision: str | None) -> str | None:
    """Refuse a Hub revision that could name a file outside the cache (the cache keeps refs as files)."""
    if revision is not None and _relative_segments(revision) is None:
        raise AdapterLoadError(
            f"Invalid Hub revision {revision!r}: pass a branch, tag or commit hash such as 'main', 'v1' or "
            "'refs/pr/1' (no '..' or '.' segments, no absolute paths, printable characters only)."
        )
    return revision


def check_subfolder(subfolder: str | None) -> tuple[str, ...]:
    """The path segments of a folder inside a Hub repository; refuse one that would leave the repository."""
    if subfolder is None or subfolder in ("", "."):
        return ()
    segments = _relative_segments(subfolder.strip("/") if isinstance(subfolder, str) else subfolder)
    if segments is None:
        raise AdapterLoadError(
            f"Invalid subfolder {subfolder!r}: pass a relative folder inside the Hub repository such as 'sst2' "
            "or 'adapters/sst2' (no '..' or '.' segments, no absolute paths, printable characters only)."
        )
    return segments


def _relative_segments(text: object) -> tuple[str, ...] | None:
    """The '/'-separated segments of a relative path that stays below its start, or None."""
    if not isinstance(text, str) or not text or not text.isprintable():
        return None
    if text.startswith(("/", "\\")) or PureWindowsPath(text).anchor:
        return None
    segments = tuple(text.replace("\\", "/").split("/"))
    return None if any(segment in ("", ".", "..") for segment in segments) else segments


def _download(repo_id: str, **options: Any) -> str:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    revision = options["revision"] or "main"
    try:
        return snapshot_download(repo_id, library_name="adapters", library_version=__version__, **options)
    except RevisionNotFoundError as error:
        raise AdapterLoadError(f"The Hub repository {repo_id!r} has no revision {revision!r}.") from error
    except GatedRepoError as error:
        raise AdapterLoadError(
            f"The Hub repository {repo_id!r} is gated: accept its terms on the Hub and pass token= (or log in)."
        ) from error
    except RepositoryNotFoundError as error:
        raise AdapterLoadError(
            f"{repo_id!r} is neither a local folder nor a Hub repository you can access (a private one needs token=)."
        ) from error
    except LocalEntryNotFoundError as error:
        why = (
            "HF_HUB_OFFLINE is set"
            if constants.HF_HUB_OFFLINE
            else "local_files_only=True"
            if options["local_files_only"]
            else "the Hub cannot be reached"
        )
        raise AdapterLoadError(
            f"The adapter {repo_id!r} (revision {revision!r}) is not in the Hugging Face cache "
            f"({options['cache_dir'] or constants.HF_HUB_CACHE}) and {why}. Download it once online, or pass "
            "the path of a local folder."
        ) from error
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise AdapterLoadError(f"Cannot download the adapter {repo_id!r} from the Hub: {error}") from error


def push_adapter_to_hub(
    model: ModelAdaptersMixin,
    repo_id: str,
    adapter_name: str,
    datasets_tag: str | None = None,
    local_path: str | os.PathLike | None = None,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    overwrite_adapter_card: bool = False,
    create_pr: bool = False,
    revision: str | None = None,
    commit_description: str | None = None,
    adapter_card_kwargs: dict[str, Any] | None = None,
) -> str:
    """Save ``adapter_name`` with a model card (``README.md``) and upload the folder to ``repo_id``.

    Creates the repository if needed (``private`` applies then). ``local_path`` keeps the uploaded
    folder (a temporary one is used otherwise); an existing ``README.md`` there is kept unless
    ``overwrite_adapter_card``. ``adapter_card_kwargs`` may hold ``tags``, ``language``, ``license``,
    ``metrics`` (names, or a name-to-value dict that also fills the results table),
    ``architecture_training``, ``results`` and ``citation``. Returns the commit URL.
    """
    model.adapters_state.require(adapter_name)  # fail before touching the network
    from huggingface_hub import HfApi


    api = HfApi(token=token, library_name="adapters", library_version=__version__)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
    with _working_folder(local_path) as folder:
        model.save_adapter(folder, adapter_name)
        card_path = folder / "README.md"
        if overwrite_adapter_card or not card_path.exists():
            card = adapter_card(model, adapter_name, repo_id, datasets_tag=datasets_tag, **(adapter_card_kwargs or {}))
            card_path.write_text(card, encoding="utf-8")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message=commit_message or f"Upload adapter {adapter_name}",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
        )
    return str(commit)


@contextmanager
def _working_folder(local_path: str | os.PathLike | None) -> Iterator[Path]:
    if local_path is not None:
        Path(local_path).mkdir(parents=True, exist_ok=True)
        yield Path(local_path)
        return
    with tempfile.TemporaryDirectory(prefix="adapter-push-") as scratch:
        yield Path(scratch)


__all__ = [
    "HUB_OPTIONS",
    "check_revision",
    "check_subfolder",
    "is_hub_id",
    "push_adapter_to_hub",
    "resolve_adapter_folder",
]
