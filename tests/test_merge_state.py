"""The merged state is explicit: saved checkpoints say what they contain, reset is exact, misuse is refused.

A merged adapter is part of the model weights. These tests check that nothing applies it twice
(a reloaded checkpoint plus its adapter, a Stack, a second merge), that ``reset_adapter`` gives
back the very weights from before the merge whatever happened since, and that a merged adapter
cannot be trained.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings

import pytest
import torch
from conftest import TINY_BERT, tiny_bert, tiny_bert_classifier
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

import adapters
from adapters import (
    AdapterError,
    AdapterLoadError,
    AutoAdapterModel,
    CompositionError,
    IA3Config,
    LoRAConfig,
    Parallel,
    Stack,
)
from adapters.testing import assert_close, randomize_adapter

VARIANTS = {
    "lora": "lora",
    "lora_all_linears": "lora[r=4,alpha=16,attn_matrices=['q','k','v'],intermediate_lora=True,output_lora=True]",
    "ia3": "ia3",
    "dora": "dora[r=4,alpha=12,intermediate_lora=True,output_lora=True]",
    "vera": "vera[intermediate_lora=True,output_lora=True]",
    "dvora": "dvora",
}


def _model(config="lora", name: str = "a", model=None):
    model = model if model is not None else tiny_bert()
    adapters.init(model)
    model.add_adapter(name, config=config, set_active=True)
    randomize_adapter(model, name, std=0.3)
    return model


def _out(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        result = model(**inputs)
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


def _base_weights(model) -> dict[str, torch.Tensor]:
    """The model's own tensors (every adapter's left out), copied."""
    state = model.adapters_state
    prefixes = tuple(f"{state.base_prefix}{path}." for records in state.modules.values() for path in records)
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(prefixes)}


def _assert_identical(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        same = got[key].dtype == value.dtype and torch.equal(got[key], value)
        assert same, f"{key} is not restored bit for bit"


# -- saving a merged model ---------------------------------------------------------------------
def test_save_pretrained_records_the_merged_adapter_in_config_json_and_its_folder(tmp_path):
    model = _model()
    model.add_adapter("b", "lora")
    model.merge_adapter("a")
    model.save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "config.json").read_text())
    (record,) = saved["adapters_merged"]
    assert record["name"] == "a" and record["method"] == "lora"
    assert record["config"] == model.adapters_state.configs["a"].to_dict()
    assert len(record["weights_sha256"]) == 64
    assert json.loads((tmp_path / "adapters" / "a" / "adapter_config.json").read_text())["merged"] is True
    assert "merged" not in json.loads((tmp_path / "adapters" / "b" / "adapter_config.json").read_text())
    # The record is written for the save only: the live model's config is left as it was.
    assert not hasattr(model.config, "adapters_merged")


def test_the_original_class_loads_a_merged_checkpoint_without_warnings(tmp_path, caplog):
    model = _model()
    model.merge_adapter("a")
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING):
            reloaded, info = BertModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert not any(info.values()), info
    assert reloaded.config.adapters_merged[0]["name"] == "a"


def test_loading_the_merged_adapter_onto_its_merged_checkpoint_is_refused(tmp_path, inputs):
    """The reported failure: the checkpoint holds W + dW, loading the adapter added dW a second time."""
    model = _model()
    expected = _out(model, inputs)
    model.merge_adapter("a")
    model.save_pretrained(tmp_path)

    reloaded = BertModel.from_pretrained(tmp_path).eval()
    adapters.init(reloaded)
    for load_as in (None, "renamed"):
        with pytest.raises(AdapterLoadError, match=r"already contain adapter 'a'.*apply it twice"):
            reloaded.load_adapter(tmp_path / "adapters" / "a", load_as=load_as, set_active=True)
    assert not reloaded.adapters_state.configs and reloaded.active_adapters is None
    assert_close(_out(reloaded, inputs), expected)


def test_a_flex_head_model_refuses_it_too_and_keeps_its_head_unloaded(tmp_path):
    model = tiny_bert_classifier()
    adapters.init(model)
    model.add_adapter("a", "lora", set_active=True)
    randomize_adapter(model, "a", std=0.3)
    model.merge_adapter("a")
    model.save_pretrained(tmp_path)
    reloaded = type(model).__mro__[2].from_pretrained(tmp_path).eval()
    adapters.init(reloaded)
    with pytest.raises(AdapterLoadError, match="already contain adapter 'a'"):
        reloaded.load_adapter(tmp_path / "adapters" / "a")
    assert not reloaded.adapters_state.configs


def test_an_adapter_model_class_refuses_it_too(tmp_path, inputs):
    """AdapterModel classes keep a config of their own beside their body's: the record is in the saved one."""
    model = AutoAdapterModel.from_config(BertConfig(**TINY_BERT)).eval()
    model.add_adapter("a", "lora", set_active=True)
    randomize_adapter(model, "a", std=0.3)
    model.add_classification_head("a", num_labels=2)
    expected = _out(model, inputs)
    model.merge_adapter("a")
    model.save_pretrained(tmp_path)
    reloaded = AutoAdapterModel.from_pretrained(tmp_path).eval()
    with pytest.raises(AdapterLoadError, match="already contain adapter 'a'"):
        reloaded.load_adapter(tmp_path / "adapters" / "a")
    assert not reloaded.adapters_state.configs
    reloaded.load_head(tmp_path / "adapters" / "a")
    assert_close(_out(reloaded, inputs), expected)


