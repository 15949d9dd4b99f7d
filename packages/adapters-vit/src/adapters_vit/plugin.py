"""Entry point of the vision-transformer plugin (group ``adapters.plugins``)."""

from __future__ import annotations

import dataclasses

from torch import nn

from adapters.plugins import ModelSpec, hookimpl

from .specs import BEIT, BEIT_RELATIVE_POSITION_REFUSALS, DINOV2, DINOV2_SWIGLU_LINEARS, SPECS


@hookimpl
def adapters_model_specs() -> list[ModelSpec]:
    return list(SPECS)


@hookimpl
def adapters_post_init(model: nn.Module, spec: ModelSpec) -> None:
    # The spec is per model type; these choices are per checkpoint.
    state = model.adapters_state
    config = state.base_model.config
    if spec is DINOV2 and getattr(config, "use_swiglu_ffn", False):
        state.spec = dataclasses.replace(spec, linears=DINOV2_SWIGLU_LINEARS)
    elif spec is BEIT and (config.use_relative_position_bias or config.use_shared_relative_position_bias):
        state.spec = dataclasses.replace(spec, refused_methods=BEIT_RELATIVE_POSITION_REFUSALS)
