"""Decoder model types the reference library has no models for: the conformance suite, and where each
layout's bottleneck adapters act, checked by hand on layer 0.

The hand computation follows the docstring of ``test_decoder_placement_math``: a sequential
bottleneck makes a pre-norm block output ``bn(h, x) = x + h + up(relu(down(x + h)))`` with ``h``
what the sub-layer adds to the residual stream ``x``; here ``h`` and the FFN's contribution are
computed from each layout's own modules.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import transformers
from torch import nn

import adapters
from adapters import SeqBnConfig
from adapters.plugins import get_registry
from adapters.testing import ModelConformanceSuite, assert_close, randomize_adapter

GQA = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=37,
    vocab_size=100,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
# Four experts, two routed per token. Expert widths are multiples of four floats: transformers' grouped
# expert matmul (torch._grouped_mm) wants strides of 16 bytes.
MOE = dict(
    GQA, intermediate_size=36, num_local_experts=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=20
)


def _model(class_name: str, config_name: str, **options) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        config = getattr(transformers, config_name)(**options)
        return getattr(transformers, class_name)(config)

    return build


# model type -> a tiny random base model. Options make each checkpoint's distinctive path run.
MODELS: dict[str, Callable[[], nn.Module]] = {
    "arcee": _model("ArceeModel", "ArceeConfig", **GQA),
    "ernie4_5": _model("Ernie4_5Model", "Ernie4_5Config", **GQA),
    "gemma": _model("GemmaModel", "GemmaConfig", **GQA),
    # Granite 3's multipliers (published values), so the scaled residual and embeddings are exercised.
    "granite": _model(
        "GraniteModel",
        "GraniteConfig",
        **GQA,
        residual_multiplier=0.22,
        embedding_multiplier=12.0,
        attention_multiplier=0.0078125,
    ),
    "helium": _model("HeliumModel", "HeliumConfig", **GQA),
    "hunyuan_v1_dense": _model("HunYuanDenseV1Model", "HunYuanDenseV1Config", **GQA),
    "ministral": _model("MinistralModel", "MinistralConfig", **GQA, sliding_window=4),
    "olmo": _model("OlmoModel", "OlmoConfig", **GQA),
    "seed_oss": _model("SeedOssModel", "SeedOssConfig", **GQA),
    # Every other layer without rotary embeddings, as in SmolLM3-3B.
    "smollm3": _model("SmolLM3Model", "SmolLM3Config", **GQA, no_rope_layer_interval=2),
    "starcoder2": _model("Starcoder2Model", "Starcoder2Config", **GQA),
    "glm": _model("GlmModel", "GlmConfig", **GQA),
    "glm4": _model("Glm4Model", "Glm4Config", **GQA),
    "olmo2": _model("Olmo2Model", "Olmo2Config", **GQA),
    "olmo3": _model("Olmo3Model", "Olmo3Config", **GQA, sliding_window=4),
    "exaone4": _model("Exaone4Model", "Exaone4Config", **GQA, sliding_window=4),
    # Phi-3-mini's layout: as many key/value heads as query heads.
    "phi3": _model("Phi3Model", "Phi3Config", **{**GQA, "num_key_value_heads": 4}),
    "mixtral": _model("MixtralModel", "MixtralConfig", **MOE),
    "olmoe": _model("OlmoeModel", "OlmoeConfig", **MOE),
    "qwen3_moe": _model("Qwen3MoeModel", "Qwen3MoeConfig", **MOE),
    "qwen2_moe": _model("Qwen2MoeModel", "Qwen2MoeConfig", **MOE, shared_expert_intermediate_size=24),
    "cohere": _model("CohereModel", "CohereConfig", **GQA),
    "cohere2": _model("Cohere2Model", "Cohere2Config", **GQA, sliding_window=4),
    "stablelm": _model("StableLmModel", "StableLmConfig", **GQA, partial_rotary_factor=0.5),
    "gpt_neox": _model(
        "GPTNeoXModel",
        "GPTNeoXConfig",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        vocab_size=100,
        max_position_embeddings=64,
        rotary_pct=0.5,
    ),
}
# The experts hold stacked 3-D weights, not linear layers: LoRA configs that adapt the FFN are refused.
FFN_LORA_CASES = ("lora-lora_all_linears", "lora-ia3", "lora-dora", "lora-vera")
REFUSED = {model_type: FFN_LORA_CASES for model_type in ("mixtral", "olmoe", "qwen2_moe", "qwen3_moe")}


class TestMoreDecoders(ModelConformanceSuite):
    model_factories = MODELS
    refused = REFUSED


def test_every_declared_decoder_type_runs_the_conformance_suite():
    from test_decoder_conformance import TestDecoderModels
    from test_phi_conformance import TestPhi

    declared = {t for t, spec in get_registry().model_specs.items() if _ours(spec)}
    tested = set(TestDecoderModels.model_factories) | set(TestPhi.model_factories) | set(MODELS)
    assert declared <= tested, f"declared without a conformance test: {sorted(declared - tested)}"


def _ours(spec) -> bool:
    from adapters_gpt2.specs import SPECS

    return any(spec is ours for ours in SPECS)


# -- where the bottleneck acts ---------------------------------------------------------------------

PLACES = {
    "attention": SeqBnConfig(mh_adapter=True, output_adapter=False, reduction_factor=4),
    "ffn": SeqBnConfig(reduction_factor=4),
    "both": SeqBnConfig(mh_adapter=True, output_adapter=True, reduction_factor=4),
}
POST_SUBLAYER_NORM = ("olmo2", "olmo3", "exaone4")
PARALLEL = ("cohere", "cohere2", "gpt_neox")


def _attention_h(model_type: str, layer: nn.Module) -> nn.Module:
    """The module whose output is what the attention block adds to the residual stream."""
    if model_type in POST_SUBLAYER_NORM:
        return layer.post_attention_layernorm
    if model_type == "glm4":
        return layer.post_self_attn_layernorm
    if model_type == "phi3":
        return layer.resid_attn_dropout
    if model_type == "gpt_neox":
        return layer.post_attention_dropout
    return layer.self_attn


def _ffn(model_type: str, layer: nn.Module, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The FFN's contribution, given the layer input x and the stream after attention a."""
    if model_type in POST_SUBLAYER_NORM:
        return layer.post_feedforward_layernorm(layer.mlp(a))
    if model_type == "glm4":
        return layer.post_mlp_layernorm(layer.mlp(layer.post_attention_layernorm(a)))
    if model_type in ("cohere", "cohere2"):  # parallel: the FFN reads the same normed input as attention
        return layer.mlp(layer.input_layernorm(x))
    if model_type == "gpt_neox":  # parallel, with a norm of its own
        return layer.mlp(layer.post_attention_layernorm(x))
    return layer.mlp(layer.post_attention_layernorm(a))


