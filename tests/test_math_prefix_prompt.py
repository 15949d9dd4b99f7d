"""Prefix tuning and prompt tuning against their definitions, computed by hand on a 1-layer tiny BERT.

The expected values use only ``torch.nn.functional`` and the model's own weights: the BERT layer
(self-attention over the prefix keys/values and the layer's own, then the two post-LN blocks) is
written out here; the library's output comes from a full forward pass with the adapter active.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_bert
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)

import adapters
from adapters import AdapterConfigError, CompositionError, PrefixTuningConfig, PromptTuningConfig, Stack
from adapters.testing import randomize_adapter


@pytest.fixture
def inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 100, (2, 7), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[1, -2:] = 0
    return {"input_ids": input_ids, "attention_mask": mask}


def _ln(module: torch.nn.LayerNorm, t: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(t, module.normalized_shape, module.weight, module.bias, module.eps)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, keys) 1/0 mask -> (batch, 1, 1, keys) additive mask."""
    return ((1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min).to(dtype)


def _bert_layer(layer, x, key_mask, prefix_keys=None, prefix_values=None):
    """One BERT layer by hand; prefix keys/values (batch or 1, heads, n, head_dim) go before the layer's own."""
    attention = layer.attention.self
    heads, dim = attention.num_attention_heads, attention.attention_head_size
    batch = x.shape[0]

    def split(t):
        return t.view(batch, -1, heads, dim).transpose(1, 2)

    q = split(F.linear(x, attention.query.weight, attention.query.bias))
    k = split(F.linear(x, attention.key.weight, attention.key.bias))
    v = split(F.linear(x, attention.value.weight, attention.value.bias))
    if prefix_keys is not None:
        k = torch.cat([prefix_keys.expand(batch, -1, -1, -1), k], dim=2)
        v = torch.cat([prefix_values.expand(batch, -1, -1, -1), v], dim=2)
        key_mask = torch.cat([torch.ones(batch, prefix_keys.shape[2], dtype=key_mask.dtype), key_mask], dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dim) + _additive(key_mask, q.dtype)
    context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, -1, heads * dim)
    out = layer.attention.output
    a = _ln(out.LayerNorm, F.linear(context, out.dense.weight, out.dense.bias) + x)
    inter = F.gelu(F.linear(a, layer.intermediate.dense.weight, layer.intermediate.dense.bias))
    return _ln(layer.output.LayerNorm, F.linear(inter, layer.output.dense.weight, layer.output.dense.bias) + a)


def _one_layer_model(config, name="a", **overrides):
    model = tiny_bert(num_hidden_layers=1, **overrides)
    adapters.init(model)
    model.add_adapter(name, config=config, set_active=True)
    randomize_adapter(model, name, std=0.3)
    return model


def _mlp_prefix(prefix, heads, dim):
    """Keys and values of layer 0 from the reparametrization: Linear -> tanh -> Linear over the embedding table."""
    first, last = prefix.control_trans[0], prefix.control_trans[2]
    out = F.linear(torch.tanh(F.linear(prefix.wte.weight, first.weight, first.bias)), last.weight, last.bias)
    out = out.view(-1, 2, heads, dim)  # layer 0: index 0 keys, index 1 values
    return out[:, 0].transpose(0, 1)[None], out[:, 1].transpose(0, 1)[None]


def _flat_prefix(prefix, heads, dim):
    out = prefix.control_trans.view(prefix.config.prefix_length, 2, heads, dim)
    return out[:, 0].transpose(0, 1)[None], out[:, 1].transpose(0, 1)[None]


