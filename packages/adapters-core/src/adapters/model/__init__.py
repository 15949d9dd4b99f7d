"""The model API on top of the methods: ``adapters.init``, the model mixin, averaging, merging, dry runs."""

from .init import init
from .model_mixin import ModelAdaptersMixin

__all__ = ["ModelAdaptersMixin", "init"]