def test_a_resaved_merged_checkpoint_keeps_its_record(tmp_path):
    model = _model()
    model.merge_adapter("a")
    model.save_pretrained(tmp_path / "first")
    reloaded = BertModel.from_pretrained(tmp_path / "first")
    adapters.init(reloaded)
    reloaded.add_adapter("b", "lora")
    reloaded.save_pretrained(tmp_path / "second")
    saved = json.loads((tmp_path / "second" / "config.json").read_text())
    assert [r["name"] for r in saved["adapters_merged"]] == ["a"]
    again = BertModel.from_pretrained(tmp_path / "second")
    adapters.init(again)
    with pytest.raises(AdapterLoadError, match="already contain adapter 'a'"):
        again.load_adapter(tmp_path / "first" / "adapters" / "a")
    again.load_adapter(tmp_path / "second" / "adapters" / "b")  # an adapter not in the weights loads


def test_another_adapter_of_the_same_name_loads_onto_a_merged_checkpoint(tmp_path):
    """What is refused is the adapter whose weights are in the checkpoint, not a name."""
    model = _model()
    model.merge_adapter("a")
    model.save_pretrained(tmp_path / "merged")
    other = _model(LoRAConfig())
    randomize_adapter(other, "a", std=0.3, seed=7)
    other.save_adapter(tmp_path / "other", "a")
    reloaded = BertModel.from_pretrained(tmp_path / "merged")
    adapters.init(reloaded)
    assert reloaded.load_adapter(tmp_path / "other") == "a"


def test_the_merged_adapter_folder_loads_onto_a_clean_base_model_with_a_warning(tmp_path, inputs, caplog):
    model = _model()
    expected = _out(model, inputs)
    model.merge_adapter("a")
    model.save_pretrained(tmp_path)
    clean = tiny_bert()
    adapters.init(clean)
    with caplog.at_level(logging.WARNING, logger="adapters"):
        clean.load_adapter(tmp_path / "adapters" / "a", set_active=True)
    assert "was merged into the weights of the checkpoint saved with it" in caplog.text
    assert_close(_out(clean, inputs), expected)


def test_save_pretrained_after_reset_records_nothing(tmp_path):
    model = _model()
    model.merge_adapter("a")
    model.reset_adapter()
    model.save_pretrained(tmp_path)
    assert "adapters_merged" not in json.loads((tmp_path / "config.json").read_text())
    assert "merged" not in json.loads((tmp_path / "adapters" / "a" / "adapter_config.json").read_text())


