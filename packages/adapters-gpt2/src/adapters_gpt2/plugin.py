"""Entry point of the decoder-only plugin (group ``adapters.plugins``)."""

from __future__ import annotations

from adapters.plugins import ModelSpec, hookimpl

from .specs import SPECS


@hookimpl
def adapters_model_specs() -> list[ModelSpec]:
    return list(SPECS)


# AutoAdapterModel classes, imported only when first used (they import transformers' model classes).
_ADAPTER_MODELS = {
    "llama": "LlamaAdapterModel",
    "mistral": "MistralAdapterModel",
    "qwen2": "Qwen2AdapterModel",
    "qwen3": "Qwen3AdapterModel",
    "gemma2": "Gemma2AdapterModel",
    "gemma3_text": "Gemma3TextAdapterModel",
    "gptj": "GPTJAdapterModel",
    "gpt2": "GPT2AdapterModel",
}


@hookimpl
def adapters_adapter_models() -> dict[str, str]:
    return {model_type: f"adapters_gpt2.adapter_models:{name}" for model_type, name in _ADAPTER_MODELS.items()}
