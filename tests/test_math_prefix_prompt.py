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
from adapters.testing import assert_close, randomize_adapter


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
    assert_close(got, expected)


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
    assert_close(got, expected)


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
    assert_close(got, expected)


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
        assert_close(full[:, :3], prefix_only)
        outputs.append(full)
    assert_close(outputs[0], outputs[1])


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
        assert_close(model(**inputs).last_hidden_state, before)
    model.save_adapter(tmp_path, "a")
    fresh = tiny_bert()
    adapters.init(fresh)
    fresh.load_adapter(tmp_path, set_active=True)
    with torch.no_grad():
        assert_close(fresh(**inputs).last_hidden_state, before)


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
    assert_close(got.last_hidden_state, expected)
    assert_close(got.pooler_output, pooled)


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
    assert_close(out.loss, expected)


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
    assert_close(out.loss, expected)


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
    # The prompt is a copy of those embedding rows.
    assert torch.equal(model.prompt_tuning.prompt_tunings["a"].prompt_embedding.weight, expected)


def test_prompt_config_errors():
    with pytest.raises(AdapterConfigError, match="prompt_init_text"):
        PromptTuningConfig(prompt_init="from_string")
    with pytest.raises(AdapterConfigError, match="combine"):
        PromptTuningConfig(combine="suffix")
    with pytest.raises(AdapterConfigError, match="prompt_length"):
        PromptTuningConfig(prompt_length=0)


# -- composition --------------------------------------------------------------------------------
def _two_prefixes(lengths=(2, 5), **overrides):
    """A 1-layer BERT with flat prefixes "a" and "b" of the given lengths."""
    model = _one_layer_model(PrefixTuningConfig(prefix_length=lengths[0], flat=True), **overrides)
    model.add_adapter("b", config=PrefixTuningConfig(prefix_length=lengths[1], flat=True))
    randomize_adapter(model, "b", std=0.3, seed=1)
    pool = model.prefix_tuning.prefix_tunings
    return model, {n: _flat_prefix(pool[n]["self_prefix"], 4, 8) for n in ("a", "b")}


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("with_mask", [True, False])
def test_batch_split_gives_each_example_its_own_prefix(inputs, implementation, with_mask):
    """BatchSplit("a", "b"): example 0 attends to [a's 2 positions; own], example 1 to [b's 5; own].

    The prefixes differ in length; the shorter one is padded with positions its example never sees
    (also when the model is called without an attention mask).
    """
    model, prefixes = _two_prefixes(attn_implementation=implementation)
    mask = inputs["attention_mask"] if with_mask else torch.ones_like(inputs["attention_mask"])
    model.set_active_adapters(adapters.BatchSplit("a", "b", batch_sizes=[1, 1]))
    with torch.no_grad():
        got = model(**(inputs if with_mask else {"input_ids": inputs["input_ids"]})).last_hidden_state
        x = model.embeddings(input_ids=inputs["input_ids"])
        layer = model.encoder.layer[0]
        expected = torch.cat(
            [_bert_layer(layer, x[i : i + 1], mask[i : i + 1], *prefixes[name]) for i, name in enumerate("ab")]
        )
    assert_close(got, expected)


def test_parallel_gives_each_copy_its_branch_prefix(inputs):
    """Parallel("a", "b"): the batch twice, the first copy with a's prefix, the second with b's."""
    model, prefixes = _two_prefixes()
    model.set_active_adapters(adapters.Parallel("a", "b"))
    with torch.no_grad():
        got = model(**inputs).last_hidden_state
        x = model.embeddings(input_ids=inputs["input_ids"])
        layer, mask = model.encoder.layer[0], inputs["attention_mask"]
        expected = torch.cat([_bert_layer(layer, x, mask, *prefixes[name]) for name in "ab"])
    assert got.shape == (4, 7, 32)
    assert_close(got, expected)


def test_average_of_prefixes_is_the_weighted_sum_of_keys_and_values(inputs):
    """Average("a", "b", weights=[0.3, 0.7]): keys 0.3 k_a + 0.7 k_b, values likewise (one prefix length)."""
    model, prefixes = _two_prefixes(lengths=(3, 3))
    model.set_active_adapters(adapters.Average("a", "b", weights=[0.3, 0.7]))
    (ka, va), (kb, vb) = prefixes["a"], prefixes["b"]
    with torch.no_grad():
        got = model(**inputs).last_hidden_state
        x = model.embeddings(input_ids=inputs["input_ids"])
        keys, values = 0.3 * ka + 0.7 * kb, 0.3 * va + 0.7 * vb
        expected = _bert_layer(model.encoder.layer[0], x, inputs["attention_mask"], keys, values)
    assert_close(got, expected)