def test_save_pretrained_refuses_a_merged_adapter_changed_since_the_merge(tmp_path):
    """Its folder would hold other weights than the checkpoint's merged update."""
    model = _model()
    model.merge_adapter("a")
    with torch.no_grad():
        model.encoder.layer[0].attention.self.query.loras["a"].lora_B.add_(0.5)
    with pytest.raises(AdapterError, match=r"changed since it was merged.*reset_adapter\(\)"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_save_pretrained_accepts_a_merged_model_cast_to_another_dtype(tmp_path):
    """Casting converts the merged weights and the adapter alike: the pair still belongs together."""
    model = _model()
    model.merge_adapter("a")
    model.to(torch.float16)
    model.save_pretrained(tmp_path)
    reloaded = BertModel.from_pretrained(tmp_path)
    adapters.init(reloaded)
    with pytest.raises(AdapterLoadError, match="already contain adapter 'a'"):
        reloaded.load_adapter(tmp_path / "adapters" / "a")


# -- reset_adapter restores the weights exactly ----------------------------------------------------
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reset_restores_the_weights_bit_for_bit(variant):
    model = _model(VARIANTS[variant])
    before = copy.deepcopy(model.state_dict())
    model.merge_adapter("a")
    model.reset_adapter()
    _assert_identical(model.state_dict(), before)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reset_restores_the_weights_whatever_happened_to_the_adapter(variant):
    """Reported for LoRA: merge, change the LoRA's parameters, reset: the base was off by 0.61."""
    model = _model(VARIANTS[variant])
    before = _base_weights(model)
    model.merge_adapter("a")
    randomize_adapter(model, "a", std=0.5, seed=11)
    model.reset_adapter()
    _assert_identical(_base_weights(model), before)


def test_reset_is_exact_on_gpt2_conv1d_layers():
    """Conv1D stores its weight (in, out); the merge works on a transposed view of it."""
    gpt2 = GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=32)).eval()
    model = _model("dora[r=4,alpha=8,intermediate_lora=True,output_lora=True]", model=gpt2)
    before = _base_weights(model)
    model.merge_adapter("a")
    randomize_adapter(model, "a", std=0.5, seed=11)
    model.reset_adapter()
    _assert_identical(_base_weights(model), before)


def test_delete_adapter_of_the_merged_adapter_resets_first():
    model = _model()
    before = _base_weights(model)
    model.merge_adapter("a")
    model.delete_adapter("a")
    assert model.adapters_state.merged is None
    _assert_identical(_base_weights(model), before)


# -- what a merged adapter refuses -------------------------------------------------------------
def test_train_adapter_of_a_merged_adapter_is_refused(inputs):
    """Reported: accepted, and then backward failed (the merged adapter is in no hook, the body is frozen)."""
    model = _model()
    model.merge_adapter("a")
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    for setup in ("a", ["a"], Stack("a")):
        with pytest.raises(AdapterError, match=r"'a' is merged.*cannot be trained.*reset_adapter\(\)"):
            model.train_adapter(setup)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == requires_grad
    assert not model.training and model.active_adapters == Stack("a")
    model.reset_adapter()
    model.train_adapter("a")
    model(**inputs).last_hidden_state.sum().backward()
    assert model.encoder.layer[0].attention.self.query.loras["a"].lora_B.grad is not None


def test_merging_freezes_the_adapter_and_another_adapter_trains_on_top(inputs):
    model = _model()
    model.add_adapter("b", "lora")
    model.train_adapter("a")
    model.merge_adapter("a")
    assert not any(p.requires_grad for _, p in model.adapters_state.parameters_of("a"))
    model.train_adapter("b")
    model(**inputs).last_hidden_state.sum().backward()
    assert model.encoder.layer[0].attention.self.query.loras["b"].lora_A.grad is not None
    assert all(p.grad is None for _, p in model.adapters_state.parameters_of("a"))


def test_merging_twice_is_refused_and_changes_nothing():
    model = _model()
    model.add_adapter("b", "lora")
    model.merge_adapter("a")
    merged = _base_weights(model)
    with pytest.raises(AdapterError, match=r"'a' is merged already.*twice"):
        model.merge_adapter("a")
    with pytest.raises(AdapterError, match=r"'a' is merged already.*reset_adapter\(\)"):
        model.merge_adapter("b")
    assert model.adapters_state.merged == "a"
    _assert_identical(_base_weights(model), merged)


def test_a_merged_adapter_acts_once_whatever_the_active_setup(inputs):
    model = _model()
    expected = _out(model, inputs)
    model.merge_adapter("a")
    for setup in ("a", Stack("a"), None):
        model.set_active_adapters(setup)
        assert_close(_out(model, inputs), expected)


