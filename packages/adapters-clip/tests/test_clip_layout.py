"""CLIP's towers: layer numbering across the dual model, per-tower sizes and weight-key names."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    CLIPConfig,
    CLIPForImageClassification,
    CLIPModel,
    CLIPTextModel,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)

import adapters
from adapters.testing import assert_close, randomize_adapter

LAYER = dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
TEXT = dict(hidden_size=32, vocab_size=100, max_position_embeddings=16, bos_token_id=0, eos_token_id=2, pad_token_id=1)
VISION = dict(hidden_size=64, image_size=16, patch_size=4)


def dual() -> CLIPModel:
    torch.manual_seed(0)
    config = CLIPConfig(text_config={**TEXT, **LAYER}, vision_config={**VISION, **LAYER}, projection_dim=16)
    return CLIPModel(config).eval()


def saved(model: torch.nn.Module, name: str) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as folder:
        model.save_adapter(folder, name)
        config = json.loads((Path(folder) / "adapter_config.json").read_text())
        return config, load_file(Path(folder) / "adapter.safetensors")


def test_dual_model_numbers_text_then_vision_layers() -> None:
    model = dual()
    adapters.init(model)
    layers = list(model.iter_layers())
    assert [i for i, _ in layers] == [0, 1, 2, 3]
    assert [m for _, m in layers] == [*model.text_model.encoder.layers, *model.vision_model.encoder.layers]
    # leave_out counts across the towers: 0 is the first text layer, 2 the first vision layer.
    model.add_adapter("a", config="seq_bn[leave_out=[0,2]]")
    assert sorted(model.get_adapter("a")) == [1, 3]
    config, tensors = saved(model, "a")
    assert {k.split(".output_adapters.")[0] for k in tensors} == {
        "text_model.encoder.layers.1",
        "vision_model.encoder.layers.1",
    }
    # CLIPConfig has no single hidden size; the reference writes null too.
    assert config["hidden_size"] is None


def test_dual_model_sizes_each_tower_by_its_own_config() -> None:
    model = dual()
    adapters.init(model)
    model.add_adapter("a", config="double_seq_bn")
    _, tensors = saved(model, "a")
    down = {k: v.shape for k, v in tensors.items() if k.endswith("adapter_down.0.weight")}
    # reduction_factor 16: 32 // 16 = 2 units in the text tower, 64 // 16 = 4 in the vision tower.
    assert {shape for key, shape in down.items() if key.startswith("text_model.")} == {torch.Size([2, 32])}
    assert {shape for key, shape in down.items() if key.startswith("vision_model.")} == {torch.Size([4, 64])}


def test_single_tower_keys_carry_the_reference_prefix() -> None:
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPConfig(text_config={**TEXT, **LAYER}).text_config)
    adapters.init(text)
    text.add_adapter("a", config="lora")
    _, tensors = saved(text, "a")
    assert all(k.startswith("text_model.encoder.layers.") and ".self_attn." in k for k in tensors)


def test_vision_adapter_moves_between_bare_and_projection_model() -> None:
    torch.manual_seed(0)
    projection = CLIPVisionModelWithProjection(CLIPConfig(vision_config={**VISION, **LAYER}).vision_config).eval()
    bare = CLIPVisionModel(projection.config).eval()
    bare.load_state_dict(projection.vision_model.state_dict())
    for model in (projection, bare):
        adapters.init(model)
    projection.add_adapter("a", config="seq_bn", set_active=True)
    randomize_adapter(projection, "a")
    _, tensors = saved(projection, "a")
    assert all(k.startswith("vision_model.encoder.layers.") for k in tensors)
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        projection.save_adapter(folder, "a")
        bare.load_adapter(folder, set_active=True)
        _, bare_tensors = saved(bare, "a")
    assert bare_tensors.keys() == tensors.keys()
    with torch.no_grad():
        assert_close(bare(pixels).last_hidden_state, projection(pixels).last_hidden_state)


def test_outer_containers_keep_no_body_prefix() -> None:
    # The reference puts shared Compacter tensors on the outer 4.x class, outside text_model.
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPConfig(text_config={**TEXT, **LAYER}).text_config)
    adapters.init(text)
    text.add_adapter("a", config="compacter[reduction_factor=8]")
    _, tensors = saved(text, "a")
    assert "shared_parameters.a.phm_rule" in tensors
    assert all(k.startswith("text_model.encoder.layers.") for k in tensors if "shared_parameters" not in k)


def test_clip_image_classifier_is_refused_clearly() -> None:
    # model_type "clip" without the text tower: not the dual model the spec describes.
    towers = dict(text_config={**TEXT, **LAYER}, vision_config={**VISION, **LAYER})
    model = CLIPForImageClassification(CLIPConfig(**towers))
    with pytest.raises(adapters.UnsupportedModelError, match=r"text_model\.encoder\.layers"):
        adapters.init(model)
    assert not hasattr(model, "adapters_state")
