"""Adapter method configs and the shorthand config grammar."""

from .base import AdapterConfig
from .bottleneck import BnConfig, DoubleSeqBnConfig, ParBnConfig, SeqBnConfig
from .lora import LoRAConfig
from .union import ConfigUnion

__all__ = [
    "AdapterConfig",
    "BnConfig",
    "ConfigUnion",
    "DoubleSeqBnConfig",
    "LoRAConfig",
    "ParBnConfig",
    "SeqBnConfig",
]