def test_average_inside_a_stack_weights_only_the_averaged_prefixes(inputs):
    """Stack("a", Average("b", "c", weights=[1, 1], unnormalized)): keys [k_b + k_c; k_a; own]."""
    model, prefixes = _two_prefixes(lengths=(2, 3))
    model.add_adapter("c", config=PrefixTuningConfig(prefix_length=3, flat=True))
    randomize_adapter(model, "c", std=0.3, seed=2)
    kc, vc = _flat_prefix(model.prefix_tuning.prefix_tunings["c"]["self_prefix"], 4, 8)
    model.set_active_adapters(Stack("a", adapters.Average("b", "c", weights=[1, 1], normalize_weights=False)))
    (ka, va), (kb, vb) = prefixes["a"], prefixes["b"]
    with torch.no_grad():
        got = model(**inputs).last_hidden_state
        x = model.embeddings(input_ids=inputs["input_ids"])
        keys, values = torch.cat([kb + kc, ka], dim=2), torch.cat([vb + vc, va], dim=2)
        expected = _bert_layer(model.encoder.layer[0], x, inputs["attention_mask"], keys, values)
    assert_close(got, expected)


def test_average_of_one_prefix_is_its_weighted_prefix(inputs):
    """Stack("b", Average("a", weights=[0.5], unnormalized)): keys [0.5 k_a; k_b] (a lone child is weighted too)."""
    model, prefixes = _two_prefixes(lengths=(3, 2))
    (ka, va), (kb, vb) = prefixes["a"], prefixes["b"]
    x = model.embeddings(input_ids=inputs["input_ids"])
    for setup, keys, values in (
        (adapters.Average("a"), ka, va),  # normalized: the weight of a lone child is 1
        (adapters.Average("a", weights=[0.5], normalize_weights=False), 0.5 * ka, 0.5 * va),
        (
            Stack("b", adapters.Average("a", weights=[0.5], normalize_weights=False)),
            torch.cat([0.5 * ka, kb], dim=2),
            torch.cat([0.5 * va, vb], dim=2),
        ),
    ):
        model.set_active_adapters(setup)
        with torch.no_grad():
            got = model(**inputs).last_hidden_state
            expected = _bert_layer(model.encoder.layer[0], x, inputs["attention_mask"], keys, values)
        assert_close(got, expected)


def test_average_of_a_prefix_and_a_child_adding_none_is_refused(inputs):
    """Average sums prefixes position by position: a child without one has nothing to add (weights=[0, 1]
    would leave zero keys, not the second adapter), so activation refuses it."""
    model, _ = _two_prefixes(lengths=(3, 3))
    model.add_adapter("l", config="lora")
    model.set_active_adapters("a")
    for setup in (
        adapters.Average("a", "l"),
        adapters.Average("l", Stack("a", "b")),
        Stack("b", adapters.Average("l", "a")),
    ):
        with pytest.raises(CompositionError, match="adds no prefix"):
            model.set_active_adapters(setup)
    assert model.active_adapters == Stack("a")
    model.set_active_adapters(adapters.Average(Stack("l", "a"), "b"))  # every child adds 3 positions


def test_batch_split_of_stacks_pads_to_the_longest(inputs):
    """BatchSplit(Stack("a", "b"), "b"): example 0 sees [b; a] (7 positions), example 1 only b (5)."""
    model, prefixes = _two_prefixes()
    model.set_active_adapters(adapters.BatchSplit(Stack("a", "b"), "b", batch_sizes=[1, 1]))
    (ka, va), (kb, vb) = prefixes["a"], prefixes["b"]
    with torch.no_grad():
        got = model(**inputs).last_hidden_state
        x, mask, layer = (
            model.embeddings(input_ids=inputs["input_ids"]),
            inputs["attention_mask"],
            model.encoder.layer[0],
        )
        first = _bert_layer(layer, x[:1], mask[:1], torch.cat([kb, ka], dim=2), torch.cat([vb, va], dim=2))
        second = _bert_layer(layer, x[1:], mask[1:], kb, vb)
    assert_close(got, torch.cat([first, second]))


