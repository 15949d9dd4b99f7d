"""AdapterFusion layers in ``AdapterTrainer`` checkpoints: one ``save_adapter_fusion`` folder per fusion."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from ..methods.fusion import api
from ..methods.fusion.io import save_fusion
from ..methods.fusion.registry import FusionRegistry
from .checkpoint import CheckpointKind, register_checkpoint_kind


def _fusions_to_save(model: nn.Module) -> list[str]:
    """Fusions of the active setup and every fusion with a trainable parameter."""
    state = getattr(model, "adapters_state", None)
    registry = FusionRegistry.of(state) if state is not None else None
    if registry is None:
        return []
    active = set(api.active_fusion_names(state))
    return [
        name
        for name, fusion in registry.fusions.items()
        if name in active or any(p.requires_grad for _, p in fusion.named_parameters())
    ]


def _parameters(model: nn.Module, name: str) -> Iterable[tuple[str, nn.Parameter]]:
    state = model.adapters_state
    return FusionRegistry.of(state).require(name).named_parameters(prefix=state.base_prefix)


def _save(model: nn.Module, folder: Path, name: str, state_dict: Mapping[str, torch.Tensor] | None) -> None:
    save_fusion(model.adapters_state, folder, name, tensors=dict(state_dict) if state_dict is not None else None)


def _load(model: nn.Module, folder: Path, name: str) -> bool:
    registry = FusionRegistry.of(model.adapters_state)
    existed = registry is not None and name in registry.fusions
    api.load_adapter_fusion(model, folder, load_as=name)
    return not existed


register_checkpoint_kind(
    CheckpointKind(kind="fusion", names_to_save=_fusions_to_save, parameters=_parameters, save=_save, load=_load)
)
