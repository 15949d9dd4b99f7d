"""PEFT's LoRA folders in and out, with PEFT itself as the oracle.

A LoRA that PEFT trained (here: random weights in PEFT's own modules) and saved loads with
``load_adapter`` and gives PeftModel's logits; an adapter of this library saved with
``format="peft"`` loads in ``PeftModel.from_pretrained`` and gives ours. The two computations differ
(PEFT's LoRA layers, our hooks), so outputs are compared with a tolerance from dtype and scale.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_bert
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

import adapters
from adapters import AdapterConfigError, AdapterLoadError, LoRAConfig
from adapters.testing import assert_close, randomize_adapter

peft = pytest.importorskip("peft")

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=37,
    vocab_size=100,
)


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY)).eval()


def _inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 100, (2, 6), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _peft_folder(tmp_path, **lora_options) -> tuple:
    """A PEFT LoRA with random A and B saved by PEFT, and its PeftModel's logits."""
    model = peft.get_peft_model(_llama(), peft.LoraConfig(r=4, lora_alpha=8, **lora_options))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if "lora_" in key:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
        logits = model(**_inputs()).logits
    folder = tmp_path / "peft_lora"
    model.save_pretrained(folder)
    return folder, logits


@pytest.mark.parametrize(
    "options",
    [
        dict(target_modules=["q_proj", "v_proj"]),
        dict(target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"], use_rslora=True),
        dict(target_modules=["v_proj", "down_proj"], layers_to_transform=[1]),
        dict(target_modules="all-linear"),
        dict(target_modules=r".*\.(q_proj|o_proj|gate_proj)"),
        dict(target_modules="all-linear", use_dora=True),
        dict(target_modules=["q_proj", "v_proj"], use_dora=True, use_rslora=True),
    ],
    ids=["q_v", "rslora_every_mapped_linear", "one_layer", "all_linear", "regex", "dora_all_linear", "dora_rslora"],
)
def test_a_peft_lora_loads_with_peft_outputs(tmp_path, options) -> None:
    folder, expected = _peft_folder(tmp_path, **options)
    model = _llama()
    adapters.init(model)
    name = model.load_adapter(folder, set_active=True)
    assert name == "peft_lora"
    with torch.no_grad():
        got = model(**_inputs()).logits
    assert_close(got, expected, msg="logits of the PEFT LoRA loaded here")
    with torch.no_grad():
        assert not torch.allclose(got, _llama()(**_inputs()).logits, atol=1e-3), "the LoRA did not act"


def test_our_lora_saved_as_peft_loads_in_peft_with_our_outputs(tmp_path) -> None:
    model = _llama()
    adapters.init(model)
    model.add_adapter("task", config=LoRAConfig(r=4, alpha=16, attn_matrices=["q", "k", "v"], output_lora=True))
    randomize_adapter(model, "task", std=0.2)
    model.set_active_adapters("task")
    with torch.no_grad():
        ours = model(**_inputs()).logits
    model.save_adapter(tmp_path / "task", "task", format="peft")
    assert sorted(p.name for p in (tmp_path / "task").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    theirs = peft.PeftModel.from_pretrained(_llama(), tmp_path / "task").eval()
    with torch.no_grad():
        assert_close(theirs(**_inputs()).logits, ours, msg="PEFT's logits of our saved LoRA")
    # And back: the PEFT folder loads here as the adapter it came from.
    again = _llama()
    adapters.init(again)
    again.load_adapter(tmp_path / "task", load_as="back", set_active=True)
    with torch.no_grad():
        assert torch.equal(again(**_inputs()).logits, ours)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(target_modules=["q_proj", "embed_tokens"]), r"embed_tokens.* is no PEFT LoRA weight"),
        (dict(target_modules=["q_proj"], bias="lora_only"), "bias='lora_only' trains biases"),
        (dict(target_modules=["q_proj"], rank_pattern={"v_proj": 2}), "rank_pattern"),
    ],
)
def test_what_cannot_be_mapped_is_refused_naming_the_field(tmp_path, options, message) -> None:
    folder, _ = _peft_folder(tmp_path, **options)
    model = _llama()
    adapters.init(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterLoadError, match=message):
        model.load_adapter(folder)
    assert model.state_dict().keys() == before.keys()
    assert not model.adapters_state.configs


def _loaded(folder, model=None):
    model = model if model is not None else _llama()
    adapters.init(model)
    model.load_adapter(folder, set_active=True)
    return model


