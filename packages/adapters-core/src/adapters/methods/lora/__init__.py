"""The LoRA family: LoRA, (IA)^3, VeRA and DoRA (modules, hook places, the method, averaging)."""

from .ia3 import IA3
from .layer import LoRA
from .method import LoRAMethod
from .vera import VeRA, VeRAShared

__all__ = ["IA3", "LoRA", "LoRAMethod", "VeRA", "VeRAShared"]
