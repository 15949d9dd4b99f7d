"""Bottleneck adapters: one config family, one module, one method (hooked on residual blocks)."""

from .layer import Bottleneck
from .method import BottleneckMethod

__all__ = ["Bottleneck", "BottleneckMethod"]
