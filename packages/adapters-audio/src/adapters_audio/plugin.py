"""Entry point of the speech-encoder plugin (group ``adapters.plugins``)."""

from __future__ import annotations

from adapters.plugins import ModelSpec, hookimpl

from .specs import SPECS


@hookimpl
def adapters_model_specs() -> list[ModelSpec]:
    return list(SPECS)
