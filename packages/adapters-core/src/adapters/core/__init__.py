"""The model-facing core: ``init``, the model API, per-model state and ``AdapterSetup``."""

from .context import AdapterSetup
from .init import init
from .model_mixin import ModelAdaptersMixin
from .state import AdapterState

__all__ = ["AdapterSetup", "AdapterState", "ModelAdaptersMixin", "init"]
