"""The runtime the methods build on: per-model adapter state, hook stages, residual and attention
places, the forward context (``AdapterSetup``) and gating scores.

Below the methods and the composition engine; the model API that sits on top is :mod:`adapters.model`.
"""

from .context import AdapterSetup
from .state import AdapterState

__all__ = ["AdapterSetup", "AdapterState"]
