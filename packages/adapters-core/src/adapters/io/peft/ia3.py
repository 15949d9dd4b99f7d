"""PEFT's IA3 as this library's (IA)^3, and back, where both scale a layer's output.

PEFT's IA3 learns a vector ``ia3_l`` per target module. On a module it does not list in
``feedforward_modules`` the vector (out, 1) scales the module's output, ``y * l``: exactly this
library's (IA)^3 (``lora_B``, out x 1, times ``alpha``). On a feedforward module PEFT scales the
module's *input* instead (shape 1 x in), which has no equivalent here (the reference's and this
library's IA3 scale outputs), so such a file is refused naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...configs.lora import IA3Config, LoRAConfig
from ...errors import AdapterLoadError
from . import common

if TYPE_CHECKING:
    from ...core.state import AdapterState

_SUFFIX = ".ia3_l"
_UNMAPPED = {"fan_in_fan_out": (False, None), "exclude_modules": (None, [])}


def read_ia3(
    state: AdapterState, folder: Path, data: dict[str, Any], raw: dict[str, torch.Tensor], name: str
) -> tuple[IA3Config, dict[str, torch.Tensor]]:
    """A PEFT IA3 file's config and tensors as this library's."""
    common.refuse_fields(data, _UNMAPPED, folder)
    roles = common.linear_roles(state)
    placed: dict[int, set[str]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not (key.startswith(common.PEFT_PREFIX) and key.endswith(_SUFFIX)):
            raise AdapterLoadError(f"{folder}: {key!r} is no PEFT IA3 weight (base_model.model.<module>.ia3_l).")
        path = key[len(common.PEFT_PREFIX) : -len(_SUFFIX)]
        if path not in roles:
            raise common.not_a_linear(folder, path, roles, state)
        linear = state.model.get_submodule(path)
        if tuple(value.shape) != (linear.out_features, 1):
            raise AdapterLoadError(
                f"{folder}: PEFT's IA3 scales the input of {path} (it is in feedforward_modules, vector of shape "
                f"{tuple(value.shape)}); this library's (IA)^3 scales a layer's output, so only IA3 on modules outside "
                "feedforward_modules maps. Train the PEFT adapter with feedforward_modules=[] to use it here."
            )
        index, role = roles[path]
        placed.setdefault(index, set()).add(role)
        tensors[f"{path}.loras.{name}.lora_B"] = value
    return IA3Config(r=1, alpha=1.0, **common.layer_fields(placed, state, folder)), tensors


def write_ia3(state: AdapterState, name: str, config: LoRAConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(IA)^3 adapter ``name`` as PEFT's weights and config (every module outside ``feedforward_modules``)."""
    per_linear = common.unfused_linear_tensors(state, name, "IA3")
    weights = {
        f"{common.PEFT_PREFIX}{path}{_SUFFIX}": (params["lora_B"] * config.scaling).contiguous()
        for path, params in per_linear.items()
    }
    peft_config = {
        **common.common_fields(state),
        "peft_type": "IA3",
        "target_modules": common.target_regex(set(per_linear)),
        "feedforward_modules": [],
        "fan_in_fan_out": False,
        "init_ia3_weights": True,
    }
    return weights, peft_config
