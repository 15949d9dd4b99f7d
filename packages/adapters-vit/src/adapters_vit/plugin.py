"""Entry point of the vision-transformer plugin (group ``adapters.plugins``)."""

from __future__ import annotations

import dataclasses

from torch import nn

from adapters.plugins import ModelSpec, hookimpl

from .specs import DINOV2, DINOV2_SWIGLU_LINEARS, SPECS


@hookimpl
def adapters_model_specs() -> list[ModelSpec]:
    return list(SPECS)


@hookimpl
def adapters_post_init(model: nn.Module, spec: ModelSpec) -> None:
    # The spec is per model type; DINOv2's FFN kind is per checkpoint (use_swiglu_ffn).
    if spec is DINOV2 and getattr(model.adapters_state.base_model.config, "use_swiglu_ffn", False):
        model.adapters_state.spec = dataclasses.replace(spec, linears=DINOV2_SWIGLU_LINEARS)
