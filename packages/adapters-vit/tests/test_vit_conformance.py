"""Run the core's conformance suite over ViT, BEiT, DINOv2 and their copies (pixel inputs)."""

from __future__ import annotations

from transformers import (
    BeitConfig,
    BeitModel,
    Data2VecVisionConfig,
    Data2VecVisionModel,
    DeiTConfig,
    DeiTModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    ViTConfig,
    ViTModel,
    ViTMSNConfig,
    ViTMSNModel,
)

from adapters.testing import ModelConformanceSuite
from adapters_vit.specs import SPECS

# 16x16 images in 4x4 patches: 16 patch tokens plus [CLS].
TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=16, patch_size=4
)


class TestViTFamily(ModelConformanceSuite):
    # The keys label the cases; the suite builds pixel_values since main_input_name says so.
    model_factories = {
        "vit": lambda: ViTModel(ViTConfig(**TINY)),
        # LayerScale on and drop path on (drop_path_rate 0.1 reaches the second layer), relative
        # position bias per layer: the BEiT of the published checkpoints.
        "beit": lambda: BeitModel(
            BeitConfig(layer_scale_init_value=0.1, drop_path_rate=0.1, use_relative_position_bias=True, **TINY)
        ),
        "dinov2": lambda: Dinov2Model(Dinov2Config(layerscale_value=0.5, **TINY)),
        "dinov2-swiglu": lambda: Dinov2Model(Dinov2Config(layerscale_value=0.5, use_swiglu_ffn=True, **TINY)),
        "dinov2_with_registers": lambda: Dinov2WithRegistersModel(
            Dinov2WithRegistersConfig(layerscale_value=0.5, num_register_tokens=2, **TINY)
        ),
        "deit": lambda: DeiTModel(DeiTConfig(**TINY)),
        "vit_msn": lambda: ViTMSNModel(ViTMSNConfig(**TINY)),
        # As BEiT above: LayerScale, drop path and a relative position bias per layer, mean pooling.
        "data2vec-vision": lambda: Data2VecVisionModel(
            Data2VecVisionConfig(
                layer_scale_init_value=0.1, drop_path_rate=0.1, use_relative_position_bias=True, **TINY
            )
        ),
        # Absolute position embeddings only: prompt tuning works here.
        "data2vec-vision-absolute": lambda: Data2VecVisionModel(
            Data2VecVisionConfig(
                layer_scale_init_value=0.1,
                use_relative_position_bias=False,
                use_absolute_position_embeddings=True,
                **TINY,
            )
        ),
    }
    # BEiT and Data2Vec-Vision with relative position bias refuse prompt tuning; Data2Vec-Vision
    # refuses prefix tuning (see adapters_vit.specs).
    refused = {
        "beit": {"prompt_tuning"},
        "data2vec-vision": {"prompt_tuning", "prefix_tuning"},
        "data2vec-vision-absolute": {"prefix_tuning"},
    }


def test_every_declared_model_type_has_a_conformance_model() -> None:
    # A model type added to a spec without a tiny model here would ship without proof.
    declared = {model_type for spec in SPECS for model_type in spec.model_types}
    assert declared <= set(TestViTFamily.model_factories), (
        f"declared without a conformance model: {sorted(declared - set(TestViTFamily.model_factories))}"
    )
