"""Decoder AdapterModel classes: last-token heads, static checkpoints, generate, head files, Parallel."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file
from tiny_decoders import CONFIGS, causal_lm

import adapters
from adapters import AutoAdapterModel, LoRAConfig, Parallel
from adapters.errors import AdapterConfigError
from adapters.heads import MultiHeadOutput, last_token_states
from adapters.heads.language_modeling import body_cache
from adapters.testing import assert_close, randomize_adapter

MODEL_TYPES = sorted(CONFIGS)
PAD = 0


@pytest.fixture(autouse=True)
def _quiet_transformers():
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity_warning()


def config_of(model_type: str, **overrides):
    config = CONFIGS[model_type]()
    config.pad_token_id = PAD
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def tiny(model_type: str, **overrides):
    torch.manual_seed(0)
    return AutoAdapterModel.from_config(config_of(model_type, **overrides)).eval()


def padded_batch(side: str = "right") -> dict[str, torch.Tensor]:
    """Two rows; the second has two pad tokens on ``side``."""
    input_ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(input_ids)
    cut = slice(-2, None) if side == "right" else slice(0, 2)
    input_ids[1, cut] = PAD
    mask[1, cut] = 0
    return {"input_ids": input_ids, "attention_mask": mask}


def body_states(model, inputs) -> torch.Tensor:
    return model.base_model(**inputs).last_hidden_state


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
    inputs = padded_batch()
    model.add_classification_head("cls", num_labels=3)
    assert model(**inputs).logits.shape == (2, 3)
    model.add_classification_head("ml", num_labels=4, multilabel=True)
    assert model(**inputs, labels=torch.ones(2, 4)).loss.dim() == 0
    model.add_tagging_head("tag", num_labels=5)
    assert model(**inputs).logits.shape == (2, 7, 5)
    model.add_qa_head("qa")
    out = model(**inputs, start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([3, 4]))
    assert out.start_logits.shape == (2, 7) and out.loss.dim() == 0
    model.add_causal_lm_head("lm")
    out = model(**inputs, labels=inputs["input_ids"])
    assert out.logits.shape == (2, 7, 100) and out.loss.requires_grad
    with pytest.raises(AdapterConfigError, match="multiple_choice"):
        model.add_multiple_choice_head("mc")


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_classification_reads_the_last_non_padding_token(model_type, side):
    model = tiny(model_type)
    model.add_classification_head("c", num_labels=3)
    inputs = padded_batch(side)
    labels = torch.tensor([0, 2])
    out = model(**inputs, labels=labels)
    head = model.heads["c"]
    states = body_states(model, inputs)
    rows = torch.stack([states[0, -1], states[1, -1] if side == "left" else states[1, -3]])
    expected = head[4](torch.tanh(head[1](rows)))  # dropout, dense, tanh, dropout, out (eval)
    assert_close(out.logits, expected)
    assert_close(out.loss, torch.nn.functional.cross_entropy(expected, labels))


def test_without_pad_id_the_attention_mask_marks_the_last_token():
    model = tiny("llama", pad_token_id=None)
    model.add_classification_head("c", num_labels=2, layers=1, activation_function=None)
    inputs = padded_batch("right")
    states = body_states(model, inputs)
    expected = model.heads["c"][1](torch.stack([states[0, -1], states[1, -3]]))
    assert_close(model(**inputs).logits, expected)
    embeds = model.get_input_embeddings()(inputs["input_ids"])  # no ids: still the mask
    assert_close(model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits, expected)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_prompt_tuning_shifts_the_last_token(model_type):
    model = tiny(model_type)
    model.add_adapter("p", config="prompt_tuning[prompt_length=3]", set_active=True)
    randomize_adapter(model, "p")
    model.add_classification_head("p", num_labels=2, layers=1, activation_function=None)
    inputs = padded_batch("right")
    states = body_states(model, inputs)
    assert states.shape[1] == 3 + 7
    expected = model.heads["p"][1](torch.stack([states[0, -1], states[1, -3]]))
    assert_close(model(**inputs).logits, expected)


def test_last_token_states_follows_inserted_and_cached_positions():
    hidden = torch.arange(2 * 5 * 1.0).view(2, 5, 1)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # Rows picked out of hidden (no arithmetic): the very values.
    # a 2-vector prompt in front: positions shift by 2
    assert torch.equal(last_token_states(hidden, mask), torch.tensor([[3.0], [9.0]]))
    ids = torch.tensor([[5, 6, 0], [0, 5, 6]])
    assert torch.equal(last_token_states(hidden[:, :3], None, ids, 0), torch.tensor([[1.0], [7.0]]))
    # one new token against a cache: the last position
    assert torch.equal(last_token_states(hidden[:, -1:], torch.ones(2, 6)), hidden[:, -1])
    # Parallel: the hidden rows are copies of the batch
    assert torch.equal(last_token_states(hidden[:, :3].repeat(2, 1, 1), mask)[2:], torch.tensor([[1.0], [7.0]]))


# -- static checkpoints --------------------------------------------------------------------------
STATIC_CASES = [
    ("llama", "LlamaForCausalLM", "logits", {}),
    ("llama", "LlamaForCausalLM", "logits", {"tie_word_embeddings": True}),
    ("llama", "LlamaForQuestionAnswering", "start_logits", {}),  # its body is "transformer"
    ("llama", "LlamaForTokenClassification", "logits", {}),
    ("mistral", "MistralForSequenceClassification", "logits", {}),
    ("mistral", "MistralForQuestionAnswering", "end_logits", {}),
    ("qwen2", "Qwen2ForSequenceClassification", "logits", {}),
    ("qwen2", "Qwen2ForCausalLM", "logits", {}),
    ("qwen3", "Qwen3ForTokenClassification", "logits", {}),
    ("qwen3", "Qwen3ForQuestionAnswering", "start_logits", {}),
    ("gemma2", "Gemma2ForCausalLM", "logits", {}),  # tied, logits soft-capped
    ("gemma2", "Gemma2ForSequenceClassification", "logits", {}),
    ("gemma3_text", "Gemma3ForCausalLM", "logits", {"final_logit_softcapping": 5.0}),
    ("gemma3_text", "Gemma3TextForSequenceClassification", "logits", {}),
    ("gptj", "GPTJForCausalLM", "logits", {}),  # lm_head with bias
    ("gptj", "GPTJForSequenceClassification", "logits", {}),
    # Two labels: older transformers sized GPT-J's qa_outputs by num_labels (a static model with 3 cannot run).
    ("gptj", "GPTJForQuestionAnswering", "start_logits", {"num_labels": 2}),
    ("gpt2", "GPT2LMHeadModel", "logits", {}),
    ("gpt2", "GPT2ForSequenceClassification", "logits", {}),
    ("gpt2", "GPT2ForTokenClassification", "logits", {}),
    ("gpt2", "GPT2ForQuestionAnswering", "end_logits", {}),
]


@pytest.mark.parametrize(
    ("model_type", "class_name", "key", "overrides"),
    [c for c in STATIC_CASES if c[0] in CONFIGS],
    ids=[f"{c[1]}{'-' + '-'.join(c[3]) if c[3] else ''}" for c in STATIC_CASES if c[0] in CONFIGS],
)
def test_static_checkpoint_converts_with_identical_logits(tmp_path, model_type, class_name, key, overrides):
    torch.manual_seed(0)
    static = getattr(transformers, class_name)(config_of(model_type, **{"num_labels": 3, **overrides})).eval()
    inputs = padded_batch("left" if "Sequence" in class_name else "right")
    expected = static(**inputs)[key]
    static.save_pretrained(tmp_path / "static")
    model = AutoAdapterModel.from_pretrained(tmp_path / "static").eval()
    assert model.active_head == "default"
    # The flexible head is another computation of the static one's logits (a sequence classifier projects
    # every position, then picks one; ours the other way round): equal up to rounding.
    assert_close(model(**inputs)[key], expected)
    projection = model.heads["default"].get_output_embeddings()
    if projection is not None:
        tied = model.config.tie_word_embeddings
        assert (projection.weight is model.get_input_embeddings().weight) == tied
    model.save_pretrained(tmp_path / "flex")
    own = set(model.heads["default"].state_dict()) - model.tied_head_params("default")
    assert {f"heads.default.{k}" for k in own} <= set(load_file(tmp_path / "flex" / "model.safetensors"))
    again = AutoAdapterModel.from_pretrained(tmp_path / "flex").eval()
    assert_close(again(**inputs)[key], expected)


# -- generate ------------------------------------------------------------------------------------
LORA = LoRAConfig(r=4, alpha=8, attn_matrices=("q", "k", "v"), intermediate_lora=True, output_lora=True)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@torch.no_grad()
def test_generate_with_the_causal_lm_head_matches_the_static_model(model_type, tmp_path):
    torch.manual_seed(0)
    static = causal_lm(model_type).eval()
    static.generation_config.eos_token_id = None  # never stop early
    static.generation_config.pad_token_id = 0
    static.save_pretrained(tmp_path / "static")
    adapters.init(static)
    static.add_adapter("a", config=LORA)
    randomize_adapter(static, "a")
    static.save_adapter(tmp_path / "a", "a")
    static.set_active_adapters("a")

    model = AutoAdapterModel.from_pretrained(tmp_path / "static").eval()
    model.generation_config = static.generation_config
    model.load_adapter(tmp_path / "a", set_active=True)
    prompt = padded_batch("left")
    options = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    ours, theirs = model.generate(**prompt, **options), static.generate(**prompt, **options)
    assert ours.sequences.tolist() == theirs.sequences.tolist()
    for got, expected in zip(ours.logits, theirs.logits, strict=True):
        assert_close(got, expected)
    assert body_cache(model(**prompt, use_cache=True)) is not None  # the KV cache reaches generate


def test_generate_needs_a_causal_lm_head():
    model = tiny("llama")
    with pytest.raises(AdapterConfigError, match="causal LM head"):
        model.generate(**padded_batch(), max_new_tokens=2)
    model.add_classification_head("c")
    with pytest.raises(AdapterConfigError, match="not causal_lm"):
        model.generate(**padded_batch(), max_new_tokens=2)
    model.add_causal_lm_head("lm")
    model.active_head = "c"
    assert model.generate(**padded_batch("left"), max_new_tokens=2, head="lm").shape == (2, 9)


# -- head files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["gemma2", "llama", "gpt2"])
def test_heads_save_with_their_adapter_in_the_reference_format(model_type, tmp_path):
    model = tiny(model_type)
    model.add_adapter("task", config="lora")
    model.add_classification_head("task", num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    model.add_causal_lm_head("lm")
    randomize_adapter(model, "task")
    model.set_active_adapters("task")
    inputs = padded_batch()
    expected = model(**inputs).logits
    lm_expected = model(**inputs, head="lm").logits
    model.save_adapter(tmp_path / "task", "task")
    model.save_head(tmp_path / "lm", "lm")
    data = json.loads((tmp_path / "task" / "head_config.json").read_text())
    assert data["model_class"] == type(model).__name__ and data["model_type"] == model_type
    assert data["config"]["head_type"] == "classification" and data["name"] == "task"
    assert set(load_file(tmp_path / "task" / "model_head.safetensors")) == {
        f"heads.task.{i}.{p}" for i in (1, 4) for p in ("weight", "bias")
    }
    lm_keys = set(load_file(tmp_path / "lm" / "model_head.safetensors"))
    tied = model.config.tie_word_embeddings
    assert ("heads.lm.3.weight" in lm_keys) != tied  # a tied projection belongs to the body
    lm_config = json.loads((tmp_path / "lm" / "head_config.json").read_text())["config"]
    assert ("logit_softcapping" in lm_config) == (model_type == "gemma2")

    other = tiny(model_type)
    other.load_adapter(tmp_path / "task", set_active=True)
    assert other.active_head == "task" and other.get_labels() == ["a", "b", "c"]
    # The same model with the very weights (saved, loaded back) on the same inputs: the same computation.
    assert torch.equal(other(**inputs).logits, expected)
    other.load_head(tmp_path / "lm")
    assert (other.heads["lm"][3].weight is other.get_input_embeddings().weight) == tied
    assert torch.equal(other(**inputs, head="lm").logits, lm_expected)


def test_parallel_gives_one_output_per_head():
    model = tiny("qwen2")
    for name, labels in (("a", 2), ("b", 3)):
        model.add_adapter(name, config="seq_bn")
        model.add_classification_head(name, num_labels=labels)
        randomize_adapter(model, name, seed=len(name) + labels)
    inputs = padded_batch("left")
    single = {}
    for name in "ab":
        model.set_active_adapters(name)
        single[name] = model(**inputs).logits
    model.set_active_adapters(Parallel("a", "b"))
    out = model(**inputs, labels=torch.tensor([0, 1]))
    assert isinstance(out, MultiHeadOutput) and len(out) == 2
    assert_close(out[0].logits, single["a"])
    assert_close(out[1].logits, single["b"])
    assert_close(out.loss, out[0].loss + out[1].loss)
