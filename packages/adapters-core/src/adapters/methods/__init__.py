"""Adapter methods: one sub-package per method (config, module, method)."""

from .base import AdapterDict, AdapterMethod, check_adapter_name

__all__ = ["AdapterDict", "AdapterMethod", "check_adapter_name"]
