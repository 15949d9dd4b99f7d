"""A PEFT folder (``adapter_config.json`` with ``peft_type``, ``adapter_model.safetensors``), read and written.

Each PEFT method that maps exactly has a module here (:mod:`.lora`, :mod:`.ia3`, :mod:`.prompt`),
plus ``modules_to_save`` as the static head (:mod:`.head`). What has no exact equivalent is refused
with the field or method that cannot be mapped. No import of PEFT: the format is plain JSON and
safetensors (vLLM, TGI and LoRAX read the same folders).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...configs.lora import LoRAConfig
from ...configs.prompt_tuning import PromptTuningConfig
from ...errors import AdapterConfigError, AdapterLoadError
from ...files.jsonfile import read_json
from ...files.weights import load_weights
from . import common, head
from .ia3 import read_ia3, write_ia3
from .lora import read_lora, write_lora
from .prompt import read_prompt, write_prompt

if TYPE_CHECKING:
    from torch import nn

    from ...core.state import AdapterState

_READERS = {"LORA": read_lora, "IA3": read_ia3, "PROMPT_TUNING": read_prompt}
_NO_EQUIVALENT = {
    "PREFIX_TUNING": (
        "PEFT passes its prefix to the model as past key values, so the model numbers the input's positions after "
        "the prefix; this library's prefix tuning (the reference's) keeps the input's own positions, which gives "
        "other outputs on every model with position embeddings or rotary positions"
    ),
}


@dataclasses.dataclass
class PeftAdapter:
    """A PEFT folder read as this library's saved config dict, adapter tensors and head tensors."""

    saved: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]


def is_peft_folder(folder: Path) -> bool:
    """Whether ``folder``'s ``adapter_config.json`` is PEFT's (it names a ``peft_type``)."""
    path = folder / common.PEFT_CONFIG
    if not path.is_file():
        return False
    data = read_json(path, "adapter config")
    return isinstance(data, dict) and "peft_type" in data and "config" not in data


def read_peft_adapter(state: AdapterState, folder: Path, use_safetensors: bool | None = None) -> PeftAdapter:
    """Read a PEFT folder as the config and tensors ``save_adapter`` would have written (nothing is changed)."""
    data = read_json(folder / common.PEFT_CONFIG, "adapter config")
    peft_type = data.get("peft_type")
    reader = _READERS.get(peft_type)
    if reader is None:
        why = _NO_EQUIVALENT.get(peft_type, f"of PEFT's formats this library reads {', '.join(_READERS)}")
        raise AdapterLoadError(f"{folder} holds a PEFT {peft_type} adapter, which has no equivalent here: {why}.")
    raw = load_weights(
        folder, common.PEFT_WEIGHTS, common.PEFT_WEIGHTS_LEGACY, use_safetensors, config_name=common.PEFT_CONFIG
    )
    tuner, head_tensors = head.split_modules_to_save(data, raw)
    config, tensors = reader(state, folder, data, tuner, folder.name)
    return PeftAdapter(common.saved_config(state, folder.name, config), tensors, head_tensors)


def save_peft_adapter(
    model: nn.Module, state: AdapterState, directory: str | os.PathLike, name: str, with_head: bool = True
) -> None:
    """Write adapter ``name`` as a PEFT folder (``PeftModel.from_pretrained`` and vLLM read it)."""
    config = state.require(name)
    if isinstance(config, PromptTuningConfig):
        weights, peft_config = write_prompt(state, name, config)
    elif isinstance(config, LoRAConfig) and not (config.use_gating or config.is_vera):
        writer = write_ia3 if config.composition_mode == "scale" else write_lora
        weights, peft_config = writer(state, name, config)
    else:
        raise AdapterConfigError(
            f"Adapter {name!r} ({type(config).__name__}) cannot be written in PEFT's format: LoRA, DoRA, (IA)^3 and "
            "prompt tuning map to PEFT's methods without loss (VeRA, gating and other methods do not); save it with "
            "format='adapters'."
        )
    if with_head:
        head_tensors, modules = head.head_weights(model, state)
        if head_tensors:
            weights.update(head_tensors)
            peft_config["modules_to_save"] = modules
    common.write_folder(directory, weights, peft_config)
