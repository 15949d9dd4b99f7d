"""Read and write weight files: safetensors by default, legacy pickles only as plain tensors.

Every save records the size and SHA-256 of the weights file it wrote in the config file beside it
(the ``integrity`` field, :mod:`adapters.files.integrity`); loading checks the file against that record.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..errors import AdapterLoadError
from . import integrity


def save_weights(tensors: dict[str, torch.Tensor], path: Path, use_safetensors: bool = True) -> dict[str, Any]:
    """Write ``tensors`` to ``path``; return the file's integrity record (``{"size": ..., "sha256": ...}``)."""
    # safetensors refuses shared or non-contiguous storage; adapters' tensors are small, so copy.
    plain = {k: _whole(v).detach().contiguous().clone().cpu() for k, v in tensors.items()}
    if use_safetensors:
        data = save_safetensors(plain, metadata={"format": "pt"})
    else:
        buffer = io.BytesIO()
        torch.save(plain, buffer)
        data = buffer.getvalue()
    with open(path, "wb") as f:
        f.write(data)
    return integrity.record(data)


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor (a parameter sharded by FSDP2's ``fully_shard``) gathered whole, any other tensor as it is.

    Written as it is, a DTensor is refused by safetensors and pickled as this rank's shard by
    ``torch.save``. Gathering is a collective: under FSDP2, every rank saves (the same files).
    """
    full_tensor = getattr(tensor, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else tensor


def _choose(
    folder: Path, safetensors_name: str, legacy_name: str, use_safetensors: bool | None, listed: set[str]
) -> Path | None:
    candidates = []
    if use_safetensors is not False:
        candidates.append(safetensors_name)
    if use_safetensors is not True:
        candidates.append(legacy_name)
    if listed and not listed & set(candidates):
        # The config belongs to the other format's file; one of ours beside it is stale.
        (other,) = sorted(listed)[:1]
        raise AdapterLoadError(
            f"The config in {folder} was saved with {other}, not {' or '.join(candidates)}: load it with "
            f"use_safetensors={other.endswith('.safetensors')} (or None), or re-save the adapter in the format "
            "you want."
        )
    if listed:
        candidates = [c for c in candidates if c in listed]
    return next((folder / c for c in candidates if (folder / c).is_file()), None)


def load_weights(
    folder: Path,
    safetensors_name: str,
    legacy_name: str,
    use_safetensors: bool | None = None,
    expected: Any = None,
    config_name: str = "the config file",
) -> dict[str, torch.Tensor]:
    """Load ``safetensors_name`` (preferred) or ``legacy_name`` from ``folder`` as a flat dict.

    ``expected`` is the ``integrity`` field of the config file (``None`` for folders written by the
    reference library): it names the weights file that belongs to the config, and the file must
    have the recorded size and SHA-256.
    """
    listed = integrity.listed_files(expected, folder, config_name)
    path = _choose(folder, safetensors_name, legacy_name, use_safetensors, listed)
    if path is None:
        names = sorted(listed) or [
            name for name, safe in ((safetensors_name, True), (legacy_name, False)) if use_safetensors in (None, safe)
        ]
        raise AdapterLoadError(
            f"No weights file in {folder}: expected {' or '.join(names)}. "
            "Save the adapter with save_adapter() or check the folder path."
        )
    with open(path, "rb") as f:
        data = f.read()
    if listed:
        integrity.verify(data, expected[path.name], folder, config_name, path.name)
    try:
        if path.suffix == ".safetensors":
            tensors = load_safetensors(data)
        else:
            # weights_only: a legacy file may hold tensors, never arbitrary pickled objects.
            tensors = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, ValueError, EOFError) as error:
        raise AdapterLoadError(f"Cannot read {path}: the file is corrupt or not a weights file ({error}).") from error
    except Exception as error:  # unpickling errors of foreign objects have many types
        raise AdapterLoadError(f"Refusing to read {path}: it is not a plain tensor file ({error}).") from error
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise AdapterLoadError(f"{path} does not hold a flat name-to-tensor mapping.")
    check_finite(tensors, path)
    return tensors


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse a file with NaN or infinite weights, naming the tensors.

    Loading never changes values silently (as safetensors' users expect), and a NaN or infinity
    in a weight makes every output it reaches NaN: such a file comes from a diverged training run
    or was tampered with, and is better refused here than discovered in the outputs.
    """
    bad = {}
    for key, tensor in tensors.items():
        if tensor.is_floating_point() or tensor.is_complex():
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                nan = int(torch.isnan(tensor).sum())
                bad[key] = f"{nan} NaN, {int((~finite).sum()) - nan} infinite"
    if bad:
        listed = "; ".join(f"{key} ({what})" for key, what in sorted(bad.items())[:5])
        raise AdapterLoadError(
            f"{path} holds non-finite weights: {listed}{' ...' if len(bad) > 5 else ''}. Nothing was loaded: NaN or "
            "infinite weights make the outputs NaN. Load an earlier checkpoint of the training run."
        )


__all__ = ["check_finite", "load_weights", "save_weights"]