def test_prefix_composition_errors(inputs):
    model, _ = _two_prefixes(lengths=(2, 3))
    model.set_active_adapters("a")
    with pytest.raises(CompositionError, match="prefix_length"):
        model.set_active_adapters(adapters.Average("a", "b"))
    with pytest.raises(CompositionError, match="Split"):
        model.set_active_adapters(adapters.Split("a", "b", splits=[3, 4]))
    assert model.active_adapters == Stack("a")
    model.set_active_adapters(adapters.BatchSplit("a", "b", batch_sizes=[1, 2]))
    with pytest.raises(CompositionError, match="batch size 2"):
        model(**inputs)


@pytest.mark.parametrize(
    "model_type", ["distilbert", "deberta", "deberta-v2", "albert", "xlm-roberta", "llama", "gemma2", "vit"]
)
def test_batch_split_and_parallel_of_prefixes_of_different_lengths_equal_separate_runs(model_type):
    """Models with their own attention code (DeBERTa's projections), causal decoders and ViT: the padding
    of the shorter prefix is never seen, so each example (each copy) is what it is alone."""
    model, inputs = _tiny_model(model_type)
    adapters.init(model)
    for seed, (name, length) in enumerate((("a", 2), ("b", 5))):
        model.add_adapter(name, config=PrefixTuningConfig(prefix_length=length, bottleneck_size=8))
        randomize_adapter(model, name, std=0.3, seed=seed)

    def run(setup, rows=slice(None)):
        model.set_active_adapters(setup)
        with torch.no_grad():
            return model(**{k: v[rows] for k, v in inputs.items()})[0]

    alone = {name: run(name) for name in "ab"}
    split = run(adapters.BatchSplit("b", "a", batch_sizes=[1, 1]))
    assert_close(split, torch.cat([run("b", slice(0, 1)), run("a", slice(1, 2))]))
    parallel = run(adapters.Parallel("a", "b"))
    assert_close(parallel, torch.cat([alone["a"], alone["b"]]))


def _tiny_model(model_type):
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    generator = torch.Generator().manual_seed(5)
    if model_type == "vit":
        config = AutoConfig.for_model("vit", image_size=16, patch_size=8, num_channels=3, **small)
        return AutoModel.from_config(config).eval(), {"pixel_values": torch.randn(2, 3, 16, 16, generator=generator)}
    extra = {"num_key_value_heads": 2, "head_dim": 8} if model_type in ("llama", "gemma2") else {}
    if model_type == "distilbert":
        small = dict(dim=32, n_layers=2, n_heads=4, hidden_dim=37)
    config = AutoConfig.for_model(model_type, vocab_size=100, max_position_embeddings=64, **small, **extra)
    input_ids = torch.randint(3, 100, (2, 7), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[1, :2] = 0  # padded (left for decoders, which is where generation pads)
    return AutoModel.from_config(config).eval(), {"input_ids": input_ids, "attention_mask": mask}


def _prompt_model(configs, model_class=BertModel, **overrides):
    torch.manual_seed(0)
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=100)
    model = model_class(BertConfig(**{**sizes, **overrides})).eval()
    adapters.init(model)
    for seed, (name, config) in enumerate(configs.items()):
        model.add_adapter(name, config=config)
        randomize_adapter(model, name, seed=seed)
    return model


def test_prompt_batch_split_gives_each_example_its_prompt_by_hand(inputs):
    """BatchSplit("a", "b"): example 0 = the layer over [p_a; e_0], example 1 over [e_1,0; p_b; e_1,1..]."""
    model = _prompt_model(
        {
            "a": PromptTuningConfig(prompt_length=3),
            "b": PromptTuningConfig(prompt_length=3, combine="prefix_after_bos"),
        },
        num_hidden_layers=1,
    )
    prompts = {n: model.prompt_tuning.prompt_tunings[n].prompt_embedding.weight[None] for n in "ab"}
    model.set_active_adapters(adapters.BatchSplit("a", "b", batch_sizes=[1, 1]))
    with torch.no_grad():
        got = model(**inputs).last_hidden_state
        model.set_active_adapters(None)
        e, mask = model.embeddings(input_ids=inputs["input_ids"]), inputs["attention_mask"]
        ones = torch.ones(1, 3, dtype=mask.dtype)
        x0, m0 = torch.cat([prompts["a"], e[:1]], dim=1), torch.cat([ones, mask[:1]], dim=1)
        x1 = torch.cat([e[1:, :1], prompts["b"], e[1:, 1:]], dim=1)
        m1 = torch.cat([mask[1:, :1], ones, mask[1:, 1:]], dim=1)
        layer = model.encoder.layer[0]
        expected = torch.cat([_bert_layer(layer, x0, m0), _bert_layer(layer, x1, m1)])
    assert_close(got, expected)