# -- prefix tuning ------------------------------------------------------------------------------
def test_prefix_tuning_is_attention_over_mlp_prefix_and_own_keys(inputs):
    """Every query attends to [MLP(wte) keys; own keys] (padding masked, prefix always visible)."""
    model = _one_layer_model(PrefixTuningConfig(prefix_length=5, bottleneck_size=16))
    prefix = model.prefix_tuning.prefix_tunings["a"]["self_prefix"]
    with torch.no_grad():
        got = model(**inputs).last_hidden_state
        x = model.embeddings(input_ids=inputs["input_ids"])
        keys, values = _mlp_prefix(prefix, 4, 8)
        expected = _bert_layer(model.encoder.layer[0], x, inputs["attention_mask"], keys, values)
    assert got.shape == (*inputs["input_ids"].shape, 32)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_flat_prefix_with_separate_gates(inputs):
    """use_gating: keys scale by mean_t sigmoid(W x_t + b)[0], values by [1] (shared_gating=False)."""
    config = PrefixTuningConfig(prefix_length=3, flat=True, use_gating=True, shared_gating=False)
    model = _one_layer_model(config)
    prefix = model.prefix_tuning.prefix_tunings["a"]["self_prefix"]
    gate = model.encoder.layer[0].attention.self.prefix_tuning.prefix_gates["a"]
    assert tuple(gate.weight.shape) == (2, 32)
    with torch.no_grad():
        got = model(**inputs).last_hidden_state
        x = model.embeddings(input_ids=inputs["input_ids"])
        scores = torch.sigmoid(F.linear(x, gate.weight, gate.bias)).mean(dim=1)
        keys, values = _flat_prefix(prefix, 4, 8)
        keys = keys * scores[:, 0].view(-1, 1, 1, 1)
        values = values * scores[:, 1].view(-1, 1, 1, 1)
        expected = _bert_layer(model.encoder.layer[0], x, inputs["attention_mask"], keys, values)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_stacked_prefixes_are_concatenated_later_first(inputs):
    """Stack("a", "b"): the keys are [b's prefix; a's prefix; own keys], as the reference composes them."""
    model = _one_layer_model(PrefixTuningConfig(prefix_length=2, flat=True))
    model.add_adapter("b", config=PrefixTuningConfig(prefix_length=3, flat=True))
    randomize_adapter(model, "b", std=0.3, seed=1)
    model.set_active_adapters(Stack("a", "b"))
    pool = model.prefix_tuning.prefix_tunings
    with torch.no_grad():
        got = model(**inputs).last_hidden_state
        x = model.embeddings(input_ids=inputs["input_ids"])
        (ka, va), (kb, vb) = (_flat_prefix(pool[n]["self_prefix"], 4, 8) for n in ("a", "b"))
        keys, values = torch.cat([kb, ka], dim=2), torch.cat([vb, va], dim=2)
        expected = _bert_layer(model.encoder.layer[0], x, inputs["attention_mask"], keys, values)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_prefix_tuning_sdpa_and_eager_agree_in_causal_decoder():
    """A causal (decoder) BERT: the prefix is visible to every query, later tokens are not."""
    outputs = []
    for implementation in ("sdpa", "eager"):
        torch.manual_seed(0)
        config = BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            vocab_size=100,
            is_decoder=True,
            attn_implementation=implementation,
        )
        model = BertModel(config).eval()
        adapters.init(model)
        model.add_adapter("a", config=PrefixTuningConfig(prefix_length=4, bottleneck_size=8), set_active=True)
        randomize_adapter(model, "a", std=0.3)
        ids = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            full = model(input_ids=ids).last_hidden_state
            prefix_only = model(input_ids=ids[:, :3]).last_hidden_state
        # Causality: the first 3 positions do not depend on the later tokens.
        torch.testing.assert_close(full[:, :3], prefix_only, rtol=0, atol=1e-5)
        outputs.append(full)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-5)


def test_eject_prefix_tuning_keeps_outputs_and_drops_the_mlp(inputs, tmp_path):
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", config=PrefixTuningConfig(prefix_length=5, bottleneck_size=16), set_active=True)
    randomize_adapter(model, "a", std=0.3)
    with torch.no_grad():
        before = model(**inputs).last_hidden_state
    model.eject_prefix_tuning("a")
    assert model.adapters_state.configs["a"].flat
    keys = [k for k in model.state_dict() if ".a." in k]
    assert keys == ["prefix_tuning.prefix_tunings.a.self_prefix.control_trans"]
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).last_hidden_state, before, rtol=0, atol=1e-6)
    model.save_adapter(tmp_path, "a")
    fresh = tiny_bert()
    adapters.init(fresh)
    fresh.load_adapter(tmp_path, set_active=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs).last_hidden_state, before, rtol=0, atol=1e-6)


def test_no_active_prefix_installs_nothing(inputs):
    model = tiny_bert()
    config = model.encoder.layer[0].attention.self.config
    adapters.init(model)
    model.add_adapter("a", config="prefix_tuning", set_active=True)
    assert model.encoder.layer[0].attention.self.config is not config
    model.set_active_adapters(None)
    attention = model.encoder.layer[0].attention.self
    assert attention.config is config and not attention._forward_pre_hooks and not attention._forward_hooks


def test_prefix_weights_are_saved_once_with_safetensors(tmp_path):
    """Unlike the reference, the pool is written once (the reference repeats it per layer and needs a pickle)."""
    from safetensors.torch import load_file

    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", config="prefix_tuning[use_gating=True]")
    model.save_adapter(tmp_path, "a")
    keys = sorted(load_file(tmp_path / "adapter.safetensors"))
    assert [k for k in keys if "prefix_tunings" in k] == [
        f"prefix_tuning.prefix_tunings.a.self_prefix.{p}"
        for p in ("control_trans.0.bias", "control_trans.0.weight", "control_trans.2.bias", "control_trans.2.weight")
    ] + ["prefix_tuning.prefix_tunings.a.self_prefix.wte.weight"]
    assert len([k for k in keys if "prefix_gates.a" in k]) == 4  # weight and bias of 2 layers


def test_prefix_config_errors():
    with pytest.raises(AdapterConfigError, match="prefix_length"):
        PrefixTuningConfig(prefix_length=0)
    with pytest.raises(AdapterConfigError, match="dropout"):
        PrefixTuningConfig(dropout=1.5)


