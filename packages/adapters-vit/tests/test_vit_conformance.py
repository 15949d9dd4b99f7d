"""Run the core's conformance suite over ViT, BEiT and DINOv2 (pixel inputs)."""

from __future__ import annotations

from transformers import (
    BeitConfig,
    BeitModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    ViTConfig,
    ViTModel,
)

from adapters.testing import ModelConformanceSuite

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
    }
    # BEiT with relative position bias refuses prompt tuning (see adapters_vit.specs).
    refused = {"beit": {"prompt_tuning"}}
