"""Entry point of the vision-transformer plugin (group ``adapters.plugins``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.plugins import ModelSpec, hookimpl

from .specs import SPECS

if TYPE_CHECKING:
    from adapters.heads.conversion import StaticHead


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


@hookimpl
def adapters_static_heads() -> dict[str, StaticHead]:
    # Imported on first use: the builders come from adapters.heads, which imports transformers' output classes.
    from .static_heads import STATIC_HEADS

    return STATIC_HEADS
