"""The model API of AdapterFusion; ``ModelAdaptersMixin`` delegates its fusion methods here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...composition.blocks import AdapterCompositionBlock, Fuse
from ...configs.fusion import AdapterFusionConfig
from ...errors import AdapterConfigError, AdapterLoadError, AdapterNameError
from ...files.paths import named_child
from ...files.scratch import tidy_before_reading
from ...names import check_fusion_name, check_saved_name
from .fuser import check_fusions, fuse_blocks
from .io import load_into, read_fusion_folder, save_fusion
from .registry import FusionRegistry

if TYPE_CHECKING:
    from torch import nn

# The reference library's weight of the value regularization.
REGULARIZATION_WEIGHT = 0.01


def as_fuse(adapter_names: Fuse | list[str] | str, name: str | None = None) -> Fuse:
    """A Fuse from a Fuse, a list of names or a comma-separated string (``name`` overrides its name)."""
    if isinstance(adapter_names, Fuse):
        children = list(adapter_names.children)
        name = name or adapter_names.name
    elif isinstance(adapter_names, str):
        children = [n.strip() for n in adapter_names.split(",")]
    elif isinstance(adapter_names, (list, tuple)):
        children = list(adapter_names)
    else:
        raise AdapterConfigError(
            f"Cannot read {adapter_names!r} as the adapters of an AdapterFusion: pass a Fuse, a list of adapter "
            "names or a comma-separated string."
        )
    default = Fuse(*children)
    return default if name in (None, default.name) else Fuse(*children, name=name)


def fusion_name(adapter_names: Fuse | list[str] | str) -> str:
    """The fusion's name as the reference derives it: a Fuse's name, the joined list, or the string."""
    if isinstance(adapter_names, str):
        return adapter_names
    return as_fuse(adapter_names).name


def _registry(model: nn.Module) -> FusionRegistry:
    return FusionRegistry.of(model.adapters_state, create=True)


def add_adapter_fusion(
    model: nn.Module,
    adapter_names: Fuse | list[str] | str,
    config: Any = "dynamic",
    name: str | None = None,
    overwrite_ok: bool = False,
    set_active: bool = False,
) -> str:
    state = model.adapters_state
    fuse = as_fuse(adapter_names, name)
    name = check_fusion_name(fuse.name)
    resolved = AdapterFusionConfig.load(config)
    for adapter in fuse.flatten():
        state.require(adapter)
    registry = _registry(model)
    if name in registry.fusions:
        if not overwrite_ok:
            raise AdapterNameError(
                f"An AdapterFusion named {name!r} exists already; pass overwrite_ok=True to replace it or name= "
                "to add another one."
            )
        delete_adapter_fusion(model, name)
    registry.add(name, fuse.flatten(), resolved)
    if set_active:
        model.set_active_adapters(fuse)
    return name


def delete_adapter_fusion(model: nn.Module, adapter_names: Fuse | list[str] | str) -> None:
    state = model.adapters_state
    name = fusion_name(adapter_names)
    registry = FusionRegistry.of(state)
    if registry is None or name not in registry.fusions:
        raise AdapterNameError(
            f"No AdapterFusion named {name!r}; fusions: {sorted(registry.fusions) if registry else []}."
        )
    active = state.active_setup
    if active is not None and any(f.name == name for f in fuse_blocks(active)):
        model.set_active_adapters(None)
    registry.delete(name)


def train_adapter_fusion(model: nn.Module, adapter_setup: Any, unfreeze_adapters: bool = False) -> None:
    state = model.adapters_state
    block = state.resolve_setup(adapter_setup)
    if block is None:
        raise AdapterConfigError("train_adapter_fusion() needs a setup with a Fuse block, e.g. Fuse('a', 'b').")
    fuses = check_fusions(state, block)
    if not fuses:
        raise AdapterConfigError(
            f"{block!r} has no Fuse block, so there is no fusion layer to train; use train_adapter() for adapters."
        )
    registry = FusionRegistry.of(state)
    model.train()
    model.freeze_model(True)
    if unfreeze_adapters:
        for adapter in block.flatten():
            for _, param in state.parameters_of(adapter):
                param.requires_grad = True
    for fuse in fuses:
        for _, param in registry.fusions[fuse.name].named_parameters():
            param.requires_grad = True
    model.set_active_adapters(block)


def save_adapter_fusion(
    model: nn.Module,
    save_directory: str | os.PathLike,
    adapter_names: Fuse | list[str] | str,
    meta_dict: dict | None = None,
    use_safetensors: bool = True,
) -> None:
    save_fusion(model.adapters_state, save_directory, fusion_name(adapter_names), meta_dict, use_safetensors)


def save_all_adapter_fusions(
    model: nn.Module, save_directory: str | os.PathLike, meta_dict: dict | None = None, use_safetensors: bool = True
) -> None:
    for name in fusion_names(model.adapters_state):
        folder = named_child(save_directory, name, "AdapterFusion")
        save_fusion(model.adapters_state, folder, name, meta_dict, use_safetensors)


def fusion_names(state: Any) -> list[str]:
    registry = FusionRegistry.of(state)
    return list(registry.fusions) if registry is not None else []


def load_adapter_fusion(
    model: nn.Module,
    adapter_fusion_name_or_path: str | os.PathLike,
    load_as: str | None = None,
    set_active: bool = False,
    use_safetensors: bool | None = None,
) -> str:
    state = model.adapters_state
    folder = Path(adapter_fusion_name_or_path)
    tidy_before_reading(folder)
    if not folder.is_dir():
        raise AdapterLoadError(
            f"{folder} is not a folder; load_adapter_fusion() reads a folder written by save_adapter_fusion()."
        )
    data, config, tensors = read_fusion_folder(state, folder, use_safetensors)
    saved_name = data.get("name") or folder.name
    name = check_fusion_name(load_as) if load_as else check_saved_name(saved_name, folder, "AdapterFusion")
    adapter_names = data.get("adapter_names") or saved_name.split(",")
    registry = _registry(model)
    existing = registry.fusions.get(name)
    if existing is not None:
        # In place (the reference does so too), e.g. a trainer restoring a checkpoint: the
        # parameters and an optimizer holding them stay valid.
        if existing.config.to_dict() != config.to_dict() or existing.adapter_names != list(adapter_names):
            raise AdapterLoadError(
                f"The model has an AdapterFusion {name!r} with another config or other adapters than the one in "
                f"{folder}; delete it with delete_adapter_fusion() or pass load_as= another name."
            )
        load_into(state, existing, name, saved_name, tensors, folder)
    else:
        add_adapter_fusion(model, list(adapter_names), config, name=name)
        try:
            load_into(state, registry.fusions[name], name, saved_name, tensors, folder)
        except BaseException:
            registry.delete(name)
            raise
    if set_active:
        model.set_active_adapters(as_fuse(list(adapter_names), name))
    return name


def get_fusion_regularization_loss(model: nn.Module) -> torch.Tensor | None:
    """``0.01 * sum ||I - V||^2`` over the trainable value matrices of fusions with ``regularization``.

    ``None`` when there is none (as in the reference library, whose trainer then adds nothing).
    Unlike the reference, a config with ``regularization=False`` is left out.
    """
    registry = FusionRegistry.of(model.adapters_state)
    loss = None
    for fusion in registry.fusions.values() if registry is not None else ():
        if not (fusion.config.value and fusion.config.regularization):
            continue
        for layer in fusion.paths.values():
            weight = layer.value.weight
            if not weight.requires_grad:
                continue
            identity = torch.eye(weight.shape[0], device=weight.device, dtype=weight.dtype)
            term = REGULARIZATION_WEIGHT * (identity - weight).pow(2).sum()
            loss = term if loss is None else loss + term
    return loss


def fusion_parameter_prefixes(state: Any) -> tuple[str, ...]:
    """``"<base prefix><path>."`` of every fusion layer: what ``save_pretrained`` leaves out."""
    registry = FusionRegistry.of(state)
    if registry is None:
        return ()
    return tuple(f"{state.base_prefix}{path}." for fusion in registry.fusions.values() for path in fusion.paths)


def active_fusion_names(state: Any) -> list[str]:
    block: AdapterCompositionBlock | None = state.active_setup
    return [f.name for f in fuse_blocks(block)] if block is not None else []
