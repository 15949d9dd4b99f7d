"""``adapters.init(model, interface=AdapterModelInterface(...))``: the reference library's way to adapt a model type
no plugin supports (an interface given to ``init`` also replaces a plugin's spec).

StableLM, OLMo 2 and GPT-NeoX (which ``adapters-gpt2`` now declares with specs of its own) run the
whole conformance suite through a user's interface (GPT-NeoX with a fused q/k/v projection and
parallel attention and FFN, OLMo 2 with its norms after the sub-layers). That adapters trained by
the reference library through an interface give its outputs here is shown by the drop-in fixtures
(``tests/test_reference_dropin.py``: StableLM with the interface below, ModernBERT and Phi with the
reference's built-in ones).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformers import (
    GPTNeoXConfig,
    GPTNeoXModel,
    Olmo2Config,
    Olmo2Model,
    StableLmConfig,
    StableLmForCausalLM,
    StableLmModel,
)

import adapters
from adapters import AdapterConfigError, AdapterLoadError, AdapterModelInterface, UnsupportedModelError
from adapters.testing import ModelConformanceSuite, assert_close, randomize_adapter

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=100)
# A Llama-like layout: the interface the reference publishes for Qwen2 and Qwen3 fits StableLM as it is.
STABLELM = AdapterModelInterface(
    adapter_methods=["bottleneck", "lora", "reft", "invertible"],
    model_embeddings="embed_tokens",
    model_layers="layers",
    layer_self_attn="self_attn",
    layer_cross_attn=None,
    attn_k_proj="k_proj",
    attn_q_proj="q_proj",
    attn_v_proj="v_proj",
    attn_o_proj="o_proj",
    layer_intermediate_proj="mlp.up_proj",
    layer_output_proj="mlp.down_proj",
    layer_pre_self_attn="input_layernorm",
    layer_pre_ffn="post_attention_layernorm",
)
# OLMo 2 normalises each sub-layer's output before adding it (x + norm(attn(x))): the residual is
# the sub-layer's own input.
OLMO2 = dataclasses.replace(
    STABLELM, adapter_methods=["bottleneck", "lora", "reft"], layer_pre_self_attn="self_attn", layer_pre_ffn="mlp"
)
# GPT-NeoX: q/k/v in one linear, and x + attn(ln1(x)) + mlp(ln2(x)) (parallel residual).
GPT_NEOX = AdapterModelInterface(
    adapter_methods=["bottleneck", "lora", "reft", "invertible"],
    model_embeddings="embed_in",
    model_layers="layers",
    layer_self_attn="attention",
    layer_cross_attn=None,
    attn_qkv_proj="query_key_value",
    attn_o_proj="dense",
    layer_intermediate_proj="mlp.dense_h_to_4h",
    layer_output_proj="mlp.dense_4h_to_h",
    layer_pre_self_attn="input_layernorm",
    layer_pre_ffn="post_attention_layernorm",
)
# The interfaces list no prompt or prefix tuning; AdapterPlus (original_ln_after=False) is refused
# at interface placement, as in the reference; OLMo 2's lists no invertible adapters either.
REFUSED = ("prompt_tuning", "prefix_tuning", "bottleneck-adapter_plus")


def stablelm() -> StableLmModel:
    return StableLmModel(StableLmConfig(**TINY, num_key_value_heads=2, partial_rotary_factor=0.5))


class TestModelsThroughInterfaces(ModelConformanceSuite):
    model_factories = {
        "stablelm": stablelm,
        "olmo2": lambda: Olmo2Model(Olmo2Config(**TINY, num_key_value_heads=2)),
        "gpt_neox": lambda: GPTNeoXModel(GPTNeoXConfig(**TINY, rotary_pct=0.5, use_parallel_residual=True)),
    }
    interfaces = {"stablelm": STABLELM, "olmo2": OLMO2, "gpt_neox": GPT_NEOX}
    refused = {
        "stablelm": REFUSED,
        "gpt_neox": REFUSED,
        "olmo2": (*REFUSED, "bottleneck-seq_bn_inv", "bottleneck-double_seq_bn_inv_glow"),
    }


def _inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (2, 6), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _adapted(config: str = "seq_bn", interface: AdapterModelInterface = STABLELM) -> StableLmModel:
    torch.manual_seed(0)
    model = stablelm().eval()
    adapters.init(model, interface=interface)
    model.add_adapter("task", config=config)
    randomize_adapter(model, "task", std=0.3)
    model.set_active_adapters("task")
    return model


@torch.no_grad()
def test_bottleneck_replaces_the_output_projection_output_as_defined() -> None:
    """seq_bn at a hooked block: down_proj's output h becomes h + up(relu(down(h + x))), x the pre-FFN norm's input."""
    model = _adapted()
    layer = model.layers[0]
    seen = {}
    layer.post_attention_layernorm.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    layer.mlp.down_proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("h", m.weight @ args[0][..., None]))
    layer.mlp.register_forward_hook(lambda m, args, output: seen.__setitem__("out", output))
    model(**_inputs())
    adapter = layer.output_adapters.adapters["task"]
    h, x = seen["h"][..., 0], seen["x"]
    first = adapter.adapter_down[0]
    down = torch.relu(h @ first.weight.T + first.bias + x @ first.weight.T)
    expected = h + down @ adapter.adapter_up.weight.T + adapter.adapter_up.bias
    assert_close(seen["out"], expected, msg="the FFN output with the adapter")


def test_interface_needs_one_set_of_projections() -> None:
    fields = STABLELM.to_dict()
    with pytest.raises(ValueError, match="not both"):
        AdapterModelInterface(**{**fields, "attn_qkv_proj": "qkv"})
    with pytest.raises(ValueError, match="either attn_q_proj"):
        AdapterModelInterface(**{**fields, "attn_k_proj": None})
    with pytest.raises(ValueError, match="unknown methods"):
        AdapterModelInterface(**{**fields, "adapter_methods": ["bottleneck", "lorra"]})


def test_methods_the_interface_does_not_list_are_refused_with_the_reason() -> None:
    torch.manual_seed(0)
    model = stablelm()
    adapters.init(model, interface=AdapterModelInterface(**{**STABLELM.to_dict(), "adapter_methods": ["lora"]}))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for config in ("seq_bn", "loreft", "prompt_tuning", "prefix_tuning"):
        with pytest.raises(AdapterConfigError, match=r"adapter_methods|does not say how the attention"):
            model.add_adapter("x", config=config)
    model.add_adapter("l", config="lora")
    lora_only = {k: v for k, v in model.state_dict().items() if ".l." not in k}
    assert lora_only.keys() == before.keys()


def test_invertible_adapters_need_the_interface_to_list_them() -> None:
    model = stablelm()
    adapters.init(model, interface=AdapterModelInterface(**{**STABLELM.to_dict(), "adapter_methods": ["bottleneck"]}))
    model.add_adapter("plain", config="seq_bn")
    with pytest.raises(AdapterConfigError, match=r"invertible adapters are not available.*adapter_methods"):
        model.add_adapter("inv", config="seq_bn_inv")


def test_original_ln_after_false_is_refused_at_interface_placement() -> None:
    model = stablelm()
    adapters.init(model, interface=STABLELM)
    with pytest.raises(AdapterConfigError, match="original_ln_after=False"):
        model.add_adapter("x", config=adapters.SeqBnConfig(original_ln_after=False))
    assert "x" not in model.adapters_state.configs


def test_a_parallel_adapter_needs_the_residual_the_interface_names() -> None:
    model = stablelm()
    adapters.init(model, interface=dataclasses.replace(STABLELM, layer_pre_ffn=None))
    with pytest.raises(AdapterConfigError, match="parallel adapter, which reads the residual input"):
        model.add_adapter("par", config="par_bn")
    assert not model.adapters_state.configs
    model.add_adapter("seq", config="seq_bn")  # a sequential one reads the FFN's output alone


def test_cross_attention_and_wrong_paths_are_refused_before_the_model_changes() -> None:
    model = stablelm()
    with pytest.raises(UnsupportedModelError, match="layer_cross_attn"):
        adapters.init(model, interface=AdapterModelInterface(**{**STABLELM.to_dict(), "layer_cross_attn": "cross"}))
    with pytest.raises(UnsupportedModelError, match="o_projj"):
        adapters.init(model, interface=AdapterModelInterface(**{**STABLELM.to_dict(), "attn_o_proj": "o_projj"}))
    assert not hasattr(model, "adapters_state")


def test_the_interface_is_saved_beside_adapters_in_the_reference_format(tmp_path) -> None:
    model = _adapted()
    model.save_adapter(tmp_path / "task", "task")
    saved = json.loads((tmp_path / "task" / "adapter_interface.json").read_text())
    assert saved["interface"] == STABLELM.to_dict()
    assert saved["model_type"] == "stablelm"
    assert saved["version"].startswith("adapters.")
    assert AdapterModelInterface.load(tmp_path / "task") == STABLELM


def test_a_saved_checkpoint_finds_its_interface_again(tmp_path) -> None:
    """save_pretrained writes adapter_interface.json; adapters.init of the reloaded model uses it."""
    torch.manual_seed(0)
    model = StableLmForCausalLM(StableLmConfig(**TINY, num_key_value_heads=2)).eval()
    adapters.init(model, interface=STABLELM)
    model.add_adapter("task", config="lora")
    randomize_adapter(model, "task")
    model.set_active_adapters("task")
    with torch.no_grad():
        expected = model(**_inputs()).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_interface.json").is_file()

    reloaded = StableLmForCausalLM.from_pretrained(tmp_path).eval()
    adapters.init(reloaded)
    reloaded.load_adapter(tmp_path / "adapters" / "task", set_active=True)
    with torch.no_grad():
        assert torch.equal(reloaded(**_inputs()).logits, expected)


def test_an_adapter_saved_through_another_interface_is_refused(tmp_path) -> None:
    model = _adapted()
    model.save_adapter(tmp_path / "task", "task")
    other = stablelm()
    moved = AdapterModelInterface(**{**STABLELM.to_dict(), "layer_pre_ffn": None})
    adapters.init(other, interface=moved)
    with pytest.raises(AdapterLoadError, match="layer_pre_ffn='post_attention_layernorm' there"):
        other.load_adapter(tmp_path / "task")
    assert not other.adapters_state.configs


def test_a_broken_interface_file_names_the_format(tmp_path) -> None:
    (tmp_path / "adapter_interface.json").write_text(json.dumps({"interface": {"model_layers": "layers"}}))
    with pytest.raises(AdapterLoadError, match="not an AdapterModelInterface file"):
        AdapterModelInterface.load(tmp_path)
