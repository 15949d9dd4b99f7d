"""Entry point of the encoder-decoder plugin (group ``adapters.plugins``)."""

from __future__ import annotations

from adapters.plugins import ModelSpec, hookimpl

from .specs import SPECS


@hookimpl
def adapters_model_specs() -> list[ModelSpec]:
    return list(SPECS)


# AutoAdapterModel classes, imported only when first used (they import transformers' model classes).
_ADAPTER_MODELS = {
    "t5": "T5AdapterModel",
    "mt5": "MT5AdapterModel",
    "bart": "BartAdapterModel",
    "mbart": "MBartAdapterModel",
    "plbart": "PLBartAdapterModel",
}


@hookimpl
def adapters_adapter_models() -> dict[str, str]:
    return {model_type: f"adapters_t5.adapter_models:{name}" for model_type, name in _ADAPTER_MODELS.items()}