def test_prompt_parallel_gives_each_copy_its_prompt(inputs):
    """Parallel("a", "b"): the batch twice, each copy with its branch's prompt and the extended mask."""
    model = _prompt_model({"a": PromptTuningConfig(prompt_length=3), "b": PromptTuningConfig(prompt_length=3)})
    with torch.no_grad():
        alone = []
        for name in "ab":
            model.set_active_adapters(name)
            alone.append(model(**inputs).last_hidden_state)
        model.set_active_adapters(adapters.Parallel("a", "b"))
        got = model(**inputs).last_hidden_state
        model.set_active_adapters(None)
        with adapters.AdapterSetup(adapters.Parallel("b", "a")):
            swapped = model(**inputs).last_hidden_state
    assert got.shape == (4, 10, 32)
    assert_close(got, torch.cat(alone))
    assert_close(swapped, torch.cat(alone[::-1]))


def test_prompt_batch_split_pads_each_examples_labels_at_its_prompt():
    """Token labels get -100 where each example's own prompt sits (position 0 or after [CLS])."""
    model = _prompt_model(
        {
            "a": PromptTuningConfig(prompt_length=2),
            "b": PromptTuningConfig(prompt_length=2, combine="prefix_after_bos"),
        },
        model_class=BertForTokenClassification,
        num_labels=3,
    )
    ids = torch.randint(3, 100, (3, 5), generator=torch.Generator().manual_seed(4))
    labels = torch.randint(0, 3, (3, 5), generator=torch.Generator().manual_seed(2))
    model.set_active_adapters(adapters.BatchSplit("a", "b", batch_sizes=[2, 1]))
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    logits = torch.cat([out.logits[:2, 2:], out.logits[2:, [0, 3, 4, 5, 6]]])  # the input tokens' positions
    assert_close(out.loss, F.cross_entropy(logits.reshape(-1, 3), labels.reshape(-1)))


def test_prompt_composition_errors(inputs):
    model = _prompt_model(
        {
            "a": PromptTuningConfig(prompt_length=3),
            "b": PromptTuningConfig(prompt_length=4),
            "c": PromptTuningConfig(prompt_length=3, combine="prefix_after_bos"),
            "l": "lora",
        }
    )
    model.set_active_adapters("a")
    with pytest.raises(CompositionError, match="prompt_length"):
        model.set_active_adapters(adapters.BatchSplit("a", "b", batch_sizes=[1, 1]))
    with pytest.raises(CompositionError, match="every branch"):
        model.set_active_adapters(adapters.Parallel("a", "l"))
    with pytest.raises(CompositionError, match="combine"):
        model.set_active_adapters(adapters.Parallel("a", "c"))
    with pytest.raises(CompositionError, match="first in a branch"):
        model.set_active_adapters(adapters.Parallel(Stack("l", "a"), "c"))
    with pytest.raises(CompositionError, match="Average"):
        model.set_active_adapters(adapters.Average("a", "c"))
    assert model.active_adapters == Stack("a")
    model.set_active_adapters(adapters.BatchSplit("a", Stack("c", "l"), batch_sizes=[1, 1]))  # lengths agree
    model.set_active_adapters(adapters.BatchSplit("a", "c", batch_sizes=[2, 1]))
    with pytest.raises(CompositionError, match="batch size 2"):
        model(**inputs)


def test_the_prefix_mlp_runs_once_without_autograd_until_a_parameter_changes(inputs):
    """Generation calls the model per token: without autograd the prefix is computed once, then reused."""
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", config=PrefixTuningConfig(prefix_length=5, bottleneck_size=16), set_active=True)
    randomize_adapter(model, "a", std=0.3)
    prefix = model.prefix_tuning.prefix_tunings["a"]["self_prefix"]
    calls = []
    prefix.control_trans[0].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        first = model(**inputs).last_hidden_state
        assert len(calls) == 2  # one per layer
        assert torch.equal(model(**inputs).last_hidden_state, first) and len(calls) == 2
        prefix.wte.weight.mul_(2.0)  # an in-place change (an optimizer step, a load): computed again
        changed = model(**inputs).last_hidden_state
    assert len(calls) == 4 and not torch.allclose(changed, first)
    with torch.inference_mode():
        assert_close(model(**inputs).last_hidden_state, changed)
    # With autograd (training), every pass computes it, so gradients reach the MLP.
    model.train_adapter("a")
    model(**inputs).last_hidden_state.sum().backward()
    assert prefix.wte.weight.grad is not None