def _randomized_peft(model, config, seed: int = 5):
    """``get_peft_model`` with every trainable tensor moved off its initial value (so it acts)."""
    peft_model = peft.get_peft_model(model, config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in peft_model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return peft_model


@pytest.mark.parametrize(
    "config",
    [
        dict(target_modules=["k_proj", "v_proj", "o_proj", "down_proj"], feedforward_modules=[]),
        dict(target_modules=r".*\.(up_proj|gate_proj)", feedforward_modules=[]),
    ],
    ids=["attention_and_down", "gated_ffn_regex"],
)
def test_a_peft_ia3_on_outputs_loads_and_saves_back(tmp_path, config) -> None:
    """PEFT's IA3 outside feedforward_modules scales outputs, as ours: both ways with equal outputs."""
    theirs = _randomized_peft(_llama(), peft.IA3Config(**config))
    with torch.no_grad():
        expected = theirs(**_inputs()).logits
    theirs.save_pretrained(tmp_path / "ia3")
    ours = _loaded(tmp_path / "ia3")
    assert ours.adapters_state.configs["ia3"].composition_mode == "scale"
    with torch.no_grad():
        got = ours(**_inputs()).logits
    assert_close(got, expected, msg="logits of PEFT's IA3 loaded here")
    ours.save_adapter(tmp_path / "back", "ia3", format="peft")
    again = peft.PeftModel.from_pretrained(_llama(), tmp_path / "back").eval()
    with torch.no_grad():
        assert_close(again(**_inputs()).logits, got, msg="PEFT's logits of our IA3 saved as PEFT")


def test_our_ia3_and_dora_saved_as_peft_give_our_outputs_in_peft(tmp_path) -> None:
    for name, config in [
        ("ia3", adapters.IA3Config(alpha=1.5, attn_matrices=["k", "v", "o"], output_lora=True)),
        ("dora", adapters.DoRAConfig(r=4, alpha=4, attn_matrices=["q", "o"], gate_lora=True, output_lora=True)),
    ]:
        model = _llama()
        adapters.init(model)
        model.add_adapter(name, config=config)
        randomize_adapter(model, name, std=0.2)
        model.set_active_adapters(name)
        with torch.no_grad():
            ours = model(**_inputs()).logits
            assert not torch.allclose(ours, _llama()(**_inputs()).logits, atol=1e-3), f"{name} did not act"
        model.save_adapter(tmp_path / name, name, format="peft")
        theirs = peft.PeftModel.from_pretrained(_llama(), tmp_path / name).eval()
        with torch.no_grad():
            assert_close(theirs(**_inputs()).logits, ours, msg=f"PEFT's logits of our {name}")


def test_dora_with_alpha_other_than_r_is_not_written(tmp_path) -> None:
    """Our DoRA (the reference's) norms W + B A unscaled, PEFT's W + s B A: equal only with s = 1."""
    model = _llama()
    adapters.init(model)
    model.add_adapter("dora", config=adapters.DoRAConfig(r=4, alpha=16))
    with pytest.raises(AdapterConfigError, match="agree only with alpha == r"):
        model.save_adapter(tmp_path / "dora", "dora", format="peft")
    assert not (tmp_path / "dora").exists()


def test_prompt_tuning_both_ways_on_a_decoder(tmp_path) -> None:
    """PEFT prepends the prompt to the word embeddings; a decoder here takes it as tokens: the same function."""
    theirs = _randomized_peft(_llama(), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    with torch.no_grad():
        expected = theirs(**_inputs()).logits
    theirs.save_pretrained(tmp_path / "prompt")
    ours = _loaded(tmp_path / "prompt")
    assert ours.adapters_state.configs["prompt"].prompt_length == 3
    with torch.no_grad():
        got = ours(**_inputs()).logits
    assert got.shape == expected.shape == (2, 3 + 6, TINY["vocab_size"])
    assert_close(got, expected, msg="logits of PEFT's prompt tuning loaded here")
    ours.save_adapter(tmp_path / "back", "prompt", format="peft")
    again = peft.PeftModel.from_pretrained(_llama(), tmp_path / "back").eval()
    with torch.no_grad():
        assert_close(again(**_inputs()).logits, got, msg="PEFT's logits of our prompt saved as PEFT")


def _llama_classifier() -> LlamaForSequenceClassification:
    torch.manual_seed(0)
    return LlamaForSequenceClassification(LlamaConfig(**TINY, num_labels=3, pad_token_id=0)).eval()


def test_modules_to_save_is_the_static_head_both_ways(tmp_path) -> None:
    """PEFT's SEQ_CLS LoRA trains the ``score`` head as modules_to_save: loaded into the model's head, and back."""
    config = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    theirs = _randomized_peft(_llama_classifier(), config)
    with torch.no_grad():
        expected = theirs(**_inputs()).logits
    theirs.save_pretrained(tmp_path / "cls")
    ours = _loaded(tmp_path / "cls", _llama_classifier())
    with torch.no_grad():
        got = ours(**_inputs()).logits
    assert_close(got, expected, msg="logits of PEFT's LoRA and score head loaded here")
    ours.save_adapter(tmp_path / "back", "cls", format="peft")
    saved = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert saved["modules_to_save"] == ["score"] and saved["task_type"] == "SEQ_CLS"
    again = peft.PeftModel.from_pretrained(_llama_classifier(), tmp_path / "back").eval()
    with torch.no_grad():
        assert_close(again(**_inputs()).logits, got, msg="PEFT's logits of our LoRA and head")
    # with_head=False keeps this model's head.
    plain = _llama_classifier()
    adapters.init(plain)
    plain.load_adapter(tmp_path / "cls", with_head=False)
    assert torch.equal(plain.score.weight, _llama_classifier().score.weight)


def test_modules_to_save_in_the_body_is_refused(tmp_path) -> None:
    theirs = peft.get_peft_model(
        _llama_classifier(),
        peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
    )
    theirs.save_pretrained(tmp_path / "body")
    model = _llama_classifier()
    adapters.init(model)
    with pytest.raises(AdapterLoadError, match=r"modules_to_save holds model\.embed_tokens\.weight, a module of the"):
        model.load_adapter(tmp_path / "body")
    assert not model.adapters_state.configs


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            peft.IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]),
            r"scales the input of model\.layers\.\d\.mlp\.down_proj .*feedforward_modules",
        ),
        (peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3), "numbers the input's positions"),
        (peft.LoHaConfig(target_modules=["q_proj"]), "PEFT LOHA adapter, which has no equivalent here"),
    ],
    ids=["ia3_feedforward", "prefix_tuning", "loha"],
)
def test_what_has_no_equivalent_is_refused_with_the_reason(tmp_path, config, message) -> None:
    peft.get_peft_model(_llama(), config).save_pretrained(tmp_path / "x")
    target = _llama()
    adapters.init(target)
    with pytest.raises(AdapterLoadError, match=message):
        target.load_adapter(tmp_path / "x")
    assert not target.adapters_state.configs


