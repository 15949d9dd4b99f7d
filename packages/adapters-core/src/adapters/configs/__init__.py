"""Adapter method configs and the shorthand config grammar."""

from .base import AdapterConfig
from .bottleneck import (
    AdapterPlusConfig,
    BnConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    DoubleSeqBnConfig,
    DoubleSeqBnInvConfig,
    ParBnConfig,
    SeqBnConfig,
    SeqBnInvConfig,
)
from .fusion import AdapterFusionConfig, DynamicAdapterFusionConfig, StaticAdapterFusionConfig
from .lora import DoRAConfig, DvoRAConfig, IA3Config, LoRAConfig, VeraConfig
from .prefix_tuning import PrefixTuningConfig
from .prompt_tuning import PromptTuningConfig
from .reft import DiReftConfig, LoReftConfig, NoReftConfig, ReftConfig
from .union import ConfigUnion, MAMConfig, UniPELTConfig

__all__ = [
    "AdapterConfig",
    "AdapterFusionConfig",
    "AdapterPlusConfig",
    "BnConfig",
    "CompacterConfig",
    "CompacterPlusPlusConfig",
    "ConfigUnion",
    "DiReftConfig",
    "DoRAConfig",
    "DoubleSeqBnConfig",
    "DoubleSeqBnInvConfig",
    "DvoRAConfig",
    "DynamicAdapterFusionConfig",
    "IA3Config",
    "LoRAConfig",
    "LoReftConfig",
    "MAMConfig",
    "NoReftConfig",
    "ParBnConfig",
    "PrefixTuningConfig",
    "PromptTuningConfig",
    "ReftConfig",
    "SeqBnConfig",
    "SeqBnInvConfig",
    "StaticAdapterFusionConfig",
    "UniPELTConfig",
    "VeraConfig",
]
