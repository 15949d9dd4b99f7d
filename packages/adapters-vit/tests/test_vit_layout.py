"""Where adapters sit in ViT, BEiT, DINOv2 and Data2Vec-Vision, and the weight-key names they are saved under."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import (
    Data2VecVisionConfig,
    Data2VecVisionModel,
    Dinov2Config,
    Dinov2Model,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

import adapters
from adapters.testing import assert_close, randomize_adapter

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=16, patch_size=4
)


def pixels(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def saved_keys(model: torch.nn.Module, name: str) -> set[str]:
    with tempfile.TemporaryDirectory() as folder:
        model.save_adapter(folder, name)
        return set(load_file(Path(folder) / "adapter.safetensors"))


def test_vit_weight_keys_use_the_reference_names() -> None:
    torch.manual_seed(0)
    model = ViTModel(ViTConfig(**TINY))
    adapters.init(model)
    model.add_adapter("a", config="double_seq_bn")
    model.add_adapter("b", config="lora[intermediate_lora=True,output_lora=True]")
    assert {k.rsplit(".adapters.", 1)[0] for k in saved_keys(model, "a")} == {
        f"encoder.layer.{i}.{holder}" for i in (0, 1) for holder in ("attention_adapters", "output.output_adapters")
    }
    assert {k.split(".loras.")[0] for k in saved_keys(model, "b")} == {
        f"encoder.layer.{i}.{path}"
        for i in (0, 1)
        for path in ("attention.attention.query", "attention.attention.value", "intermediate.dense", "output.dense")
    }


def test_vit_adapter_moves_between_base_and_head_model() -> None:
    torch.manual_seed(0)
    head = ViTForImageClassification(ViTConfig(num_labels=3, **TINY)).eval()
    adapters.init(head)
    head.add_adapter("a", config="lora[intermediate_lora=True]", set_active=True)
    randomize_adapter(head, "a")
    assert all(k.startswith("vit.encoder.layer.") for k in saved_keys(head, "a"))
    base = ViTModel(head.config, add_pooling_layer=False).eval()
    base.load_state_dict(head.vit.state_dict(), strict=False)
    adapters.init(base)
    with tempfile.TemporaryDirectory() as folder:
        head.save_adapter(folder, "a")
        base.load_adapter(folder, set_active=True)
    with torch.no_grad():
        assert_close(base(pixels()).last_hidden_state, head.vit(pixels()).last_hidden_state)


def test_dinov2_bottleneck_acts_after_layer_scale() -> None:
    # One layer; seq_bn on the FFN block: a = x + ls1(attn(norm1(x))), h = ls2(mlp(norm2(a))),
    # and the block's output is h + a + up(relu(down(h + a))) (Pfeiffer: residual h, then + a).
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(layerscale_value=0.5, **{**TINY, "num_hidden_layers": 1})).eval()
    adapters.init(model)
    model.add_adapter("a", config="seq_bn", set_active=True)
    randomize_adapter(model, "a")
    layer = model.encoder.layer[0]
    bottleneck = layer.output_adapters.adapters["a"]
    with torch.no_grad():
        x = model.embeddings(pixels())
        a = x + layer.layer_scale1(layer.attention(layer.norm1(x))[0])
        h = layer.layer_scale2(layer.mlp(layer.norm2(a)))
        down = bottleneck.adapter_down[0]
        up = bottleneck.adapter_up
        expected = model.layernorm(h + a + up(torch.relu(down(h + a))))
        assert_close(model(pixels()).last_hidden_state, expected)


def test_dinov2_swiglu_lora_targets_up_and_down_projections() -> None:
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(use_swiglu_ffn=True, **TINY))
    adapters.init(model)
    model.add_adapter("a", config="lora[intermediate_lora=True,output_lora=True]")
    paths = {k.split(".loras.")[0] for k in saved_keys(model, "a")}
    assert {"encoder.layer.0.mlp.up_proj", "encoder.layer.0.mlp.down_proj"} <= paths
    # The plain DINOv2 spec is left as it is for other models.
    plain = Dinov2Model(Dinov2Config(**TINY))
    adapters.init(plain)
    assert plain.adapters_state.spec.linears["ffn_in"] == "mlp.fc1"


def test_data2vec_vision_bottleneck_acts_after_layer_scale() -> None:
    # BEiT's 4.x layout, kept by Data2Vec-Vision in transformers 5.24: a = x + lambda_1 * attn(ln(x)),
    # h = lambda_2 * output(intermediate(ln(a))), then h + a + up(relu(down(h + a))) (Pfeiffer).
    torch.manual_seed(0)
    config = Data2VecVisionConfig(layer_scale_init_value=0.5, **{**TINY, "num_hidden_layers": 1})
    model = Data2VecVisionModel(config).eval()
    adapters.init(model)
    model.add_adapter("a", config="seq_bn", set_active=True)
    randomize_adapter(model, "a")
    layer = model.encoder.layer[0]
    bottleneck = layer.output_adapters.adapters["a"]
    with torch.no_grad():
        x = model.embeddings(pixels())[0]
        a = x + layer.lambda_1 * layer.attention(layer.layernorm_before(x), resolution=(16, 16))[0]
        h = layer.lambda_2 * layer.output(layer.intermediate(layer.layernorm_after(a)))
        down = bottleneck.adapter_down[0]
        up = bottleneck.adapter_up
        expected = model.layernorm(h + a + up(torch.relu(down(h + a))))
        assert_close(model(pixels()).last_hidden_state, expected)
