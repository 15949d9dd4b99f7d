"""Encoder-decoder AdapterModel classes: heads, static checkpoints, generate, head files."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file
from tiny_seq2seq import CONFIGS, VOCAB, config, generation_model

import adapters
from adapters import AutoAdapterModel, LoRAConfig
from adapters.errors import AdapterConfigError, AdapterLoadError
from adapters.heads.language_modeling import body_cache
from adapters.testing import assert_close, randomize_adapter

MODEL_TYPES = sorted(CONFIGS)
LORA = LoRAConfig(r=4, alpha=8, attn_matrices=("q", "k", "v"), intermediate_lora=True, output_lora=True)


@pytest.fixture(autouse=True)
def _quiet_transformers():
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity_warning()


def config_of(model_type: str, **overrides):
    model_config = config(model_type)
    for key, value in overrides.items():
        setattr(model_config, key, value)
    return model_config


def tiny(model_type: str, **overrides):
    torch.manual_seed(0)
    return AutoAdapterModel.from_config(config_of(model_type, **overrides)).eval()


def batch(model_type: str) -> dict[str, torch.Tensor]:
    """Two sources, each ending in <eos> (the second padded after it), and decoder inputs of another length."""
    eos, pad = CONFIGS[model_type][1]["eos_token_id"], CONFIGS[model_type][1]["pad_token_id"]
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, VOCAB, (2, 7), generator=generator)
    input_ids[0, -1] = eos
    input_ids[1, -3], input_ids[1, -2:] = eos, pad
    mask = (input_ids != pad).long()
    return {"input_ids": input_ids, "attention_mask": mask}


def decoder_states(model, inputs) -> torch.Tensor:
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(inputs["input_ids"])
    return model.base_model(**inputs, decoder_input_ids=decoder_input_ids).last_hidden_state


# -- the classes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_adapter_model_class_with_every_head_type(model_type, tmp_path):
    model = tiny(model_type)
    name = type(model).__name__
    assert name.endswith("AdapterModel") and getattr(adapters, name) is type(model)
    assert type(model).can_generate()
    model.add_adapter("a", config="seq_bn", set_active=True)
    model.save_adapter(tmp_path, "a")
    prefix = model.base_model_prefix
    assert all(key.startswith(f"{prefix}.") for key in load_file(tmp_path / "adapter.safetensors"))
    inputs = batch(model_type)
    model.add_classification_head("cls", num_labels=3)
    out = model(**inputs, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.loss.dim() == 0
    model.add_classification_head("ml", num_labels=4, multilabel=True)
    assert model(**inputs, labels=torch.ones(2, 4)).loss.dim() == 0
    model.add_qa_head("qa")
    out = model(**inputs, start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([3, 4]))
    assert out.start_logits.shape == (2, 7) and out.loss.dim() == 0
    model.add_seq2seq_lm_head("lm")
    labels = torch.randint(3, VOCAB, (2, 5))
    out = model(**inputs, labels=labels)
    assert out.logits.shape == (2, 5, VOCAB) and out.loss.requires_grad
    assert model.heads["lm"][0].weight is model.get_input_embeddings().weight
    for head_type in ("tagging", "multiple_choice"):
        with pytest.raises(AdapterConfigError, match=head_type):
            getattr(model, f"add_{head_type}_head")("x")


@pytest.mark.parametrize("model_type", ["t5", "bart", "mbart"])
@torch.no_grad()
def test_classification_reads_the_decoder_state_at_the_last_eos(model_type):
    model = tiny(model_type)
    model.add_classification_head("c", num_labels=3)
    inputs = batch(model_type)
    states = decoder_states(model, inputs)
    rows = torch.stack([states[0, -1], states[1, -3]])  # unscaled, also for T5
    head = model.heads["c"]
    expected = head[4](torch.tanh(head[1](rows)))  # dropout, dense, tanh, dropout, out (eval)
    assert_close(model(**inputs).logits, expected)
    inputs["input_ids"][0, 2] = model.config.eos_token_id  # another <eos> in one row only
    with pytest.raises(ValueError, match="same number of <eos>"):
        model(**inputs)
    with pytest.raises(AdapterConfigError, match="decoder_input_ids"):
        model(**batch(model_type), decoder_input_ids=torch.ones(2, 3, dtype=torch.long))


@pytest.mark.parametrize(("model_type", "scaled"), [("t5", True), ("mt5", False), ("bart", False)])
@torch.no_grad()
def test_lm_and_qa_heads_read_the_decoder_output_rescaled_where_t5_ties(model_type, scaled):
    model = tiny(model_type)
    model.add_seq2seq_lm_head("lm")
    model.add_qa_head("qa", layers=1)
    inputs = batch(model_type)
    labels = torch.randint(3, VOCAB, (2, 4))
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels)
    states = model.base_model(**inputs, decoder_input_ids=decoder_input_ids).last_hidden_state
    if scaled:
        states = states * model.config.d_model**-0.5
    logits = states @ model.get_input_embeddings().weight.T
    out = model(**inputs, labels=labels, head="lm")
    assert_close(out.logits, logits)
    assert_close(out.loss, torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.view(-1)))
    qa = model.heads["qa"][1]
    start = model(**inputs, decoder_input_ids=decoder_input_ids, head="qa").start_logits
    assert_close(start, qa(states)[..., 0])


# -- static checkpoints --------------------------------------------------------------------------
STATIC_CASES = [
    ("t5", "T5ForConditionalGeneration", "logits", {}),
    ("t5", "T5ForConditionalGeneration", "logits", {"scale_decoder_outputs": False}),  # T5 v1.1 / flan-T5
    ("t5", "T5ForSequenceClassification", "logits", {}),
    ("t5", "T5ForQuestionAnswering", "start_logits", {}),  # weight folded: the flexible QA head reads it scaled
    ("mt5", "MT5ForConditionalGeneration", "logits", {}),
    ("mt5", "MT5ForQuestionAnswering", "end_logits", {}),
    ("bart", "BartForConditionalGeneration", "logits", {}),
    ("bart", "BartForSequenceClassification", "logits", {}),
    ("bart", "BartForQuestionAnswering", "start_logits", {}),
    ("mbart", "MBartForConditionalGeneration", "logits", {}),
    ("mbart", "MBartForSequenceClassification", "logits", {}),
    ("mbart", "MBartForQuestionAnswering", "end_logits", {}),
    ("plbart", "PLBartForConditionalGeneration", "logits", {}),
    ("plbart", "PLBartForSequenceClassification", "logits", {}),
]


@pytest.mark.parametrize(
    ("model_type", "class_name", "key", "overrides"),
    STATIC_CASES,
    ids=[f"{c[1]}{'-' + '-'.join(c[3]) if c[3] else ''}" for c in STATIC_CASES],
)
@torch.no_grad()
def test_static_checkpoint_converts_with_identical_logits(tmp_path, model_type, class_name, key, overrides):
    torch.manual_seed(0)
    labels = 2 if "Question" in class_name else 3
    static = getattr(transformers, class_name)(config_of(model_type, num_labels=labels, **overrides)).eval()
    inputs = batch(model_type)
    if "Generation" in class_name:
        inputs["labels"] = torch.randint(3, VOCAB, (2, 5))
    expected = static(**inputs)
    static.save_pretrained(tmp_path / "static")
    model = AutoAdapterModel.from_pretrained(tmp_path / "static").eval()
    assert model.active_head == "default"
    # The flexible head is another computation of the static one's outputs (the folded T5 QA weight, the
    # sequence classifier's pick-then-project order, the LM head's own modules): equal up to rounding.
    got = model(**inputs)
    assert_close(got[key], expected[key])
    if "labels" in inputs:
        assert_close(got.loss, expected.loss)
    model.save_pretrained(tmp_path / "flex")
    again = AutoAdapterModel.from_pretrained(tmp_path / "flex").eval()
    assert_close(again(**inputs)[key], expected[key])


# -- generate ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["t5", "bart", "mbart"])
@torch.no_grad()
def test_generate_with_the_seq2seq_lm_head_matches_the_static_model(model_type, tmp_path):
    static = generation_model(model_type)
    static.generation_config.eos_token_id = None  # never stop early
    static.generation_config.forced_eos_token_id = None
    static.save_pretrained(tmp_path / "static")
    adapters.init(static)
    static.add_adapter("a", config=LORA)
    randomize_adapter(static, "a")
    static.save_adapter(tmp_path / "a", "a")
    static.set_active_adapters("a")

    model = AutoAdapterModel.from_pretrained(tmp_path / "static").eval()
    model.generation_config = static.generation_config
    model.load_adapter(tmp_path / "a", set_active=True)
    inputs = batch(model_type)
    options = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    ours, theirs = model.generate(**inputs, **options), static.generate(**inputs, **options)
    assert ours.sequences.tolist() == theirs.sequences.tolist()
    for got, expected in zip(ours.logits, theirs.logits, strict=True):
        assert_close(got, expected)
    start = torch.full((2, 1), model.config.decoder_start_token_id)
    # the cache reaches generate
    assert body_cache(model(**inputs, decoder_input_ids=start, use_cache=True)) is not None


def test_a_bart_head_with_a_non_zero_final_logits_bias_is_refused_by_the_flexible_head(tmp_path):
    # The flexible seq2seq_lm head has no bias: BART's final_logits_bias loads only as zeros (above).
    static = generation_model("bart")
    static.save_pretrained(tmp_path / "static")
    adapters.init(static)
    static.add_adapter("a", config=LORA)
    with torch.no_grad():
        static.final_logits_bias[0, 3] = 1.0
    static.save_adapter(tmp_path / "a", "a")
    model = AutoAdapterModel.from_pretrained(tmp_path / "static")  # its LM head converted as "default"
    with pytest.raises(AdapterLoadError, match=r"non-zero final_logits_bias.*BartForConditionalGeneration"):
        model.load_adapter(tmp_path / "a")
    assert "a" not in model.adapters_state.configs and list(model.heads) == ["default"]


def test_generate_needs_one_seq2seq_lm_head():
    model = tiny("t5")
    inputs = batch("t5")
    with pytest.raises(AdapterConfigError, match="seq2seq LM head"):
        model.generate(**inputs, max_new_tokens=2)
    model.add_classification_head("c")
    with pytest.raises(AdapterConfigError, match="not seq2seq_lm"):
        model.generate(**inputs, max_new_tokens=2)
    model.add_seq2seq_lm_head("lm")
    model.active_head = "c"
    assert model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, head="lm").shape == (2, 3)


# -- head files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["t5", "bart"])
@torch.no_grad()
def test_heads_save_with_their_adapter_in_the_reference_format(model_type, tmp_path):
    model = tiny(model_type)
    model.add_adapter("task", config="lora")
    model.add_classification_head("task", num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    model.add_seq2seq_lm_head("lm")
    randomize_adapter(model, "task")
    model.set_active_adapters("task")
    inputs = batch(model_type)
    expected = model(**inputs).logits
    lm_expected = model(**inputs, head="lm").logits
    model.save_adapter(tmp_path / "task", "task")
    model.save_head(tmp_path / "lm", "lm")
    data = json.loads((tmp_path / "task" / "head_config.json").read_text())
    assert data["model_class"] == type(model).__name__ and data["model_type"] == model_type
    assert data["config"]["head_type"] == "classification" and data["name"] == "task"
    assert set(load_file(tmp_path / "task" / "model_head.safetensors")) == {
        f"heads.task.{k}" for k in ("1.weight", "1.bias", "4.weight", "4.bias")
    }
    lm = json.loads((tmp_path / "lm" / "head_config.json").read_text())["config"]
    assert lm["head_type"] == "seq2seq_lm" and lm["layers"] == 1 and lm["vocab_size"] == VOCAB

    fresh = tiny(model_type)
    assert fresh.load_adapter(tmp_path / "task", set_active=True) == "task"
    assert fresh.load_head(tmp_path / "lm") == "lm"
    assert fresh.heads["lm"][0].weight is fresh.get_input_embeddings().weight
    # The same model with the very weights (saved, loaded back) on the same inputs: the same computation.
    assert torch.equal(fresh(**inputs, head="task").logits, expected)
    assert torch.equal(fresh(**inputs, head="lm").logits, lm_expected)


@pytest.mark.parametrize("model_type", ["t5", "bart"])
@torch.no_grad()
def test_parallel_heads_each_read_their_branch(model_type):
    model = tiny(model_type)
    for seed, name in enumerate("ab"):
        model.add_adapter(name, config="seq_bn")
        randomize_adapter(model, name, seed=seed)
        model.add_classification_head(name, num_labels=2)
    inputs = batch(model_type)
    alone = []
    for name in "ab":
        model.set_active_adapters(name)
        alone.append(model(**inputs).logits)
    model.set_active_adapters(adapters.Parallel("a", "b"))
    out = model(**inputs)
    assert len(out) == 2
    # Float sums in another order: one adapter on a pre-LN block hands back branch + h, a Parallel
    # block (branch + h + x) - x (as the conformance suite's Parallel check).
    for got, expected in zip(out, alone, strict=True):
        assert_close(got.logits, expected)
