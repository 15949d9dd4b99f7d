"""Run the core's conformance suite over CLIP's and SigLIP's text towers, vision towers and dual models."""

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
    SiglipConfig,
    SiglipModel,
    SiglipTextConfig,
    SiglipTextModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from adapters.testing import ModelConformanceSuite
from adapters_clip.specs import SPECS

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


def siglip_text_config(**options) -> SiglipTextConfig:
    return SiglipTextConfig(**{**TEXT, **LAYER, **options})


def siglip_vision_config() -> SiglipVisionConfig:
    # With the attention-pooling head of the published checkpoints (vision_use_head).
    return SiglipVisionConfig(vision_use_head=True, **VISION, **LAYER)


class TestSigLIP(TestCLIP):
    model_factories = {
        "siglip_text_model": lambda: SiglipTextModel(siglip_text_config()),
        "siglip_vision_model": lambda: SiglipVisionModel(siglip_vision_config()),
        # Both towers 64 wide, as in the published checkpoints (base: 768 and 768).
        "siglip": lambda: SiglipModel(
            SiglipConfig(
                text_config=siglip_text_config(hidden_size=VISION["hidden_size"]).to_dict(),
                vision_config=siglip_vision_config().to_dict(),
            )
        ),
        # Towers of different widths: SigLIP has no projections, so the text head maps the text
        # width (32) to the vision width (64).
        "siglip-unequal-widths": lambda: SiglipModel(
            SiglipConfig(
                text_config=siglip_text_config(projection_size=VISION["hidden_size"]).to_dict(),
                vision_config=siglip_vision_config().to_dict(),
            )
        ),
    }
    # The towers prompt-tune (their text pooling reads the last position, see adapters_clip.specs);
    # the dual model refuses prompt tuning (one hidden size for the prompt), and the core refuses one
    # prefix-tuning pool over layers of different attention shapes.
    refused = {
        "siglip": {"prompt_tuning"},
        "siglip-unequal-widths": {"prompt_tuning", "prefix_tuning"},
    }

    def make_inputs(self, model_type: str, model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
        dual = model_type.startswith("siglip") and not model_type.endswith("_model")
        return super().make_inputs("clip" if dual else model_type, model, generator)


def test_every_declared_model_type_has_a_conformance_model() -> None:
    # A model type added to a spec without a tiny model here would ship without proof.
    declared = {model_type for spec in SPECS for model_type in spec.model_types}
    proven = {model_type for suite in (TestCLIP, TestSigLIP) for model_type in suite.model_factories}
    assert declared <= proven, f"declared without a conformance model: {sorted(declared - proven)}"
