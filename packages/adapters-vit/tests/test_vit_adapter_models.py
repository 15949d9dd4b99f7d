"""ViT, BEiT and DINOv2 AdapterModel classes: image classification heads, static checkpoints, head files."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import (
    BeitConfig,
    BeitForImageClassification,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

import adapters
from adapters import AutoAdapterModel, Parallel
from adapters.errors import AdapterConfigError
from adapters.heads import MultiHeadOutput
from adapters.testing import assert_close, randomize_adapter

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=16, patch_size=4
)
CONFIGS = {
    "vit": lambda **kw: ViTConfig(**TINY, **kw),
    "beit": lambda **kw: BeitConfig(layer_scale_init_value=0.1, **TINY, **kw),
    "dinov2": lambda **kw: Dinov2Config(layerscale_value=0.5, **TINY, **kw),
    "dinov2_with_registers": lambda **kw: Dinov2WithRegistersConfig(num_register_tokens=2, **TINY, **kw),
}


@pytest.fixture(autouse=True)
def _quiet_transformers():
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity_warning()


def pixels(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def tiny(model_type: str, **config):
    torch.manual_seed(0)
    return AutoAdapterModel.from_config(CONFIGS[model_type](**config)).eval()


def representation(model, states: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """What each family's image classifier reads, computed by hand."""
    if model.config.model_type == "beit":
        return pooled
    if model.config.model_type.startswith("dinov2"):
        patches = states[:, 1 + getattr(model.config, "num_register_tokens", 0) :]
        return torch.cat([states[:, 0], patches.mean(1)], dim=-1)
    return states[:, 0]


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_image_classification_head(model_type, tmp_path):
    model = tiny(model_type)
    assert getattr(adapters, type(model).__name__) is type(model)
    model.add_adapter("a", config="lora", set_active=True)
    randomize_adapter(model, "a")
    model.add_image_classification_head("a", num_labels=3)
    labels = torch.tensor([0, 2])
    out = model(pixel_values=pixels(), labels=labels)
    body = model.base_model(pixel_values=pixels())
    features = representation(model, body.last_hidden_state, body.pooler_output)
    head = model.heads["a"]
    assert head[1].in_features == features.shape[-1]
    assert_close(out.logits, head[1](features))  # dropout, linear (eval)
    assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    with pytest.raises(AdapterConfigError, match="classification"):
        model.add_classification_head("text")

    # The head travels with its adapter, in the reference format.
    model.save_adapter(tmp_path, "a")
    data = json.loads((tmp_path / "head_config.json").read_text())
    assert data["model_class"] == type(model).__name__ and data["config"]["head_type"] == "image_classification"
    assert set(load_file(tmp_path / "model_head.safetensors")) == {"heads.a.1.weight", "heads.a.1.bias"}
    prefix = f"{model.base_model_prefix}."
    assert all(k.startswith(prefix) for k in load_file(tmp_path / "adapter.safetensors"))
    other = tiny(model_type)
    other.load_adapter(tmp_path, set_active=True)
    assert other.active_head == "a"
    # The same model with the very weights (saved, loaded back) on the same inputs: the same computation.
    assert torch.equal(other(pixel_values=pixels()).logits, out.logits)


def test_multilabel_image_head():
    model = tiny("vit")
    model.add_image_classification_head("m", num_labels=4, multilabel=True)
    targets = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]])
    out = model(pixel_values=pixels(), labels=targets)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, targets.float())
    assert_close(out.loss, expected)


STATIC_CASES = [
    ("vit", ViTForImageClassification, {}),
    ("beit", BeitForImageClassification, {}),  # mean-pooled patches, layer-normed
    ("beit", BeitForImageClassification, {"use_mean_pooling": False}),  # [CLS]
    ("dinov2", Dinov2ForImageClassification, {}),
    ("dinov2_with_registers", Dinov2WithRegistersForImageClassification, {}),
]


@pytest.mark.parametrize(
    ("model_type", "static_class", "options"), STATIC_CASES, ids=[f"{c[1].__name__}{c[2] or ''}" for c in STATIC_CASES]
)
def test_static_checkpoint_converts_with_identical_logits(tmp_path, model_type, static_class, options):
    torch.manual_seed(0)
    static = static_class(CONFIGS[model_type](num_labels=3, **options)).eval()
    expected = static(pixel_values=pixels()).logits
    static.save_pretrained(tmp_path / "static")
    model = AutoAdapterModel.from_pretrained(tmp_path / "static").eval()
    assert model.active_head == "default" and model.get_labels() == ["LABEL_0", "LABEL_1", "LABEL_2"]
    # The flexible head is another computation of the static classifier's logits: equal up to rounding.
    assert_close(model(pixel_values=pixels()).logits, expected)
    model.save_pretrained(tmp_path / "flex")
    again = AutoAdapterModel.from_pretrained(tmp_path / "flex").eval()
    assert_close(again(pixel_values=pixels()).logits, expected)


def test_parallel_gives_one_output_per_head():
    model = tiny("vit")
    for name, labels in (("a", 2), ("b", 3)):
        model.add_adapter(name, config="seq_bn")
        model.add_image_classification_head(name, num_labels=labels)
        randomize_adapter(model, name, seed=labels)
    single = {}
    for name in "ab":
        model.set_active_adapters(name)
        single[name] = model(pixel_values=pixels()).logits
    model.set_active_adapters(Parallel("a", "b"))
    out = model(pixel_values=pixels())
    assert isinstance(out, MultiHeadOutput) and len(out) == 2
    assert_close(out[0].logits, single["a"])
    assert_close(out[1].logits, single["b"])
