"""The model API of adapters.init'ed models, and what happens on bad input."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import tiny_bert, tiny_bert_classifier
from transformers import OPTConfig, OPTModel, RobertaConfig, RobertaForMaskedLM

import adapters
from adapters import AdapterLoadError, AdapterNameError, AdapterSetup, UnsupportedModelError
from adapters.composition import Stack
from adapters.core.context import adapter_hooks
from adapters.files import format as fmt
from adapters.testing import assert_close, randomize_adapter


def out(model, inputs):
    with torch.no_grad():
        result = model(**inputs)
    return result.last_hidden_state if hasattr(result, "last_hidden_state") else result.logits


# -- init -------------------------------------------------------------------------------------
def test_unsupported_model_names_plugins_and_the_fix():
    model = OPTModel(
        OPTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            ffn_dim=37,
            vocab_size=100,
            word_embed_proj_dim=32,
        )
    )
    with pytest.raises(
        UnsupportedModelError, match=r"'opt'.*Installed plugins: \[.*bert.*gpt2.*writing-a-model-plugin"
    ):
        adapters.init(model)


def test_init_is_in_place_silent_and_bit_identical(inputs, caplog, recwarn):
    model = tiny_bert()
    plain = out(model, inputs)
    with caplog.at_level(logging.WARNING):
        adapters.init(model)
        adapters.init(model)  # idempotent
        model.add_adapter("a", "seq_bn")
        got = out(model, inputs)
    assert torch.equal(got, plain)
    assert not caplog.records and not recwarn.list
    assert type(model).__name__ == "BertModel" and isinstance(model, adapters.ModelAdaptersMixin)


@pytest.mark.parametrize(
    "factory",
    [
        tiny_bert_classifier,
        lambda: RobertaForMaskedLM(
            RobertaConfig(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=100
            )
        ),
    ],
)
def test_models_with_static_heads(factory, inputs):
    model = factory().eval()
    plain = out(model, inputs)
    adapters.init(model)
    model.add_adapter("a", "lora")
    model.train_adapter("a")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    prefix = model.base_model_prefix
    assert {n for n in trainable if n.startswith(prefix)} == {
        n for n, _ in model.named_parameters() if ".loras.a." in n
    }
    assert any(not n.startswith(prefix) for n in trainable), "the static head stays trainable"
    model.eval()
    model.set_active_adapters(None)
    assert torch.equal(out(model, inputs), plain)


# -- names -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["", "a.b", "with space", None])
def test_invalid_names(bad):
    model = tiny_bert()
    adapters.init(model)
    with pytest.raises(AdapterNameError, match="Invalid adapter name"):
        model.add_adapter(bad, "seq_bn")


def test_existing_name_needs_overwrite_ok():
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", "seq_bn")
    with pytest.raises(AdapterNameError, match="overwrite_ok=True"):
        model.add_adapter("a", "lora")
    model.add_adapter("a", "lora", overwrite_ok=True)
    assert model.adapters_state.configs["a"].architecture == "lora"
    assert not any(".adapters.a." in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("name", ["double", "train", "forward", "adapters"])
def test_names_that_equal_module_attributes_work(name, inputs, tmp_path):
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter(name, "seq_bn", set_active=True)
    randomize_adapter(model, name)
    expected = out(model, inputs)
    model.save_adapter(tmp_path, name)
    other = tiny_bert()
    adapters.init(other)
    assert other.load_adapter(tmp_path, set_active=True) == name
    assert torch.equal(out(other, inputs), expected)
    other.delete_adapter(name)
    assert callable(other.double) and callable(other.train)


def test_unknown_adapter_name_lists_added_ones():
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", "seq_bn")
    with pytest.raises(AdapterNameError, match=r"No adapter named 'b'.*\['a'\]"):
        model.set_active_adapters(["a", "b"])
    with pytest.raises(AdapterNameError):
        model.delete_adapter("b")


# -- activation -------------------------------------------------------------------------------
def test_active_adapters_and_adapter_setup_context(inputs):
    model = tiny_bert()
    adapters.init(model)
    plain = out(model, inputs)
    model.add_adapter("a", "seq_bn")
    randomize_adapter(model, "a")
    with AdapterSetup("a"):
        inside = out(model, inputs)
        assert model.active_adapters is None  # the context does not change the model's own setup
    assert not torch.allclose(inside, plain)
    assert torch.equal(out(model, inputs), plain)
    assert not adapter_hooks(model)  # only the hooks that open and close each pass
    model.active_adapters = "a"
    assert model.active_adapters == Stack("a")
    assert torch.equal(out(model, inputs), inside)


def test_stack_of_bottlenecks_depends_on_order(inputs):
    model = tiny_bert()
    adapters.init(model)
    for name in ("a", "b"):
        model.add_adapter(name, "seq_bn")
        randomize_adapter(model, name, seed=len(name) + ord(name))
    model.set_active_adapters(Stack("a", "b"))
    ab = out(model, inputs)
    model.set_active_adapters(["b", "a"])
    assert not torch.allclose(ab, out(model, inputs))


def test_eager_and_sdpa_attention_agree_and_outputs_are_recorded(inputs):
    results = []
    for implementation in ("eager", "sdpa"):
        model = tiny_bert(attn_implementation=implementation)
        adapters.init(model)
        model.add_adapter("a", "double_seq_bn|lora", set_active=True)
        randomize_adapter(model, "a")
        with torch.no_grad():
            outputs = model(**inputs, output_hidden_states=True, output_attentions=implementation == "eager")
        assert len(outputs.hidden_states) == 3
        if implementation == "eager":
            assert len(outputs.attentions) == 2
        results.append(outputs.last_hidden_state)
    assert_close(results[0], results[1])


def test_summary_get_adapter_and_iter_layers():
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", "double_seq_bn", set_active=True)
    model.add_adapter("l", "lora[leave_out=[0]]")
    rows = model.adapter_summary(as_dict=True)
    assert [r["name"] for r in rows] == ["a", "l", "Full model"]
    assert rows[0]["active"] is True and rows[1]["active"] is False
    assert rows[1]["#param"] == 2 * (8 * 32 + 32 * 8)
    assert "Full model" in model.adapter_summary()
    assert sorted(model.get_adapter("a")) == [0, 1]
    assert set(model.get_adapter("a")[0]) == {"mh_adapter", "output_adapter"}
    assert sorted(model.get_adapter("l")) == [1]
    assert [i for i, _ in model.iter_layers()] == [0, 1]


def test_training_lowers_the_loss_and_changes_only_adapter_and_head():
    torch.manual_seed(0)
    input_ids = torch.randint(3, 100, (16, 8))
    labels = (input_ids[:, 0] % 3).long()
    for config in ("seq_bn", "lora"):
        model = tiny_bert_classifier()
        adapters.init(model)
        model.add_adapter("task", config)
        model.train_adapter("task")
        body = {n: p.detach().clone() for n, p in model.bert.named_parameters() if ".task." not in n}
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
        losses = []
        for _ in range(40):
            loss = model(input_ids=input_ids, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        assert losses[-1] < 0.8 * losses[0], (config, losses[0], losses[-1])
        for name, param in model.bert.named_parameters():
            if name in body:
                assert torch.equal(param, body[name]), f"{config}: {name} changed"


# -- saving and loading ------------------------------------------------------------------------
def test_saved_files_follow_the_reference_format(tmp_path):
    model = tiny_bert_classifier()
    adapters.init(model)
    model.add_adapter("a", "lora")
    model.save_adapter(tmp_path, "a")
    # With the model's static head (the classifier), as the reference saves it by default (with_head=True).
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [fmt.ADAPTER_CONFIG, fmt.ADAPTER_WEIGHTS, fmt.HEAD_CONFIG, fmt.HEAD_WEIGHTS]
    )
    data = json.loads((tmp_path / fmt.ADAPTER_CONFIG).read_text())
    # "integrity" (size and sha256 of the weights file) is ours; the reference library ignores it.
    reference_fields = {"config", "hidden_size", "model_class", "model_name", "model_type", "name", "version"}
    assert set(data) == reference_fields | {"integrity"}
    assert data["model_class"] == "BertForSequenceClassification" and data["model_type"] == "bert"
    assert data["config"]["architecture"] == "lora" and data["version"].startswith("adapters.")
    from safetensors.torch import load_file

    keys = load_file(tmp_path / fmt.ADAPTER_WEIGHTS)
    assert "bert.encoder.layer.0.attention.self.query.loras.a.lora_A" in keys


def test_legacy_pickle_and_save_all(tmp_path, inputs):
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", "par_bn")
    model.add_adapter("b", "lora")
    for n in "ab":
        randomize_adapter(model, n)
    model.set_active_adapters(["a", "b"])
    expected = out(model, inputs)
    model.save_all_adapters(tmp_path, use_safetensors=False)
    assert (tmp_path / "a" / fmt.ADAPTER_WEIGHTS_LEGACY).is_file()
    other = tiny_bert()
    adapters.init(other)
    other.load_adapter(tmp_path / "a")
    other.load_adapter(tmp_path / "b")
    other.set_active_adapters(["a", "b"])
    assert torch.equal(out(other, inputs), expected)


def test_load_as_and_overwrite(tmp_path, inputs):
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", "seq_bn", set_active=True)
    randomize_adapter(model, "a")
    expected = out(model, inputs)
    model.save_adapter(tmp_path, "a")
    with pytest.raises(AdapterNameError, match="load_as"):
        model.load_adapter(tmp_path)
    model.load_adapter(tmp_path, load_as="copy", set_active=True)
    assert torch.equal(out(model, inputs), expected)
    randomize_adapter(model, "a", seed=5)
    model.load_adapter(tmp_path, overwrite_ok=True, set_active=True)
    assert torch.equal(out(model, inputs), expected)
    assert sorted(model.adapters_state.configs) == ["a", "copy"]


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, dict(model.adapters_state.configs)


def _corrupt_cases():
    def missing_config(folder):
        (folder / fmt.ADAPTER_CONFIG).unlink()

    def corrupt_config(folder):
        (folder / fmt.ADAPTER_CONFIG).write_text("{not json")

    def missing_weights(folder):
        (folder / fmt.ADAPTER_WEIGHTS).unlink()

    def corrupt_weights(folder):
        (folder / fmt.ADAPTER_WEIGHTS).write_bytes(b"\x00garbage" * 10)

    def other_hidden_size(folder):
        data = json.loads((folder / fmt.ADAPTER_CONFIG).read_text())
        data["hidden_size"] = 64
        (folder / fmt.ADAPTER_CONFIG).write_text(json.dumps(data))

    def other_model_type(folder):
        data = json.loads((folder / fmt.ADAPTER_CONFIG).read_text())
        data["model_type"] = "gpt2"
        (folder / fmt.ADAPTER_CONFIG).write_text(json.dumps(data))

    def weights_of_other_config(folder):
        data = json.loads((folder / fmt.ADAPTER_CONFIG).read_text())
        data["config"]["reduction_factor"] = 4
        (folder / fmt.ADAPTER_CONFIG).write_text(json.dumps(data))

    def missing_key(folder):
        from safetensors.torch import load_file, save_file

        tensors = load_file(folder / fmt.ADAPTER_WEIGHTS)
        tensors.pop(sorted(tensors)[0])
        save_file(tensors, folder / fmt.ADAPTER_WEIGHTS)

    def pickle_with_objects(folder):
        (folder / fmt.ADAPTER_WEIGHTS).unlink()
        torch.save({"x": torch.zeros(1), "obj": logging.getLogger("x")}, folder / fmt.ADAPTER_WEIGHTS_LEGACY)

    def unknown_config_field(folder):
        data = json.loads((folder / fmt.ADAPTER_CONFIG).read_text())
        data["config"]["bogus"] = 1
        (folder / fmt.ADAPTER_CONFIG).write_text(json.dumps(data))

    return [
        missing_config,
        corrupt_config,
        missing_weights,
        corrupt_weights,
        other_hidden_size,
        other_model_type,
        weights_of_other_config,
        missing_key,
        pickle_with_objects,
        unknown_config_field,
    ]


@pytest.mark.parametrize("corrupt", _corrupt_cases(), ids=lambda f: f.__name__)
def test_bad_adapter_folders_raise_and_leave_the_model_unchanged(corrupt, tmp_path, inputs):
    source = tiny_bert()
    adapters.init(source)
    source.add_adapter("a", "seq_bn")
    source.save_adapter(tmp_path, "a")
    corrupt(tmp_path)
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("keep", "lora", set_active=True)
    before_out = out(model, inputs)
    before_state, before_configs = _snapshot(model)
    with pytest.raises(AdapterLoadError):
        model.load_adapter(tmp_path, set_active=True)
    after_state, after_configs = _snapshot(model)
    assert after_configs == before_configs
    assert after_state.keys() == before_state.keys()
    assert all(torch.equal(after_state[k], v) for k, v in before_state.items())
    assert model.active_adapters == Stack("keep")
    assert torch.equal(out(model, inputs), before_out)


def test_not_a_folder():
    model = tiny_bert()
    adapters.init(model)
    with pytest.raises(AdapterLoadError, match="not a folder"):
        model.load_adapter("/nonexistent/adapter")


def test_saving_is_atomic(tmp_path, monkeypatch):
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", "seq_bn")
    model.save_adapter(tmp_path / "out", "a")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    model.add_adapter("a", "lora", overwrite_ok=True)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("adapters.io.adapter_io.save_weights", fail)
    with pytest.raises(OSError, match="disk full"):
        model.save_adapter(tmp_path / "out", "a")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no scratch folder is left behind"


def test_save_pretrained_and_from_pretrained_keep_working(tmp_path, inputs):
    model = tiny_bert()
    adapters.init(model)
    plain = out(model, inputs)
    model.save_pretrained(tmp_path)
    reloaded = type(model).__mro__[2].from_pretrained(tmp_path).eval()
    assert torch.equal(out(reloaded, inputs), plain)
    adapters.init(reloaded)
    reloaded.add_adapter("a", "lora", set_active=True)
    assert out(reloaded, inputs).shape == plain.shape


def test_save_pretrained_writes_a_clean_checkpoint_and_the_adapters_beside_it(tmp_path, inputs):
    model = tiny_bert_classifier()
    adapters.init(model)
    plain = model(**inputs).logits
    model.add_adapter("a", "seq_bn", set_active=True)
    randomize_adapter(model, "a")
    adapted = model(**inputs).logits
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["a"]
    reloaded, info = type(model).__mro__[2].from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    reloaded.eval()
    assert torch.equal(reloaded(**inputs).logits, plain)
    adapters.init(reloaded)
    reloaded.load_adapter(tmp_path / "adapters" / "a", set_active=True)
    assert torch.equal(reloaded(**inputs).logits, adapted)


def test_leave_out_of_every_layer_is_refused():
    model = tiny_bert()
    adapters.init(model)
    keys = set(model.state_dict())
    with pytest.raises(adapters.AdapterConfigError, match="leave_out covers every one"):
        model.add_adapter("a", "seq_bn[leave_out=[0,1]]")
    assert set(model.state_dict()) == keys and not model.adapters_state.configs


def test_refused_stack_leaves_the_previous_setup_active(inputs):
    # A Stack of LoRAs on a non-square linear (FFN in: 32 -> 37) is refused by the LoRA places
    # only during activation; the refusal must not leave some places switched already.
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", "seq_bn")
    model.add_adapter("b", "lora[intermediate_lora=True]")
    model.add_adapter("c", "lora[intermediate_lora=True]")
    randomize_adapter(model, "a")
    randomize_adapter(model, "b", seed=1)
    model.set_active_adapters("a")
    before = out(model, inputs)
    with pytest.raises(adapters.CompositionError, match="non-square"):
        model.set_active_adapters(Stack("a", "b", "c"))
    assert model.active_adapters == Stack("a")
    assert torch.equal(out(model, inputs), before)


@pytest.mark.parametrize("config", ["seq_bn", "lora"])
def test_deepcopy_gives_an_independent_adapted_model(inputs, config):
    import copy

    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", config, set_active=True)
    randomize_adapter(model, "a")
    expected = out(model, inputs)
    clone = copy.deepcopy(model)
    assert torch.equal(out(clone, inputs), expected)
    randomize_adapter(clone, "a", seed=5)
    assert not torch.allclose(out(clone, inputs), expected)
    assert torch.equal(out(model, inputs), expected), "changing the copy changed the original"
    clone.delete_adapter("a")
    clone.set_active_adapters(None)
    assert torch.equal(out(model, inputs), expected)
    assert "a" in model.adapters_state.configs
