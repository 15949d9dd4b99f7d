"""PEFT's LoRA (with rsLoRA and DoRA) as this library's LoRAConfig, and back.

PEFT's LoRA is ``W + (lora_alpha / r) * B @ A`` (``lora_alpha / sqrt(r)`` with rsLoRA), ``lora_A`` of
shape (r, in) and ``lora_B`` (out, r): this library's LoRA with the same shapes and scaling, so
on the linear layers a model's spec names (q, k, v, the attention output, the FFN's projections) it
maps both ways without loss, whichever way ``target_modules`` was written (a list or a regex: the
weight keys say which modules it matched).

DoRA differs in two details. PEFT computes ``m / ||W + s B A||_row * (W x + s B A x) + b``; this
library, as the reference, ``m / ||W + B A||_row * (W x + b + s B A x)``. With ``s = 1`` and no
bias they are the same function, so a PEFT DoRA maps exactly as ``B' = s B`` with ``alpha = r``
on layers without a bias, and a DoRA of this library with ``alpha == r`` maps to PEFT; a DoRA on a
biased layer, or one written with ``alpha != r``, is refused.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...configs.lora import LoRAConfig
from ...errors import AdapterConfigError, AdapterLoadError
from . import common

if TYPE_CHECKING:
    from ...core.state import AdapterState

# PEFT's suffix of each tensor -> this library's name of it under ``loras.NAME``.
_SUFFIXES = {".lora_A.weight": "lora_A", ".lora_B.weight": "lora_B", ".lora_magnitude_vector": "m.weight"}
# Fields whose other values change what the adapter computes in a way LoRAConfig cannot say.
_UNMAPPED = {
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
    "layer_replication": (None,),
    "lora_bias": (False, None),
    "target_parameters": (None, []),
    "fan_in_fan_out": (False, None),
    "use_qalora": (False, None),
    "trainable_token_indices": (None,),
}


def read_lora(
    state: AdapterState, folder: Path, data: dict[str, Any], raw: dict[str, torch.Tensor], name: str
) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """A PEFT LoRA file's config and tensors as this library's (tensor keys as ``save_adapter`` writes them)."""
    common.refuse_fields(data, _UNMAPPED, folder)
    if data.get("bias", "none") != "none":
        raise AdapterLoadError(f"{folder}: PEFT's bias={data['bias']!r} trains biases, which LoRA here does not.")
    r, alpha = int(data["r"]), float(data["lora_alpha"])
    if data.get("use_rslora"):
        alpha *= math.sqrt(r)  # alpha' / r == lora_alpha / sqrt(r)
    dora = bool(data.get("use_dora"))
    roles = common.linear_roles(state)
    placed: dict[int, set[str]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None or not key.startswith(common.PEFT_PREFIX):
            raise AdapterLoadError(
                f"{folder}: {key!r} is no PEFT LoRA weight (base_model.model.<module>.lora_A.weight)."
            )
        path = key[len(common.PEFT_PREFIX) : -len(suffix)]
        if path not in roles:
            raise common.not_a_linear(folder, path, roles, state)
        index, role = roles[path]
        placed.setdefault(index, set()).add(role)
        ours = _SUFFIXES[suffix]
        if ours == "m.weight":
            value = value.reshape(-1, 1)  # the reference stores m as (out, 1)
        tensors[f"{path}.loras.{name}.{ours}"] = value
    if dora:
        _refuse_biased(state, {key.partition(".loras.")[0] for key in tensors}, folder)
        scaling = alpha / r
        for key in tensors:
            if key.endswith(".lora_B"):
                tensors[key] = tensors[key] * scaling
        alpha = float(r)
    config = LoRAConfig(
        r=r,
        alpha=alpha,
        dropout=float(data.get("lora_dropout", 0.0) or 0.0),
        use_dora=dora,
        **common.layer_fields(placed, state, folder),
    )
    return config, tensors


def write_lora(state: AdapterState, name: str, config: LoRAConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """LoRA (or DoRA) adapter ``name`` as PEFT's weights and config."""
    per_linear = common.unfused_linear_tensors(state, name, "LoRA")
    if config.use_dora:
        _refuse_biased(state, set(per_linear), None, name)
        if config.scaling != 1:
            raise AdapterConfigError(
                f"Adapter {name!r} (DoRA, alpha={config.alpha}, r={config.r}) cannot be written in PEFT's format: "
                "this library's DoRA (the reference's) takes the row norms of W + B A without the scaling "
                "alpha / r and PEFT's with it, so the two agree only with alpha == r. Train it with alpha=r."
            )
    weights: dict[str, torch.Tensor] = {}
    for path, params in per_linear.items():
        lora_b = params["lora_B"]
        if config.use_dora:
            weights[f"{common.PEFT_PREFIX}{path}.lora_magnitude_vector"] = params["m.weight"].reshape(-1)
        weights[f"{common.PEFT_PREFIX}{path}.lora_A.weight"] = params["lora_A"]
        weights[f"{common.PEFT_PREFIX}{path}.lora_B.weight"] = lora_b.contiguous()
    peft_config = {
        **common.common_fields(state),
        "peft_type": "LORA",
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": common.target_regex(set(per_linear)),
        "bias": "none",
        "use_rslora": False,
        "use_dora": config.use_dora,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
    }
    return weights, peft_config


def _refuse_biased(state: AdapterState, paths: set[str], folder: Path | None, name: str | None = None) -> None:
    biased = sorted(p for p in paths if getattr(state.model.get_submodule(p), "bias", None) is not None)
    if not biased:
        return
    why = (
        f"PEFT's DoRA leaves the bias of {biased[0]} out of its rescaling and this library's (the reference's) "
        "rescales it, so the two compute different outputs on layers with a bias"
    )
    if folder is not None:
        raise AdapterLoadError(f"{folder}: use_dora=True on a layer with a bias has no equivalent here: {why}.")
    raise AdapterConfigError(f"Adapter {name!r} (DoRA) cannot be written in PEFT's format: {why}.")
