"""PEFT's prompt tuning as this library's, and back, on models that take the prompt as tokens.

PEFT prepends ``prompt_embeddings`` (num_virtual_tokens x hidden) to the word embeddings and
passes ``inputs_embeds``, so the model numbers the prompt's positions like tokens'. This
library does the same on the models whose plugin declares ``prompt_token_slots`` (the decoders:
placeholder tokens whose embeddings are the prompt), so there a PEFT prompt maps both ways
exactly (``PromptTuningConfig(prompt_length=n, combine="prefix")``). Elsewhere (BERT, ViT, T5)
the prompt is inserted after the embeddings module, after position embeddings and its norm (as
the reference does): a different function of the same vectors, refused here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...configs.prompt_tuning import PromptTuningConfig
from ...errors import AdapterConfigError, AdapterLoadError
from ...methods.prompt_tuning.method import HOLDER
from . import common

if TYPE_CHECKING:
    from ...core.state import AdapterState

_KEY = "prompt_embeddings"


def _why_not(state: AdapterState) -> str | None:
    if state.spec.prompt_token_slots:
        return None
    return (
        f"on {state.base_model.config.model_type} models this library inserts the prompt after the embeddings "
        "module (after position embeddings and their norm, as the reference does), where PEFT prepends it to the "
        "word embeddings; the two give different outputs"
    )


def read_prompt(
    state: AdapterState, folder: Path, data: dict[str, Any], raw: dict[str, torch.Tensor], name: str
) -> tuple[PromptTuningConfig, dict[str, torch.Tensor]]:
    """A PEFT prompt-tuning file's config and tensor as this library's."""
    if data.get("num_transformer_submodules", 1) != 1:
        raise AdapterLoadError(
            f"{folder}: PEFT's num_transformer_submodules={data['num_transformer_submodules']} gives an "
            "encoder-decoder a prompt on both sides; this library's prompt tuning prompts the encoder only."
        )
    why = _why_not(state)
    if why is not None:
        raise AdapterLoadError(f"{folder}: PEFT's PROMPT_TUNING has no equivalent here: {why}.")
    if set(raw) != {_KEY}:
        raise AdapterLoadError(f"{folder}: a PEFT prompt-tuning file holds one tensor, {_KEY!r}; found {sorted(raw)}.")
    prompt = raw[_KEY]
    config = PromptTuningConfig(prompt_length=int(prompt.shape[0]), combine="prefix")
    return config, {f"{state.base_prefix}{HOLDER}.prompt_tunings.{name}.prompt_embedding.weight": prompt}


def write_prompt(
    state: AdapterState, name: str, config: PromptTuningConfig
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Prompt-tuning adapter ``name`` as PEFT's weights and config."""
    problem = _why_not(state)
    if problem is None and config.combine != "prefix":
        problem = f"combine={config.combine!r} puts the prompt after the first token; PEFT's goes before it"
    task = common.task_type(state.model)
    if problem is None and task not in ("CAUSAL_LM", "FEATURE_EXTRACTION"):
        problem = f"PEFT's {task} models pool or label the prompted sequence in their own way (not checked here)"
    if problem is not None:
        raise AdapterConfigError(f"Prompt tuning {name!r} cannot be written in PEFT's format: {problem}.")
    holder = state.base_model.get_submodule(HOLDER)
    prompt = holder.prompt_tunings[name].prompt_embedding.weight.detach().contiguous()
    model_config = state.base_model.config
    peft_config = {
        **common.common_fields(state),
        "peft_type": "PROMPT_TUNING",
        "num_virtual_tokens": config.prompt_length,
        "token_dim": int(prompt.shape[1]),
        "num_transformer_submodules": 1,
        "num_attention_heads": getattr(model_config, "num_attention_heads", None),
        "num_layers": getattr(model_config, "num_hidden_layers", None),
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
    }
    return {_KEY: prompt}, peft_config