def _bn(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    down, up = module.adapter_down[0], module.adapter_up
    return lambda h, x: x + h + up(torch.relu(down(x + h)))


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("model_type", sorted(MODELS))
@torch.no_grad()
def test_bottleneck_output_matches_hand_computation(model_type: str, place: str) -> None:
    torch.manual_seed(0)
    model = MODELS[model_type]().eval()
    layer = model.layers[0]
    input_ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        layer.register_forward_pre_hook(
            lambda m, args, kwargs: seen.update(x=args[0] if args else kwargs["hidden_states"]), with_kwargs=True
        ),
        _attention_h(model_type, layer).register_forward_hook(
            lambda m, args, out: seen.update(h=out[0] if isinstance(out, tuple) else out)
        ),
    ]
    model(input_ids)
    for hook in hooks:
        hook.remove()
    x, h = seen["x"], seen["h"]  # the attention block's inputs do not depend on any adapter of layer 0

    adapters.init(model)
    model.add_adapter("a", config=PLACES[place], set_active=True)
    randomize_adapter(model, "a")
    got: dict[str, torch.Tensor] = {}
    layer.register_forward_hook(lambda m, args, out: got.update(out=out[0] if isinstance(out, tuple) else out))
    model(input_ids)
    model.set_active_adapters(None)  # the hand computation below calls the layer's modules directly

    # Granite adds m * (what the sub-layer returned): the adapter's output minus x, scaled.
    m = getattr(layer, "residual_multiplier", 1.0)
    attention = _bn(layer.attention_adapters.adapters["a"])(h, x) - x if PLACES[place].mh_adapter else h
    a = x + m * attention
    f = _ffn(model_type, layer, x, a)
    ffn = _bn(layer.output_adapters.adapters["a"])(f, a) - a if PLACES[place].output_adapter else f
    expected = a + m * ffn
    assert_close(got["out"], expected)


def test_phi3_with_grouped_query_attention_takes_no_lora_on_its_fused_qkv() -> None:
    """Phi-3-medium's k and v are narrower than q: equal thirds of qkv_proj would cut across them."""
    model = _model("Phi3Model", "Phi3Config", **GQA)()
    adapters.init(model)
    with pytest.raises(adapters.AdapterConfigError, match=r"LoRA targets \['q', 'v'\].*declared: \['attn_out'"):
        model.add_adapter("qv", config="lora")
    model.add_adapter("ffn", config=adapters.LoRAConfig(selfattn_lora=False, intermediate_lora=True), set_active=True)
    assert {name.split(".loras.")[0] for name, _ in model.named_parameters() if ".loras." in name} == {
        "layers.0.mlp.gate_up_proj",
        "layers.1.mlp.gate_up_proj",
    }
