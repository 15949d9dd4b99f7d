"""``CLIPAdapterModel``: the dual CLIP model under AutoAdapterModel, adapters under ``clip.``, custom heads only."""

from __future__ import annotations

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPModel
from transformers.modeling_outputs import SequenceClassifierOutput

import adapters
from adapters import AutoAdapterModel
from adapters.errors import AdapterConfigError
from adapters.heads import PredictionHead
from adapters.testing import assert_close, randomize_adapter

LAYER = dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
TEXT = dict(hidden_size=32, vocab_size=100, max_position_embeddings=16, bos_token_id=0, eos_token_id=2, pad_token_id=1)
VISION = dict(hidden_size=64, image_size=16, patch_size=4)


def config() -> CLIPConfig:
    return CLIPConfig(text_config={**TEXT, **LAYER}, vision_config={**VISION, **LAYER}, projection_dim=16)


def inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(3, 100, (2, 6), generator=generator),
        "pixel_values": torch.randn(3, 3, 16, 16, generator=generator),
    }


class ImageTextScore(PredictionHead):
    """A custom head: a learned scale on CLIP's image-text similarities."""

    def __init__(self, model, head_name, **kwargs):
        super().__init__(head_name)
        self.config = {"head_type": "image_text_score"}
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        return SequenceClassifierOutput(logits=outputs.logits_per_image * self.scale)


@pytest.fixture(autouse=True)
def _quiet_transformers():
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity_warning()


def test_clip_adapter_model_is_clip_model_with_adapters(tmp_path):
    torch.manual_seed(0)
    plain = CLIPModel(config()).eval()
    expected = plain(**inputs()).logits_per_image
    plain.save_pretrained(tmp_path / "clip")
    model = AutoAdapterModel.from_pretrained(tmp_path / "clip").eval()
    assert type(model) is adapters.CLIPAdapterModel and model.head_types == ()
    # No head, no adapter: CLIPModel's own forward on the same weights.
    torch.testing.assert_close(model(**inputs()).logits_per_image, expected, rtol=0, atol=0)

    model.add_adapter("a", config="seq_bn|lora", set_active=True)
    randomize_adapter(model, "a")
    adapted = model(**inputs()).logits_per_image
    assert not torch.allclose(adapted, expected)
    model.save_adapter(tmp_path / "a", "a")
    keys = load_file(tmp_path / "a" / "adapter.safetensors")
    assert all(k.startswith("clip.") for k in keys)
    assert {k.split(".")[1] for k in keys} == {"text_model", "vision_model"}

    # The same adapter file on a plain CLIPModel (its keys without the prefix) gives the same outputs.
    adapters.init(plain)
    plain.load_adapter(tmp_path / "a", set_active=True)
    assert_close(plain(**inputs()).logits_per_image, adapted)


def test_clip_takes_custom_heads_only():
    torch.manual_seed(0)
    model = AutoAdapterModel.from_config(config()).eval()
    with pytest.raises(AdapterConfigError, match="does not support 'classification'"):
        model.add_classification_head("c")
    model.register_custom_head("image_text_score", ImageTextScore)
    model.add_custom_head("image_text_score", "score")
    out = model(**inputs())
    # The same body pass, and doubling is exact.
    assert torch.equal(out.logits, model(**inputs(), head=[]).logits_per_image * 2.0)
