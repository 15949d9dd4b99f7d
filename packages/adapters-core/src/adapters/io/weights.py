"""Read and write weight files: safetensors by default, legacy pickles only as plain tensors."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import AdapterLoadError


def save_weights(tensors: dict[str, torch.Tensor], path: Path, use_safetensors: bool = True) -> None:
    # safetensors refuses shared or non-contiguous storage; adapters' tensors are small, so copy.
    plain = {k: v.detach().contiguous().clone().cpu() for k, v in tensors.items()}
    if use_safetensors:
        save_file(plain, os.fspath(path), metadata={"format": "pt"})
    else:
        torch.save(plain, path)


def load_weights(
    folder: Path, safetensors_name: str, legacy_name: str, use_safetensors: bool | None = None
) -> dict[str, torch.Tensor]:
    """Load ``safetensors_name`` (preferred) or ``legacy_name`` from ``folder`` as a flat dict."""
    candidates = []
    if use_safetensors is not False:
        candidates.append(folder / safetensors_name)
    if use_safetensors is not True:
        candidates.append(folder / legacy_name)
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise AdapterLoadError(
            f"No weights file in {folder}: expected {' or '.join(c.name for c in candidates)}. "
            "Save the adapter with save_adapter() or check the folder path."
        )
    try:
        if path.suffix == ".safetensors":
            tensors = load_file(os.fspath(path))
        else:
            # weights_only: a legacy file may hold tensors, never arbitrary pickled objects.
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, ValueError, EOFError) as error:
        raise AdapterLoadError(f"Cannot read {path}: the file is corrupt or not a weights file ({error}).") from error
    except Exception as error:  # unpickling errors of foreign objects have many types
        raise AdapterLoadError(f"Refusing to read {path}: it is not a plain tensor file ({error}).") from error
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise AdapterLoadError(f"{path} does not hold a flat name-to-tensor mapping.")
    return tensors
