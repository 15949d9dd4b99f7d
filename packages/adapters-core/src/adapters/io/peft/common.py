"""What every PEFT method's conversion shares: file names, module paths, layer roles, the folder write.

PEFT keys a tuner's tensors by the module it adapts, relative to the model it wrapped
(``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``). This library keys the same
modules by the model's own paths (``model.layers.0.self_attn.q_proj.loras.NAME.lora_A``), so a
conversion is a renaming once each PEFT module path is matched to a linear role of the model's spec.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...errors import AdapterConfigError, AdapterLoadError
from ...files import format as fmt
from ...files.atomic import atomic_directory
from ...files.weights import save_weights

if TYPE_CHECKING:
    from ...configs.base import AdapterConfig
    from ...core.state import AdapterState

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_WEIGHTS_LEGACY = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."
PEFT_FILES = frozenset({PEFT_CONFIG, PEFT_WEIGHTS, PEFT_WEIGHTS_LEGACY})
# Spec role -> the LoRAConfig.attn_matrices entry that adapts it.
ATTENTION_ROLES = {"q": "q", "k": "k", "v": "v", "attn_out": "o"}
# The spec roles the LoRA family adapts (attn_matrices, intermediate_lora, output_lora, gate_lora).
LINEAR_ROLES = (*ATTENTION_ROLES, "ffn_in", "ffn_out", "ffn_gate")
# Which transformers auto-class family a model class belongs to -> PEFT's task_type for it.
_TASK_TYPES = (
    ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "CAUSAL_LM"),
    ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "SEQ_2_SEQ_LM"),
    ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "SEQ_CLS"),
    ("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "TOKEN_CLS"),
    ("MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES", "QUESTION_ANS"),
    ("MODEL_MAPPING_NAMES", "FEATURE_EXTRACTION"),
)
LANGUAGE_MODEL_TASKS = frozenset({"CAUSAL_LM", "SEQ_2_SEQ_LM"})


def module_paths(state: AdapterState) -> dict[int, str]:
    """``id(module)`` -> its path in the whole model (PEFT's keys are relative to it)."""
    return {id(module): path for path, module in state.model.named_modules()}


def find(layer: nn.Module, path: str) -> nn.Module | None:
    try:
        return layer.get_submodule(path)
    except AttributeError:
        return None


def linear_roles(state: AdapterState) -> dict[str, tuple[int, str]]:
    """Path (in the whole model) of each plain linear the LoRA family can adapt -> (layer index, role)."""
    paths = module_paths(state)
    roles: dict[str, tuple[int, str]] = {}
    for index, layer in state.layers:
        for role, path in state.layer_spec(index).linears.items():
            module = find(layer, path)
            if role in LINEAR_ROLES and isinstance(module, nn.Linear) and id(module) in paths:
                roles[paths[id(module)]] = (index, role)
    return roles


def fused_paths(state: AdapterState) -> set[str]:
    """Paths of the fused projections (q/k/v in one linear), which PEFT adapts as one matrix."""
    paths = module_paths(state)
    found = (find(layer, f.path) for index, layer in state.layers for f in state.layer_spec(index).fused_linears)
    return {paths[id(module)] for module in found if module is not None}


def not_a_linear(folder: Path, path: str, roles: dict[str, tuple[int, str]], state: AdapterState) -> AdapterLoadError:
    leaves = sorted({p.rsplit(".", 1)[-1] for p in roles})
    where = f"the layers named {', '.join(leaves)}" if leaves else "no layers"
    return AdapterLoadError(
        f"{folder} adapts {path!r}, which is not a linear layer this library's LoRA family places in "
        f"{state.base_model.config.model_type} models (it adapts {where}); train the PEFT adapter on those layers "
        "only to use it here."
    )


def refuse_fields(data: dict[str, Any], unmapped: dict[str, tuple], folder: Path) -> None:
    """Raise on the first field whose value is none of its mappable ``unmapped[field]`` values."""
    for field, allowed in unmapped.items():
        if data.get(field, allowed[0]) not in allowed:
            raise AdapterLoadError(
                f"{folder}: PEFT's {field}={data[field]!r} has no equivalent here; only the layers a model's spec "
                "names map, each with one rank and scaling (re-train or merge that part in PEFT)."
            )


def layer_fields(placed: dict[int, set[str]], state: AdapterState, folder: Path) -> dict[str, Any]:
    """The LoRAConfig fields that adapt exactly the (layer, role) pairs a PEFT file adapts."""
    role_sets = {frozenset(roles) for roles in placed.values()}
    if len(role_sets) != 1:
        raise AdapterLoadError(
            f"{folder} adapts different layers' projections differently ({sorted(map(sorted, role_sets))}); a "
            "LoRAConfig adapts the same projections in every layer it does not leave out."
        )
    roles = next(iter(role_sets))
    attention = tuple(matrix for role, matrix in ATTENTION_ROLES.items() if role in roles)
    return dict(
        selfattn_lora=bool(attention),
        attn_matrices=attention or ("q", "v"),
        intermediate_lora="ffn_in" in roles,
        output_lora="ffn_out" in roles,
        gate_lora="ffn_gate" in roles,
        leave_out=tuple(index for index, _ in state.layers if index not in placed),
    )


def linear_tensors(state: AdapterState, name: str) -> dict[str, dict[str, torch.Tensor]]:
    """Adapter ``name``'s tensors per adapted linear: ``{linear path: {"lora_A": ..., "m.weight": ...}}``."""
    marker = f".loras.{name}"
    result: dict[str, dict[str, torch.Tensor]] = {}
    for path, module in state.modules_of(name).items():
        full = f"{state.base_prefix}{path}"
        if not full.endswith(marker):
            continue
        result[full[: -len(marker)]] = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    return result


def unfused_linear_tensors(state: AdapterState, name: str, what: str) -> dict[str, dict[str, torch.Tensor]]:
    """:func:`linear_tensors`, refusing an adapter on a fused projection (PEFT adapts it as one matrix)."""
    per_linear = linear_tensors(state, name)
    fused = fused_paths(state) & set(per_linear)
    if fused:
        raise AdapterConfigError(
            f"Adapter {name!r} adapts slices of a fused projection ({sorted(fused)[0]}); PEFT's {what} spans such a "
            "layer as one matrix, so it has no equivalent there."
        )
    return per_linear


def target_regex(paths: set[str]) -> str:
    """An exact regex over the adapted modules (PEFT full-matches a string ``target_modules``)."""
    return "^(?:" + "|".join(sorted(path.replace(".", r"\.") for path in paths)) + ")$"


def task_type(model: nn.Module) -> str | None:
    """PEFT's ``task_type`` for the class of ``model`` (``None`` where transformers has no auto class for it)."""
    from transformers.models.auto import modeling_auto

    name = type(model).__name__
    for mapping, task in _TASK_TYPES:
        if name in getattr(modeling_auto, mapping, {}).values():
            return task
    return None


def common_fields(state: AdapterState) -> dict[str, Any]:
    """The fields of every PEFT config this library writes."""
    return {
        "base_model_name_or_path": getattr(state.model, "name_or_path", None) or None,
        "inference_mode": True,
        "modules_to_save": None,
        "revision": None,
        "task_type": task_type(state.model),
    }


def saved_config(state: AdapterState, name: str, config: AdapterConfig) -> dict[str, Any]:
    """``adapter_config.json`` as this library's ``save_adapter`` would have written it for ``config``."""
    return {
        "config": config.to_dict(),
        "name": name,
        "model_type": state.base_model.config.model_type,
        "version": fmt.FORMAT_VERSION_PREFIX + fmt.FORMAT_VERSION,
    }


def write_folder(directory: str | os.PathLike, weights: dict[str, torch.Tensor], peft_config: dict[str, Any]) -> None:
    """Write PEFT's two files into ``directory`` in one whole-folder swap."""
    with atomic_directory(directory, PEFT_FILES) as scratch:
        save_weights(weights, scratch / PEFT_WEIGHTS, True)
        (scratch / PEFT_CONFIG).write_text(json.dumps(peft_config, indent=2, sort_keys=True))
