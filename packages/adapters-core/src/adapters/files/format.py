"""The reference library's on-disk format: file names and config fields."""

from __future__ import annotations

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_WEIGHTS_LEGACY = "pytorch_adapter.bin"

HEAD_CONFIG = "head_config.json"
HEAD_WEIGHTS = "model_head.safetensors"
HEAD_WEIGHTS_LEGACY = "pytorch_model_head.bin"

# The module names of a model adapted through an AdapterModelInterface, saved beside its adapters.
INTERFACE_CONFIG = "adapter_interface.json"

FUSION_CONFIG = "adapter_fusion_config.json"
FUSION_WEIGHTS = "model_adapter_fusion.safetensors"
FUSION_WEIGHTS_LEGACY = "pytorch_model_adapter_fusion.bin"

# The "version" field: readers (ours and the reference's) apply compatibility fixes to files
# older than a given release, so it names the reference format release these files follow.
FORMAT_VERSION_PREFIX = "adapters."
FORMAT_VERSION = "1.3.0"
