"""PEFT's LoRA folders, read and written: ``adapter_config.json`` with ``peft_type`` and ``adapter_model.safetensors``.

PEFT keys a LoRA by the module it adapts, relative to the model it wrapped
(``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``, ``lora_A`` of shape (r, in),
``lora_B`` (out, r)), and scales ``B @ A`` by ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with
rsLoRA). This library's LoRA is the same update with the same shapes and the same scaling, on the
linear layers a model's spec names (q, k, v, the FFN's input and output projections): a PEFT LoRA on
exactly such layers maps to a :class:`~adapters.LoRAConfig` and back without loss. Everything else
(another PEFT method, a LoRA on a layer the spec does not name, DoRA, trained biases,
``modules_to_save``, per-module ranks) is refused with the field that cannot be mapped. No import
of PEFT: the format is plain JSON and safetensors (vLLM, TGI and LoRAX read the same folders).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..configs.lora import LoRAConfig
from ..errors import AdapterConfigError, AdapterLoadError
from ..files import format as fmt
from ..files.atomic import atomic_directory
from ..files.jsonfile import read_json
from ..files.weights import load_weights, save_weights

if TYPE_CHECKING:
    from ..core.state import AdapterState

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_WEIGHTS_LEGACY = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."
PEFT_FILES = frozenset({PEFT_CONFIG, PEFT_WEIGHTS, PEFT_WEIGHTS_LEGACY})
_A, _B = ".lora_A.weight", ".lora_B.weight"
# The spec roles LoRAConfig can adapt (attention output projections take no LoRA here).
_LORA_ROLES = ("q", "k", "v", "ffn_in", "ffn_out")
# Fields whose non-default value changes what the adapter computes in a way LoRAConfig cannot say.
_UNMAPPED = {
    "use_dora": (False, None),
    "modules_to_save": (None, []),
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
    "layer_replication": (None,),
    "lora_bias": (False, None),
    "target_parameters": (None, []),
    "fan_in_fan_out": (False, None),
}


def is_peft_folder(folder: Path) -> bool:
    """Whether ``folder``'s ``adapter_config.json`` is PEFT's (it names a ``peft_type``)."""
    path = folder / PEFT_CONFIG
    if not path.is_file():
        return False
    data = read_json(path, "adapter config")
    return isinstance(data, dict) and "peft_type" in data and "config" not in data


def read_peft_adapter(
    state: AdapterState, folder: Path, use_safetensors: bool | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A PEFT LoRA folder as this library's saved config dict and weights (keys as ``save_adapter`` writes them)."""
    data = read_json(folder / PEFT_CONFIG, "adapter config")
    peft_type = data.get("peft_type")
    if peft_type != "LORA":
        raise AdapterLoadError(
            f"{folder} holds a PEFT {peft_type} adapter; of PEFT's formats this library reads LoRA (peft_type 'LORA')."
        )
    for field, defaults in _UNMAPPED.items():
        if data.get(field, defaults[0]) not in defaults:
            raise AdapterLoadError(
                f"{folder}: PEFT's {field}={data[field]!r} has no equivalent here; only plain LoRA on the linear "
                "layers a model's spec names maps (re-train or merge that part in PEFT)."
            )
    if data.get("bias", "none") != "none":
        raise AdapterLoadError(f"{folder}: PEFT's bias={data['bias']!r} trains biases, which LoRA here does not.")
    raw = load_weights(folder, PEFT_WEIGHTS, PEFT_WEIGHTS_LEGACY, use_safetensors, config_name=PEFT_CONFIG)
    r, alpha = int(data["r"]), float(data["lora_alpha"])
    if data.get("use_rslora"):
        alpha *= math.sqrt(r)  # alpha' / r == lora_alpha / sqrt(r)
    name = folder.name
    roles = _roles(state)
    placed: dict[int, set[str]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        suffix = _A if key.endswith(_A) else _B if key.endswith(_B) else None
        if suffix is None or not key.startswith(PEFT_PREFIX):
            raise AdapterLoadError(
                f"{folder}: {key!r} is no PEFT LoRA weight (base_model.model.<module>.lora_A.weight)."
            )
        path = key[len(PEFT_PREFIX) : -len(suffix)]
        layer_role = roles.get(path)
        if layer_role is None:
            raise AdapterLoadError(
                f"{folder} adapts {path!r}, which is not a linear layer this library's LoRA places in "
                f"{state.base_model.config.model_type} models ({_describe(roles)}); train the PEFT adapter on those "
                "layers only to use it here."
            )
        placed.setdefault(layer_role[0], set()).add(layer_role[1])
        tensors[f"{path}.loras.{name}.{'lora_A' if suffix == _A else 'lora_B'}"] = value
    config = _config(placed, state, r, alpha, float(data.get("lora_dropout", 0.0) or 0.0), folder)
    saved = {
        "config": config.to_dict(),
        "name": name,
        "model_type": state.base_model.config.model_type,
        "version": fmt.FORMAT_VERSION_PREFIX + fmt.FORMAT_VERSION,
    }
    return saved, tensors


def save_peft_adapter(state: AdapterState, directory: str | os.PathLike, name: str) -> None:
    """Write LoRA adapter ``name`` as a PEFT folder (``PeftModel.from_pretrained`` and vLLM read it)."""
    config = state.require(name)
    # Exactly LoRAConfig: its subclasses (IA3, VeRA, DoRA) compute other updates.
    if (
        type(config) is not LoRAConfig
        or config.use_dora
        or config.use_gating
        or config.vera_d is not None
        or config.composition_mode != "add"
    ):
        raise AdapterConfigError(
            f"Adapter {name!r} ({type(config).__name__}) cannot be written in PEFT's format: only plain LoRA "
            "(no DoRA, VeRA, IA3, gating) maps to PEFT's LoRA without loss; save it with format='adapters'."
        )
    prefix = f".loras.{name}."
    weights: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    for key, value in _adapter_tensors(state, name).items():
        path, _, which = key.partition(prefix)
        weights[f"{PEFT_PREFIX}{path}.{which}.weight"] = value
        targets.add(path)
    fused = _fused_paths(state)
    if targets & fused:
        raise AdapterConfigError(
            f"Adapter {name!r} adapts slices of a fused projection ({sorted(targets & fused)[0]}); PEFT's LoRA "
            "spans such a layer as one matrix, so it has no equivalent there."
        )
    peft_config = {
        "peft_type": "LORA",
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        # An exact regex over the adapted modules (PEFT full-matches a string target_modules).
        "target_modules": "^(?:" + "|".join(sorted(_escaped(t) for t in targets)) + ")$",
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
        "base_model_name_or_path": getattr(state.model, "name_or_path", None) or None,
        "task_type": None,
    }
    with atomic_directory(directory, PEFT_FILES) as scratch:
        save_weights(weights, scratch / PEFT_WEIGHTS, True)
        (scratch / PEFT_CONFIG).write_text(json.dumps(peft_config, indent=2, sort_keys=True))


def _escaped(path: str) -> str:
    return path.replace(".", r"\.")


def _adapter_tensors(state: AdapterState, name: str) -> dict[str, torch.Tensor]:
    result = {}
    for path, module in state.modules_of(name).items():
        full = f"{state.base_prefix}{path}"
        for key, value in module.state_dict().items():
            result[f"{full}.{key}"] = value.detach().contiguous()
    return result


def _roles(state: AdapterState) -> dict[str, tuple[int, str]]:
    """Module path (relative to the whole model, as PEFT keys it) -> (layer index, LoRA role)."""
    paths = _module_paths(state)
    roles: dict[str, tuple[int, str]] = {}
    for index, layer in state.layers:
        for role, path in state.layer_spec(index).linears.items():
            module = _find(layer, path)
            if role in _LORA_ROLES and isinstance(module, nn.Linear) and id(module) in paths:
                roles[paths[id(module)]] = (index, role)
    return roles


def _fused_paths(state: AdapterState) -> set[str]:
    paths = _module_paths(state)
    found = (_find(layer, f.path) for index, layer in state.layers for f in state.layer_spec(index).fused_linears)
    return {paths[id(module)] for module in found if module is not None}


def _module_paths(state: AdapterState) -> dict[int, str]:
    """``id(module)`` -> its path in the whole model."""
    return {id(module): path for path, module in state.model.named_modules()}


def _find(layer: nn.Module, path: str) -> nn.Module | None:
    try:
        return layer.get_submodule(path)
    except AttributeError:
        return None


def _describe(roles: dict[str, tuple[int, str]]) -> str:
    leaves = sorted({path.rsplit(".", 1)[-1] for path in roles})
    return f"LoRA goes on the layers named {', '.join(leaves)}" if leaves else "it names no LoRA layers"


def _config(placed: dict[int, set[str]], state: AdapterState, r: int, alpha: float, dropout: float, folder: Path):
    """The LoRAConfig that adapts exactly the (layer, role) pairs PEFT's file adapts."""
    role_sets = {frozenset(roles) for roles in placed.values()}
    if len(role_sets) != 1:
        raise AdapterLoadError(
            f"{folder} adapts different layers' projections differently ({sorted(map(sorted, role_sets))}); a "
            "LoRAConfig adapts the same projections in every layer it does not leave out."
        )
    roles = next(iter(role_sets))
    attention = tuple(m for m in ("q", "k", "v") if m in roles)
    leave_out = tuple(index for index, _ in state.layers if index not in placed)
    return LoRAConfig(
        r=r,
        alpha=alpha,
        dropout=dropout,
        selfattn_lora=bool(attention),
        attn_matrices=attention or ("q", "v"),
        intermediate_lora="ffn_in" in roles,
        output_lora="ffn_out" in roles,
        leave_out=leave_out,
    )
