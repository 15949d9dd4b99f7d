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
from transformers import LlamaConfig, LlamaForCausalLM

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
    ],
    ids=["q_v", "rslora_every_mapped_linear", "one_layer"],
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
        (dict(target_modules=["o_proj"]), r"self_attn\.o_proj', which is not a linear layer"),
        (dict(target_modules=["q_proj"], use_dora=True), "use_dora=True has no equivalent"),
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


def test_other_peft_methods_are_refused(tmp_path) -> None:
    model = peft.get_peft_model(
        _llama(), peft.IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"])
    )
    model.save_pretrained(tmp_path / "ia3")
    target = _llama()
    adapters.init(target)
    with pytest.raises(AdapterLoadError, match="PEFT IA3 adapter"):
        target.load_adapter(tmp_path / "ia3")


def test_only_plain_lora_is_written_in_peft_format(tmp_path) -> None:
    model = _llama()
    adapters.init(model)
    model.add_adapter("dora", config=adapters.DoRAConfig(r=4))
    with pytest.raises(AdapterConfigError, match="cannot be written in PEFT's format"):
        model.save_adapter(tmp_path / "dora", "dora", format="peft")
    assert not (tmp_path / "dora").exists()
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
    from safetensors.torch import load_file

    keys = sorted(load_file(tmp_path / "task" / "adapter_model.safetensors"))
    assert keys[0] == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert len(keys) == 2 * 2 * 2  # two layers, q and v, A and B
