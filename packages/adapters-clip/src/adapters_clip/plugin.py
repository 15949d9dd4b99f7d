"""Entry point of the CLIP plugin (group ``adapters.plugins``)."""

from __future__ import annotations

from adapters.plugins import ModelSpec, hookimpl

from .specs import SPECS


@hookimpl
def adapters_model_specs() -> list[ModelSpec]:
    return list(SPECS)


@hookimpl
def adapters_adapter_models() -> dict[str, str]:
    # Imported only when first used (it imports transformers' CLIP classes).
    return {"clip": "adapters_clip.adapter_models:CLIPAdapterModel"}