def test_biased_layers_refuse_peft_dora_and_encoders_refuse_peft_prompts(tmp_path) -> None:
    """Where the two libraries compute different functions of the same tensors, neither way maps."""
    bert = tiny_bert()
    adapters.init(bert)
    bert.add_adapter("dora", config=adapters.DoRAConfig(r=4))
    with pytest.raises(AdapterConfigError, match=r"leaves the bias of .* out of its rescaling"):
        bert.save_adapter(tmp_path / "dora", "dora", format="peft")
    peft.get_peft_model(tiny_bert(), peft.LoraConfig(r=4, target_modules=["query"], use_dora=True)).save_pretrained(
        tmp_path / "peft_dora"
    )
    with pytest.raises(AdapterLoadError, match="use_dora=True on a layer with a bias has no equivalent"):
        bert.load_adapter(tmp_path / "peft_dora")
    peft.get_peft_model(tiny_bert(), peft.LoraConfig(r=4, target_modules=["dense"])).save_pretrained(tmp_path / "pool")
    with pytest.raises(AdapterLoadError, match=r"adapts 'pooler\.dense', which is not a linear layer"):
        bert.load_adapter(tmp_path / "pool")
    bert.add_adapter("prompt", config=adapters.PromptTuningConfig(prompt_length=2))
    with pytest.raises(AdapterConfigError, match="inserts the prompt after the embeddings module"):
        bert.save_adapter(tmp_path / "prompt", "prompt", format="peft")
    assert not (tmp_path / "dora").exists() and not (tmp_path / "prompt").exists()


def test_vera_and_bottleneck_adapters_are_not_written_in_peft_format(tmp_path) -> None:
    model = _llama()
    adapters.init(model)
    model.add_adapter("vera", config=adapters.VeraConfig(r=4))
    with pytest.raises(AdapterConfigError, match="cannot be written in PEFT's format"):
        model.save_adapter(tmp_path / "vera", "vera", format="peft")
    assert not (tmp_path / "vera").exists()
    model.add_adapter("bn", config="seq_bn")
    with pytest.raises(AdapterConfigError, match="cannot be written in PEFT's format"):
        model.save_adapter(tmp_path / "bn", "bn", format="peft")
    with pytest.raises(ValueError, match="format='safetensors'"):
        model.save_adapter(tmp_path / "bn", "bn", format="safetensors")


def test_the_peft_config_is_the_vllm_layout(tmp_path) -> None:
    model = _llama()
    adapters.init(model)
    model.add_adapter("task", config="lora")
    model.save_adapter(tmp_path / "task", "task", format="peft")
    config = json.loads((tmp_path / "task" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 8
    assert config["task_type"] == "CAUSAL_LM" and config["modules_to_save"] is None
    from safetensors.torch import load_file

    keys = sorted(load_file(tmp_path / "task" / "adapter_model.safetensors"))
    assert keys[0] == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert len(keys) == 2 * 2 * 2  # two layers, q and v, A and B
