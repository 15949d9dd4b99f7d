"""Saving and loading in the reference on-disk format."""

from . import format
from .adapter_io import adapter_state_dict, save_adapter

__all__ = ["adapter_state_dict", "format", "save_adapter"]
