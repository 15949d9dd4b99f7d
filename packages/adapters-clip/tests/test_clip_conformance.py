"""Run the core's conformance suite over CLIP's text tower, vision tower and the dual model."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModel,
)

from adapters.testing import ModelConformanceSuite

LAYER = dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
# Token ids 0..2 are special here, so the inputs (ids from 3) hold no end-of-text token.
TEXT = dict(hidden_size=32, vocab_size=100, max_position_embeddings=16, bos_token_id=0, eos_token_id=2, pad_token_id=1)
# The towers of the dual model differ in width, as in the published checkpoints (512 / 768).
VISION = dict(hidden_size=64, image_size=16, patch_size=4)


def text_config() -> CLIPTextConfig:
    return CLIPTextConfig(**TEXT, **LAYER)


def vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(**VISION, **LAYER)


class TestCLIP(ModelConformanceSuite):
    model_factories = {
        "clip_text_model": lambda: CLIPTextModel(text_config()),
        "clip_vision_model": lambda: CLIPVisionModel(vision_config()),
        "clip": lambda: CLIPModel(
            CLIPConfig(text_config=text_config().to_dict(), vision_config=vision_config().to_dict(), projection_dim=16)
        ),
    }

    # As in the reference: CLIP has no prompt tuning (see adapters_clip.specs), and the dual model
    # no prefix tuning yet (one prefix place per tower).
    refused = {
        "clip_text_model": {"prompt_tuning"},
        "clip_vision_model": {"prompt_tuning"},
        "clip": {"prompt_tuning", "prefix_tuning"},
    }

    def make_inputs(self, model_type: str, model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if model_type == "clip":
            config = model.config
            return {
                **self.text_inputs(config.text_config, generator),
                **self.image_inputs(config.vision_config, generator),
            }
        return super().make_inputs(model_type, model, generator)

    def output_of(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        outputs = model(**inputs)
        if hasattr(outputs, "text_model_output"):
            # Both towers' hidden states, so that a change in either one shows; (batch, values, 1)
            # keeps the suite's (batch, positions, features) layout although the widths differ.
            towers = (outputs.text_model_output, outputs.vision_model_output)
            return torch.cat([tower.last_hidden_state.flatten(1) for tower in towers], dim=1).unsqueeze(-1)
        return outputs.last_hidden_state
