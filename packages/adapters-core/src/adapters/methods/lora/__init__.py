"""LoRA: one config, one module, one method (forward hooks on linear layers; merge/unmerge)."""

from .layer import LoRA
from .method import LoRAMethod

__all__ = ["LoRA", "LoRAMethod"]