def test_a_stack_of_additive_adapters_with_the_merged_one_is_refused(inputs):
    """Unmerged, a stacked LoRA reads the previous one's update; merged, that update is in the weights."""
    model = _model()
    model.add_adapter("b", "lora")
    randomize_adapter(model, "b", std=0.3, seed=1)
    model.set_active_adapters("b")
    model.merge_adapter("a")
    for setup in (Stack("a", "b"), Stack("b", "a")):
        with pytest.raises(CompositionError, match=r"'a' is merged.*reset_adapter\(\)"):
            model.set_active_adapters(setup)
        assert model.active_adapters == Stack("b")


def test_merging_an_adapter_the_active_setup_needs_unmerged_is_refused_and_changes_nothing(inputs):
    model = _model()
    model.add_adapter("b", "lora")
    randomize_adapter(model, "b", std=0.3, seed=1)
    before = _base_weights(model)
    for setup in (Parallel("a", "b"), Stack("a", "b")):
        model.set_active_adapters(setup)
        expected = _out(model, inputs)
        with pytest.raises(CompositionError, match="'a'"):
            model.merge_adapter("a")
        assert model.adapters_state.merged is None and model.active_adapters == setup
        _assert_identical(_base_weights(model), before)
        assert torch.equal(_out(model, inputs), expected)


def test_a_stack_of_ia3_adapters_with_the_merged_one_equals_the_unmerged_stack(inputs):
    """(IA)^3 vectors multiply: merging one into the weights and applying the others is the same product."""
    model = _model(IA3Config())
    model.add_adapter("b", IA3Config())
    randomize_adapter(model, "b", std=0.3, seed=1)
    model.set_active_adapters(Stack("a", "b"))
    expected = _out(model, inputs)
    model.merge_adapter("a")
    assert_close(_out(model, inputs), expected)


def test_a_stack_with_the_merged_adapter_on_other_layers_is_allowed(inputs):
    model = _model("lora")  # q and v
    model.add_adapter("b", "lora[selfattn_lora=False,intermediate_lora=True]")
    randomize_adapter(model, "b", std=0.3, seed=1)
    model.set_active_adapters(Stack("a", "b"))
    expected = _out(model, inputs)
    model.merge_adapter("a")
    assert_close(_out(model, inputs), expected)


def test_skip_layers_over_the_merged_adapter_are_refused():
    """AdapterDrop cannot take a merged update out of a layer's weights."""
    model = _model()
    model.merge_adapter("a")
    with pytest.raises(CompositionError, match=r"'a' is merged.*skip_layers"):
        model.set_active_adapters("a", skip_layers=[0])
    assert model.active_adapters == Stack("a") and not model.adapters_state.skip_layers


def test_reset_after_a_cast_gives_the_cast_of_the_original_weights():
    model = _model()
    before = {k: v.half() if v.is_floating_point() else v for k, v in _base_weights(model).items()}
    model.merge_adapter("a")
    model.half()
    model.reset_adapter()
    _assert_identical(_base_weights(model), before)


def test_merge_refused_for_skip_layers_names_the_fix_for_merging():
    model = _model()
    model.set_active_adapters("a", skip_layers=[0])
    with pytest.raises(CompositionError, match=r"would be merged.*Activate 'a' alone \(without skip_layers\)"):
        model.merge_adapter("a")
    assert model.adapters_state.merged is None and model.adapters_state.skip_layers == {0}


def test_an_ia3_vector_with_zeros_merges_and_resets_exactly(inputs):
    """Reset copies the weights back instead of dividing by the scaling, so zero entries are no obstacle."""
    model = _model(IA3Config())
    with torch.no_grad():
        model.encoder.layer[0].attention.self.key.loras["a"].lora_B[:3] = 0.0
    before = _base_weights(model)
    expected = _out(model, inputs)
    model.merge_adapter("a")
    assert_close(_out(model, inputs), expected)
    model.reset_adapter()
    _assert_identical(_base_weights(model), before)


def test_a_scaling_that_would_put_inf_into_the_weights_is_still_refused():
    model = _model(IA3Config())
    with torch.no_grad():
        model.encoder.layer[0].attention.self.key.loras["a"].lora_B[0] = float("inf")
    before = _base_weights(model)
    with pytest.raises(AdapterError, match="non-finite"):
        model.merge_adapter("a")
    assert model.adapters_state.merged is None
    _assert_identical(_base_weights(model), before)
