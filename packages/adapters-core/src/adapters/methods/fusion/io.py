"""AdapterFusion folders in the reference format: ``adapter_fusion_config.json`` plus the weights.

Weight keys are the fusion layers' module paths, e.g.
``encoder.layer.0.output.adapter_fusion_layer.a,b.query.weight`` (with the head model's base
prefix, ``bert.``, when saved from a model with a head).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...configs.fusion import AdapterFusionConfig
from ...core import reference_format
from ...errors import AdapterConfigError, AdapterLoadError
from ...files import format as fmt
from ...files import integrity
from ...files.atomic import atomic_directory
from ...files.weights import load_weights, save_weights
from .registry import CONTAINER, Fusion, FusionRegistry

if TYPE_CHECKING:
    from ...core.state import AdapterState


def fusion_state_dict(
    state: AdapterState, fusion: Fusion, full: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The fusion's tensors keyed as the reference library names them.

    ``full``, a state dict of the whole model by the model's own names (the whole weights a trainer
    gathered from FSDP or ZeRO-3 shards), replaces the modules' tensors where it has them.
    """
    tensors: dict[str, torch.Tensor] = {}
    for path, layer in fusion.paths.items():
        saved, own = reference_format.saved_path(state, path), f"{state.base_prefix}{path}"
        for key, value in layer.state_dict().items():
            tensors[f"{saved}.{key}"] = full.get(f"{own}.{key}", value) if full is not None else value
    return tensors


def fusion_config_dict(state: AdapterState, name: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    fusion = FusionRegistry.of(state).require(name)
    return reference_format.saved_config_dict(
        state, name, fusion.config.to_dict(), meta, adapter_names=list(fusion.adapter_names)
    )


FUSION_FILES = frozenset({fmt.FUSION_CONFIG, fmt.FUSION_WEIGHTS, fmt.FUSION_WEIGHTS_LEGACY})


def save_fusion(
    state: AdapterState,
    directory: str | os.PathLike,
    name: str,
    meta: dict[str, Any] | None = None,
    use_safetensors: bool = True,
    tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the fusion ``name`` atomically; ``tensors`` (the model's full state dict) replace the module's own."""
    registry = FusionRegistry.of(state)
    if registry is None:
        raise AdapterConfigError(f"No AdapterFusion named {name!r}: this model has no fusion layers.")
    fusion = registry.require(name)
    config = fusion_config_dict(state, name, meta)
    weights = fusion_state_dict(state, fusion, tensors)
    weights_name = fmt.FUSION_WEIGHTS if use_safetensors else fmt.FUSION_WEIGHTS_LEGACY
    with atomic_directory(directory, FUSION_FILES) as scratch:
        record = save_weights(weights, scratch / weights_name, use_safetensors)
        reference_format.write_config(scratch / fmt.FUSION_CONFIG, config, weights_name, record)


def read_fusion_folder(
    state: AdapterState, folder: Path, use_safetensors: bool | None = None
) -> tuple[dict[str, Any], AdapterFusionConfig, dict[str, torch.Tensor]]:
    """The saved config dict, the fusion config and the weights of a fusion folder (nothing changes yet)."""
    data = reference_format.read_config_file(
        folder, fmt.FUSION_CONFIG, "load_adapter_fusion", "save_adapter_fusion", "AdapterFusion"
    )
    reference_format.check_compatible(state, data, folder)
    try:
        config = AdapterFusionConfig.load(data["config"])
    except (AdapterConfigError, TypeError) as error:
        raise AdapterLoadError(f"Cannot use the AdapterFusion config in {folder}: {error}") from error
    tensors = load_weights(
        folder,
        fmt.FUSION_WEIGHTS,
        fmt.FUSION_WEIGHTS_LEGACY,
        use_safetensors,
        expected=data.get(integrity.KEY),
        config_name=fmt.FUSION_CONFIG,
    )
    return data, config, reference_format.strip_base_prefix(state, tensors)


def load_into(
    state: AdapterState, fusion: Fusion, name: str, saved_name: str, tensors: dict[str, torch.Tensor], folder: Path
) -> None:
    """Copy saved tensors into the fusion ``name``; raise (changing nothing) on any mismatch."""
    expected: dict[str, torch.Tensor] = {}
    own_segment = f"{CONTAINER}.{name}"
    saved_segment = f"{CONTAINER}.{saved_name}"
    for path, layer in fusion.paths.items():
        saved_path = reference_format.loaded_path(state, path)
        saved_path = saved_path[: -len(own_segment)] + saved_segment
        for key, value in layer.state_dict(keep_vars=True).items():
            expected[f"{saved_path}.{key}"] = value
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterLoadError(
            f"The weights in {folder} do not match the AdapterFusion's config for this model: missing keys "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected keys "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}."
        )
    for key, target in expected.items():
        if target.shape != tensors[key].shape:
            raise AdapterLoadError(
                f"{key} in {folder} has shape {tuple(tensors[key].shape)}; this model expects {tuple(target.shape)}."
            )
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(tensors[key])
