"""The reference library's on-disk format (REFERENCE §4): file names and config fields."""

from __future__ import annotations

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_WEIGHTS_LEGACY = "pytorch_adapter.bin"

HEAD_CONFIG = "head_config.json"
HEAD_WEIGHTS = "model_head.safetensors"
HEAD_WEIGHTS_LEGACY = "pytorch_model_head.bin"

FUSION_CONFIG = "adapter_fusion_config.json"
FUSION_WEIGHTS = "model_adapter_fusion.safetensors"
FUSION_WEIGHTS_LEGACY = "pytorch_model_adapter_fusion.bin"

# Written into the "version" field; the reference writes "adapters.<its version>".
FORMAT_VERSION_PREFIX = "adapters."
