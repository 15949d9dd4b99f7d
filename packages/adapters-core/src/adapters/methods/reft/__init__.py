"""ReFT: interventions on layer outputs at the first/last positions (config, modules, method)."""

from .layer import ReftModule, ReftUnit
from .method import ReftMethod

__all__ = ["ReftMethod", "ReftModule", "ReftUnit"]
