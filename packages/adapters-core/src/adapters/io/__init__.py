"""Saving and loading adapters (and static heads) in the reference on-disk format; the Hugging Face Hub.

Above the methods (it reads and writes their modules through the adapter state) and below the
model API, which calls it. File primitives (atomic folder swaps, weights files, JSON) are in
:mod:`adapters.files`.
"""

from ..files import format
from .adapter_io import adapter_state_dict, save_adapter

__all__ = ["adapter_state_dict", "format", "save_adapter"]
