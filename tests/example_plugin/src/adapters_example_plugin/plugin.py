"""Entry point of the example plugin (group ``adapters.plugins``, see pyproject.toml)."""

from __future__ import annotations

from adapters.plugins import ModelSpec, hookimpl

from .specs import SPECS


@hookimpl
def adapters_model_specs() -> list[ModelSpec]:
    return list(SPECS)