# -- prompt tuning ------------------------------------------------------------------------------
@pytest.mark.parametrize("combine", ["prefix", "prefix_after_bos"])
def test_prompt_tuning_is_the_model_on_embeddings_with_the_prompt_inserted(inputs, combine):
    """Hidden states = the layer over [prompt; embeddings] (or [e_0; prompt; e_1..]) with the prompt visible."""
    model = _one_layer_model(PromptTuningConfig(prompt_length=3, combine=combine))
    prompt = model.prompt_tuning.prompt_tunings["a"].prompt_embedding.weight
    with torch.no_grad():
        got = model(**inputs)
        model.set_active_adapters(None)  # the plain embeddings, without the prompt
        e = model.embeddings(input_ids=inputs["input_ids"])
        p = prompt[None].expand(2, -1, -1)
        at = 0 if combine == "prefix" else 1
        x = torch.cat([e[:, :at], p, e[:, at:]], dim=1)
        mask = inputs["attention_mask"]
        mask = torch.cat([mask[:, :at], torch.ones(2, 3, dtype=mask.dtype), mask[:, at:]], dim=1)
        expected = _bert_layer(model.encoder.layer[0], x, mask)
        pooled = torch.tanh(F.linear(expected[:, 0], model.pooler.dense.weight, model.pooler.dense.bias))
    assert got.last_hidden_state.shape == (2, 10, 32)
    torch.testing.assert_close(got.last_hidden_state, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.pooler_output, pooled, rtol=0, atol=1e-5)


def test_prompt_tuning_pads_token_labels_for_a_token_classification_head(inputs):
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=100, num_labels=3
    )
    model = BertForTokenClassification(config).eval()
    adapters.init(model)
    model.add_adapter("a", config=PromptTuningConfig(prompt_length=4), set_active=True)
    labels = torch.randint(0, 3, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    assert out.logits.shape == (2, 11, 3)
    # The prompt positions carry no label: the loss is the cross entropy over the input's tokens.
    expected = F.cross_entropy(out.logits[:, 4:].reshape(-1, 3), labels.reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_prompt_tuning_shifts_answer_positions_for_question_answering(inputs):
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=100
    )
    model = BertForQuestionAnswering(config).eval()
    adapters.init(model)
    model.add_adapter("a", config=PromptTuningConfig(prompt_length=4, combine="prefix_after_bos"), set_active=True)
    start, end = torch.tensor([0, 2]), torch.tensor([3, 4])
    with torch.no_grad():
        out = model(**inputs, start_positions=start, end_positions=end)
    # Position 0 ([CLS], "no answer") stays; later positions move past the 4 prompt positions.
    expected = (
        F.cross_entropy(out.start_logits, torch.tensor([0, 6])) + F.cross_entropy(out.end_logits, torch.tensor([7, 8]))
    ) / 2
    torch.testing.assert_close(out.loss, expected)


def test_prompt_tuning_inside_adapter_setup_matches_set_active(inputs):
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=100)
    ).eval()
    adapters.init(model)
    model.add_adapter("a", config=PromptTuningConfig(prompt_length=4))
    randomize_adapter(model, "a")
    with torch.no_grad():
        with adapters.AdapterSetup("a"):
            inside = model(**inputs).logits
        plain = model(**inputs).logits
        model.set_active_adapters("a")
        active = model(**inputs).logits
    torch.testing.assert_close(inside, active, rtol=0, atol=0)
    assert not torch.allclose(plain, active)


def test_prompt_tuning_only_first_in_a_stack(inputs):
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("p", config="prompt_tuning")
    model.add_adapter("l", config="lora")
    model.set_active_adapters(Stack("p", "l"))
    with pytest.raises(CompositionError, match="first"):
        model.set_active_adapters(Stack("l", "p"))
    assert model.active_adapters == Stack("p", "l")


def test_prompt_init_from_string_uses_word_embeddings(tmp_path):
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"] + [f"w{i}" for i in range(93)]
    BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(tmp_path)
    model = tiny_bert()
    model.config.tokenizer_name_or_path = str(tmp_path)
    adapters.init(model)
    model.add_adapter(
        "a", config=PromptTuningConfig(prompt_length=6, prompt_init="from_string", prompt_init_text="hello world")
    )
    ids = torch.tensor([2, 5, 6, 3, 2, 5])  # [CLS] hello world [SEP], repeated to length 6
    expected = model.embeddings.word_embeddings.weight[ids]
    torch.testing.assert_close(model.prompt_tuning.prompt_tunings["a"].prompt_embedding.weight, expected)


def test_prompt_config_errors():
    with pytest.raises(AdapterConfigError, match="prompt_init_text"):
        PromptTuningConfig(prompt_init="from_string")
    with pytest.raises(AdapterConfigError, match="combine"):
        PromptTuningConfig(combine="suffix")
    with pytest.raises(AdapterConfigError, match="prompt_length"):
        PromptTuningConfig(prompt_length=0)
