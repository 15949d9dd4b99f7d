"""Entry point of the vision-transformer plugin (group ``adapters.plugins``)."""

from __future__ import annotations

from adapters.plugins import ModelSpec, hookimpl

from .specs import SPECS


@hookimpl
def adapters_model_specs() -> list[ModelSpec]:
    return list(SPECS)


# AutoAdapterModel classes, imported only when first used (they import transformers' model classes).
_ADAPTER_MODELS = {
    "vit": "ViTAdapterModel",
    "beit": "BeitAdapterModel",
    "dinov2": "Dinov2AdapterModel",
    "dinov2_with_registers": "Dinov2WithRegistersAdapterModel",
}


@hookimpl
def adapters_adapter_models() -> dict[str, str]:
    return {model_type: f"adapters_vit.adapter_models:{name}" for model_type, name in _ADAPTER_MODELS.items()}
