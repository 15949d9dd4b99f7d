"""Flexible heads and AdapterModel classes: head types, save/load, reference files, static checkpoints.

Reference files (``fixtures/reference/heads/``) were written by the reference library with
``make_head_fixtures.py``; the same script's ``--check`` loads ours there (``nox -s
reference_roundtrip``, with ``fixtures/reference/export_our_heads.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import (
    AlbertConfig,
    BertConfig,
    BertGenerationConfig,
    DebertaConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    RobertaConfig,
    XLMRobertaConfig,
    XmodConfig,
)

import adapters
from adapters import AdapterSetup, AutoAdapterModel, BatchSplit, Parallel
from adapters.errors import AdapterConfigError, AdapterLoadError, AdapterNameError, CompositionError
from adapters.heads import MultiHeadOutput, PredictionHead, register_head
from adapters.testing import CROSS_LIBRARY_ULPS, assert_close

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
HEAD_FIXTURES = FIXTURES / "heads"
HEAD_CASES = sorted(json.loads((HEAD_FIXTURES / "manifest.json").read_text())["cases"])

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=100,
    max_position_embeddings=64,
)  # fmt: skip
DEBERTA = dict(relative_attention=True, max_relative_positions=-1, position_biased_input=False, type_vocab_size=0)
CONFIGS = {
    "bert": lambda **kw: BertConfig(**TINY, **kw),
    "roberta": lambda **kw: RobertaConfig(**TINY, **kw),
    "xlm-roberta": lambda **kw: XLMRobertaConfig(**TINY, **kw),
    "electra": lambda **kw: ElectraConfig(embedding_size=16, **TINY, **kw),
    "albert": lambda **kw: AlbertConfig(embedding_size=16, **TINY, **kw),
    "distilbert": lambda **kw: DistilBertConfig(
        dim=32, n_layers=2, n_heads=4, hidden_dim=37, vocab_size=100, max_position_embeddings=64, **kw
    ),
    "deberta": lambda **kw: DebertaConfig(pos_att_type=["c2p", "p2c"], **DEBERTA, **TINY, **kw),
    "deberta-v2": lambda **kw: DebertaV2Config(pos_att_type=["p2c", "c2p"], **DEBERTA, **TINY, **kw),
    "xmod": lambda **kw: XmodConfig(languages=["en_XX", "de_DE"], default_language="en_XX", **TINY, **kw),
    "bert-generation": lambda **kw: BertGenerationConfig(**TINY, **kw),
}


@pytest.fixture(autouse=True)
def _quiet_transformers():
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity_warning()


def tiny_model(model_type: str = "bert", **config):
    torch.manual_seed(0)
    return AutoAdapterModel.from_config(CONFIGS[model_type](**config)).eval()


def batch(rows: int = 2, length: int = 7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 100, (rows, length), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[-1, -2:] = 0
    return {"input_ids": input_ids, "attention_mask": mask}


# -- AdapterModel classes and AutoAdapterModel ------------------------------------------------
@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_auto_adapter_model_picks_the_family_class(model_type):
    model = tiny_model(model_type)
    assert type(model).__name__.endswith("AdapterModel")
    assert type(model) is getattr(adapters, type(model).__name__)  # from adapters import XxxAdapterModel
    adapters.init(model)  # a no-op: AdapterModel classes come initialized
    model.add_adapter("a", config="seq_bn", set_active=True)
    assert model.adapters_state.base_prefix == f"{model.base_model_prefix}."
    out = model(**batch())
    assert out.last_hidden_state.shape == (2, 7, 32)
    model.add_masked_lm_head("mlm")
    assert model.heads["mlm"].get_output_embeddings().weight is model.get_input_embeddings().weight
    inputs = batch()
    out = model(**inputs, labels=inputs["input_ids"])
    assert out.logits.shape == (2, 7, 100) and out.loss.requires_grad
    if "classification" in model.head_types:
        model.add_classification_head("cls", num_labels=3)
        assert model(**inputs).logits.shape == (2, 3)


def test_unknown_model_type_is_refused():
    with pytest.raises(adapters.UnsupportedModelError, match="AdapterModel class"):
        AutoAdapterModel.from_config(transformers.BloomConfig(hidden_size=32, n_layer=2, n_head=4))


def test_adapter_keys_carry_the_base_prefix(tmp_path):
    model = tiny_model()
    model.add_adapter("a", config="lora")
    model.save_adapter(tmp_path, "a")
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    assert data["model_class"] == "BertAdapterModel"
    assert all(key.startswith("bert.") for key in load_file(tmp_path / "adapter.safetensors"))


# -- each head type: shapes and loss --------------------------------------------------------
def test_classification_head_math():
    model = tiny_model()
    model.add_classification_head("c", num_labels=3)
    inputs, labels = batch(), torch.tensor([0, 2])
    out = model(**inputs, labels=labels)
    head = model.heads["c"]
    cls = model.bert(**inputs).last_hidden_state[:, 0]
    expected = head[4](torch.tanh(head[1](cls)))  # dropout, dense, tanh, dropout, out (eval)
    assert_close(out.logits, expected)
    assert_close(out.loss, torch.nn.functional.cross_entropy(expected, labels))
    assert [type(m).__name__ for m in head] == ["Dropout", "Linear", "Tanh", "Dropout", "Linear"]


def test_regression_multilabel_and_pooler_heads():
    model = tiny_model()
    inputs = batch()
    model.add_classification_head("reg", num_labels=1)
    out = model(**inputs, labels=torch.tensor([0.5, -1.0]))
    assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.view(-1), torch.tensor([0.5, -1.0])))
    model.add_classification_head("ml", num_labels=4, multilabel=True)
    targets = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]])
    out = model(**inputs, labels=targets)
    assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, targets.float()))
    model.add_classification_head("pool", num_labels=2, layers=1, activation_function=None, use_pooler=True)
    expected = model.heads["pool"][1](model.bert(**inputs).pooler_output)
    assert_close(model(**inputs).logits, expected)


def test_pooler_head_on_a_model_without_pooler_is_refused():
    model = tiny_model("distilbert")
    model.add_classification_head("c", use_pooler=True)
    with pytest.raises(AdapterConfigError, match="use_pooler"):
        model(**batch())


def test_tagging_head_ignores_padding_in_the_loss():
    model = tiny_model()
    model.add_tagging_head("t", num_labels=5)
    inputs = batch()
    labels = torch.randint(0, 5, (2, 7), generator=torch.Generator().manual_seed(3))
    out = model(**inputs, labels=labels)
    assert out.logits.shape == (2, 7, 5)
    keep = inputs["attention_mask"].view(-1) == 1
    expected = torch.nn.functional.cross_entropy(out.logits.view(-1, 5)[keep], labels.view(-1)[keep])
    assert_close(out.loss, expected)


def test_question_answering_head():
    model = tiny_model()
    model.add_qa_head("qa")
    start, end = torch.tensor([1, 2]), torch.tensor([3, 9])  # 9: outside the input, ignored
    out = model(**batch(), start_positions=start, end_positions=end)
    assert out.start_logits.shape == out.end_logits.shape == (2, 7)
    ce = torch.nn.functional.cross_entropy
    expected = (ce(out.start_logits, start) + ce(out.end_logits, torch.tensor([3, 7]), ignore_index=7)) / 2
    assert_close(out.loss, expected)


def test_multiple_choice_head_flattens_the_choices():
    model = tiny_model()
    model.add_multiple_choice_head("mc", num_choices=3)
    inputs = {k: v.unsqueeze(1).repeat(1, 3, 1) for k, v in batch().items()}  # (2, 3, 7)
    out = model(**inputs, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3)
    assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 2])))


def test_dependency_parsing_head():
    model = tiny_model()
    model.add_dependency_parsing_head("dp", num_labels=4)
    with torch.no_grad():
        for param in model.heads["dp"].parameters():
            param.normal_(0, 0.1)
    word_starts = torch.tensor([[1, 2, 4, 5, 0, 0, 0], [1, 3, 5, 0, 0, 0, 0]])
    arcs = torch.tensor([[0, 1, 1, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0, 0]])  # 0 = padding (pad_token_id)
    arcs[0, 0] = 2
    rels = torch.randint(0, 4, (2, 7), generator=torch.Generator().manual_seed(4))
    out = model(**batch(), word_starts=word_starts, labels_arcs=arcs, labels_rels=rels)
    assert out.arc_preds.shape == (2, 7, 8) and out.rel_preds.shape == (2, 7, 8, 4)
    # word 1 of row 0 is the mean of subwords 2..3
    states = model.bert(**batch()).last_hidden_state
    head = model.heads["dp"]
    words = states[0, 2:4].mean(0)
    w = head.biaffine_arcs.weight[0]
    expected = torch.cat([words, torch.ones(1)]) @ w @ states[0, 0]
    assert_close(out.arc_preds[0, 1, 0], expected)
    mask = arcs != 0
    rel_scores = out.rel_preds[mask][torch.arange(int(mask.sum())), arcs[mask]]
    loss = torch.nn.functional.cross_entropy(out.arc_preds[mask], arcs[mask])
    assert_close(out.loss, loss + torch.nn.functional.cross_entropy(rel_scores, rels[mask]))


@pytest.mark.parametrize("kind", ["masked_lm", "causal_lm"])
def test_lm_heads_are_tied_and_compute_their_loss(kind):
    model = tiny_model()
    getattr(model, f"add_{kind}_head")("lm")
    projection = model.heads["lm"].get_output_embeddings()
    embeddings = model.get_input_embeddings().weight
    assert projection.weight is embeddings and projection.weight.data_ptr() == embeddings.data_ptr()
    inputs = batch()
    labels = inputs["input_ids"].clone()
    out = model(**inputs, labels=labels)
    assert out.logits.shape == (2, 7, 100)
    if kind == "causal_lm":
        expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 100), labels[:, 1:].reshape(-1))
    else:
        expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 100), labels.reshape(-1))
    assert_close(out.loss, expected)


def test_albert_lm_head_projects_from_the_embedding_size():
    model = tiny_model("albert")
    model.add_masked_lm_head("mlm")
    assert model.heads["mlm"][0].out_features == 16
    assert model.heads["mlm"][3].weight is model.get_input_embeddings().weight
    assert model(**batch()).logits.shape == (2, 7, 100)


def test_untied_config_keeps_its_own_projection():
    model = tiny_model(tie_word_embeddings=False)
    model.add_masked_lm_head("mlm")
    assert model.heads["mlm"][3].weight is not model.get_input_embeddings().weight


def test_forward_signature_names_the_inputs_for_the_trainer():
    import inspect

    from transformers.utils.generic import find_labels

    model = tiny_model()
    parameters = inspect.signature(model.forward).parameters
    assert {"input_ids", "attention_mask", "token_type_ids", "labels", "start_positions", "head"} <= set(parameters)
    assert find_labels(type(model)) == ["labels"]
    assert model.accepts_loss_kwargs is False  # heads average their own loss


def test_return_dict_false_gives_tuples():
    model = tiny_model()
    model.add_classification_head("c")
    out = model(**batch(), labels=torch.tensor([0, 1]), return_dict=False)
    assert isinstance(out, tuple) and out[0].dim() == 0 and out[1].shape == (2, 2)


# -- head API --------------------------------------------------------------------------------
def test_unsupported_head_type_is_refused():
    with pytest.raises(AdapterConfigError, match="does not support 'classification'"):
        tiny_model("bert-generation").add_classification_head("c")
    with pytest.raises(AdapterConfigError, match="image_classification"):
        tiny_model().add_image_classification_head("img")


def test_add_delete_and_activate_heads():
    model = tiny_model()
    model.add_classification_head("a", num_labels=3, id2label={0: "x", 1: "y", 2: "z"})
    model.add_tagging_head("b")
    assert model.active_head == "b"
    with pytest.raises(AdapterNameError, match="exists already"):
        model.add_tagging_head("b")
    model.add_tagging_head("b", num_labels=3, overwrite_ok=True)
    model.active_head = "a"
    assert model.get_labels() == ["x", "y", "z"] and model.config.id2label == {0: "x", 1: "y", 2: "z"}
    with pytest.raises(AdapterNameError):
        model.active_head = "missing"
    model.delete_head("a")
    assert "a" not in model.heads and "a" not in model.config.prediction_heads and model.active_head is None
    model.delete_head("a")  # no error, as in the reference library
    assert isinstance(model(**batch()), transformers.modeling_outputs.BaseModelOutputWithPoolingAndCrossAttentions)


def test_setting_adapters_activates_the_head_of_the_same_name():
    model = tiny_model()
    model.add_adapter("sst2", config="seq_bn")
    model.add_classification_head("sst2")
    model.add_tagging_head("ner")
    model.set_active_adapters("sst2")
    assert model.active_head == "sst2"
    model.train_adapter("sst2")
    assert model.active_head == "sst2"
    assert all(p.requires_grad for p in model.heads["sst2"].parameters())
    assert not any(p.requires_grad for n, p in model.bert.named_parameters() if "adapters" not in n)


def test_train_adapter_freezes_the_lm_projection_unless_embeddings_train():
    model = tiny_model()
    model.add_adapter("lang", config="seq_bn")
    model.add_masked_lm_head("lang")
    model.train_adapter("lang")
    assert not model.heads["lang"][3].bias.requires_grad and model.heads["lang"][0].weight.requires_grad
    model.train_adapter("lang", train_embeddings=True)
    assert model.heads["lang"][3].bias.requires_grad and model.get_input_embeddings().weight.requires_grad


def test_several_heads_and_batch_split_and_context():
    model = tiny_model()
    model.add_classification_head("a", num_labels=2)
    model.add_classification_head("b", num_labels=3)
    inputs = batch(rows=3)
    single = {name: model(**inputs, head=name).logits for name in "ab"}
    model.active_head = ["a", "b"]
    out = model(**inputs, labels=torch.tensor([0, 1, 1]))
    assert isinstance(out, MultiHeadOutput) and len(out) == 2
    assert_close(out[1].logits, single["b"])
    assert_close(out.loss, out[0].loss + out[1].loss)
    model.active_head = BatchSplit("a", "b", batch_sizes=[1, 2])
    out = model(**inputs, labels=torch.tensor([0, 1, 2]))
    assert_close(out[0].logits, single["a"][:1])
    assert_close(out[1].logits, single["b"][1:])
    with AdapterSetup(None, head_setup="b"):
        assert_close(model(**inputs).logits, single["b"])
    with pytest.raises(CompositionError, match="do not add up"):
        model(**batch(rows=2))


class ScoreHead(PredictionHead):
    """A custom head: one linear score of the first token."""

    def __init__(self, model, head_name, scale=1.0, **kwargs):
        super().__init__(head_name)
        self.config = {"head_type": "score", "scale": scale, "num_labels": 1, "layers": 1, "activation_function": None}
        self.build(model)

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        return transformers.modeling_outputs.SequenceClassifierOutput(
            logits=super().forward(outputs[0][:, 0]) * self.config["scale"]
        )


def test_custom_heads(tmp_path):
    model = tiny_model()
    with pytest.raises(AdapterConfigError, match="register"):
        model.add_custom_head("score", "s")
    model.register_custom_head("score", ScoreHead)
    model.add_custom_head("score", "s", scale=2.0)
    logits = model(**batch()).logits
    assert logits.shape == (2, 1)
    model.save_head(tmp_path / "s", "s")
    other = tiny_model()
    other.register_custom_head("score", ScoreHead)
    other.load_head(tmp_path / "s")
    # The same model with the very weights (saved, loaded back) on the same inputs: the same computation.
    assert torch.equal(other(**batch()).logits, logits)
    # Registered for every model, a saved model with such a head loads.
    register_head("score", ScoreHead)
    model.save_pretrained(tmp_path / "full")
    reloaded = AutoAdapterModel.from_pretrained(tmp_path / "full").eval()
    assert_close(reloaded(**batch(), head="s").logits, logits)


# -- saving and loading ----------------------------------------------------------------------
def test_save_adapter_writes_the_head_and_load_adapter_reads_it(tmp_path):
    model = tiny_model()
    model.add_adapter("sst2", config="seq_bn")
    model.add_classification_head("sst2", num_labels=3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "sst2" in name:
                param.normal_(0, 0.1)
    model.set_active_adapters("sst2")
    expected = model(**batch()).logits
    model.save_adapter(tmp_path / "sst2", "sst2")
    assert {p.name for p in (tmp_path / "sst2").iterdir()} == {
        "adapter_config.json", "adapter.safetensors", "head_config.json", "model_head.safetensors"
    }  # fmt: skip
    assert set(load_file(tmp_path / "sst2" / "model_head.safetensors")) == {
        f"heads.sst2.{i}.{p}" for i in (1, 4) for p in ("weight", "bias")
    }
    other = tiny_model()
    name = other.load_adapter(tmp_path / "sst2", load_as="task", set_active=True)
    assert name == "task" and other.active_head == "task"
    # The same model with the very weights (saved, loaded back) on the same inputs: the same computation.
    assert torch.equal(other(**batch()).logits, expected)
    bare = tiny_model()
    bare.load_adapter(tmp_path / "sst2", with_head=False)
    assert len(bare.heads) == 0


def test_lm_head_file_leaves_out_the_tied_embeddings(tmp_path):
    model = tiny_model()
    model.add_masked_lm_head("mlm")
    model.save_head(tmp_path, "mlm")
    assert "heads.mlm.3.weight" not in load_file(tmp_path / "model_head.safetensors")
    other = tiny_model()
    with torch.no_grad():
        other.get_input_embeddings().weight.add_(1.0)  # a different body
    before = other.get_input_embeddings().weight.clone()
    other.load_head(tmp_path)
    assert torch.equal(other.get_input_embeddings().weight, before)
    assert other.heads["mlm"][3].weight is other.get_input_embeddings().weight


def test_bad_head_files_leave_the_model_unchanged(tmp_path):
    model = tiny_model()
    model.add_classification_head("c", num_labels=3)
    model.save_head(tmp_path / "c", "c")
    other = tiny_model()
    with pytest.raises(AdapterLoadError, match=r"head_config\.json"):
        other.load_head(tmp_path)
    # Without the integrity record (as the reference library writes): edited weights reach the checks below.
    config_path = tmp_path / "c" / "head_config.json"
    config = json.loads(config_path.read_text())
    del config["integrity"]
    config_path.write_text(json.dumps(config))
    tensors = load_file(tmp_path / "c" / "model_head.safetensors")
    save_file({**tensors, "heads.c.4.weight": torch.zeros(5, 32)}, tmp_path / "c" / "model_head.safetensors")
    with pytest.raises(AdapterLoadError, match="shape"):
        other.load_head(tmp_path / "c")
    save_file({k: v for k, v in tensors.items() if "4." not in k}, tmp_path / "c" / "model_head.safetensors")
    with pytest.raises(AdapterLoadError, match="missing keys"):
        other.load_head(tmp_path / "c")
    with pytest.raises(AdapterLoadError, match="model_type"):
        tiny_model("roberta").load_head(tmp_path / "c")
    assert len(other.heads) == 0 and "c" not in other.config.prediction_heads


def test_load_adapter_with_a_bad_head_adds_nothing(tmp_path):
    model = tiny_model()
    model.add_adapter("a", config="lora")
    model.add_classification_head("a")
    model.save_adapter(tmp_path, "a")
    (tmp_path / "model_head.safetensors").write_bytes(b"garbage")
    other = tiny_model()
    with pytest.raises(AdapterLoadError):
        other.load_adapter(tmp_path)
    assert not other.adapters_state.configs and len(other.heads) == 0


def test_save_pretrained_round_trip_keeps_heads_and_ties(tmp_path):
    model = tiny_model()
    model.add_adapter("a", config="seq_bn")
    model.add_masked_lm_head("mlm")
    model.add_classification_head("a", num_labels=3)
    expected = model(**batch(), head="mlm").logits
    model.save_pretrained(tmp_path)
    reloaded = AutoAdapterModel.from_pretrained(tmp_path).eval()
    assert sorted(reloaded.heads) == ["a", "mlm"]
    assert reloaded.heads["mlm"][3].weight is reloaded.get_input_embeddings().weight
    assert_close(reloaded(**batch(), head="mlm").logits, expected)
    reloaded.load_adapter(tmp_path / "adapters" / "a", set_active=True)
    assert reloaded.active_head == "a"


# -- static checkpoints ----------------------------------------------------------------------
STATIC_CASES = [
    ("bert", "BertForSequenceClassification", "logits"),
    ("bert", "BertForTokenClassification", "logits"),
    ("bert", "BertForQuestionAnswering", "start_logits"),
    ("bert", "BertForMultipleChoice", "logits"),
    ("bert", "BertForMaskedLM", "logits"),
    ("roberta", "RobertaForSequenceClassification", "logits"),
    ("xlm-roberta", "XLMRobertaForCausalLM", "logits"),
    ("distilbert", "DistilBertForSequenceClassification", "logits"),
    ("distilbert", "DistilBertForMaskedLM", "logits"),
    ("electra", "ElectraForMultipleChoice", "logits"),
    ("electra", "ElectraForMaskedLM", "logits"),
    ("albert", "AlbertForMaskedLM", "logits"),
    ("deberta-v2", "DebertaV2ForSequenceClassification", "logits"),
    ("bert-generation", "BertGenerationDecoder", "logits"),
]


@pytest.mark.parametrize(("model_type", "class_name", "key"), STATIC_CASES, ids=[c[1] for c in STATIC_CASES])
def test_static_checkpoint_converts_with_identical_logits(tmp_path, model_type, class_name, key):
    decoder = "CausalLM" in class_name or class_name == "BertGenerationDecoder"
    labels = 2 if "QuestionAnswering" in class_name else 3
    torch.manual_seed(0)
    static = getattr(transformers, class_name)(CONFIGS[model_type](num_labels=labels, is_decoder=decoder)).eval()
    inputs = batch()
    if "MultipleChoice" in class_name:
        inputs = {k: v.unsqueeze(1).repeat(1, 3, 1) for k, v in inputs.items()}
    expected = static(**inputs)[key]
    static.save_pretrained(tmp_path / "static")
    model = AutoAdapterModel.from_pretrained(tmp_path / "static").eval()
    assert model.active_head == "default"
    # The flexible head is another computation of the static head's logits (multiple choice: other shapes
    # into the same linear layers): equal up to rounding.
    assert_close(model(**inputs)[key], expected)
    projection = model.heads["default"].get_output_embeddings()
    if projection is not None:  # tied output embeddings stay tied
        assert projection.weight is model.get_input_embeddings().weight
    # Saved again, the head keeps its flexible keys and reloads as it is.
    model.save_pretrained(tmp_path / "flex")
    assert any(k.startswith("heads.default.") for k in load_file(tmp_path / "flex" / "model.safetensors"))
    again = AutoAdapterModel.from_pretrained(tmp_path / "flex").eval()
    assert_close(again(**inputs)[key], expected)


def test_static_head_saved_by_the_reference_converts_on_load_adapter():
    # bert/head_lora: a LoRA adapter and the classifier of a BertForSequenceClassification.
    model = AutoAdapterModel.from_pretrained(FIXTURES / "bert" / "base").eval()
    name = model.load_adapter(FIXTURES / "bert" / "head_lora", set_active=True)
    assert model.active_head == name and model.heads[name].config["use_pooler"] is True
    inputs = load_file(FIXTURES / "bert" / "inputs.safetensors")
    expected = load_file(FIXTURES / "bert" / "head_lora.logits.safetensors")
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    assert_close(logits, next(iter(expected.values())), ulps=CROSS_LIBRARY_ULPS)


# -- reference files -------------------------------------------------------------------------
def head_inputs(case: str) -> dict[str, torch.Tensor]:
    data = load_file(FIXTURES / "bert" / "inputs.safetensors")
    inputs = {"input_ids": data["input_ids"], "attention_mask": data["attention_mask"]}
    if case == "choice":
        inputs = {k: v.unsqueeze(0) for k, v in inputs.items()}
    if case == "parsing":
        inputs["word_starts"] = torch.tensor([[1, 2, 4, 5, 0, 0, 0], [1, 3, 5, 0, 0, 0, 0]])
    return inputs


def load_reference_case(case: str):
    model = AutoAdapterModel.from_pretrained(FIXTURES / "bert" / "base").eval()
    if case == "cls_adapter":
        model.load_adapter(HEAD_FIXTURES / case, set_active=True)
    else:
        model.load_head(HEAD_FIXTURES / case)
    return model


@pytest.mark.parametrize("case", HEAD_CASES)
def test_reference_heads_load_with_equal_outputs(case):
    model = load_reference_case(case)
    expected = load_file(HEAD_FIXTURES / f"{case}.expected.safetensors")
    with torch.no_grad():
        out = model(**head_inputs(case), head=case)
    for key, value in expected.items():
        assert_close(out[key], value, ulps=CROSS_LIBRARY_ULPS)
    if case == "cls_adapter":
        assert model.get_labels("cls_adapter") == ["neg", "neu", "pos"]


def test_reference_adapter_model_checkpoint_loads_with_its_heads():
    model = AutoAdapterModel.from_pretrained(HEAD_FIXTURES / "full_model").eval()
    assert type(model).__name__ == "BertAdapterModel" and sorted(model.heads) == HEAD_CASES
    assert model.heads["mlm"][3].weight is model.get_input_embeddings().weight
    for case in HEAD_CASES:
        if case == "cls_adapter":  # its expected output has the adapter active
            continue
        expected = load_file(HEAD_FIXTURES / f"{case}.expected.safetensors")
        with torch.no_grad():
            out = model(**head_inputs(case), head=case)
        for key, value in expected.items():
            assert_close(out[key], value, ulps=CROSS_LIBRARY_ULPS)


def test_our_head_files_load_back_here(tmp_path):
    # That the reference library loads them is checked by `nox -s reference_roundtrip`
    # (fixtures/reference/export_our_heads.py, then make_head_fixtures.py --check in its venv).
    for case in HEAD_CASES:
        model = load_reference_case(case)
        if case == "cls_adapter":
            model.save_adapter(tmp_path / case, case)
        else:
            model.save_head(tmp_path / case, case)
        with torch.no_grad():
            out = model(**head_inputs(case), head=case)
        again = AutoAdapterModel.from_pretrained(FIXTURES / "bert" / "base").eval()
        if case == "cls_adapter":
            again.load_adapter(tmp_path / case, set_active=True)
        else:
            again.load_head(tmp_path / case)
        key = next(iter(load_file(HEAD_FIXTURES / f"{case}.expected.safetensors")))
        with torch.no_grad():
            assert_close(again(**head_inputs(case), head=case)[key], out[key])


# -- Parallel ----------------------------------------------------------------------------------
def parallel_model():
    model = tiny_model()
    for name, labels in (("a", 2), ("b", 3)):
        model.add_adapter(name, config="seq_bn")
        model.add_classification_head(name, num_labels=labels)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".adapters." in name:
                param.normal_(0, 0.1)
    single = {}
    for name in "ab":
        model.set_active_adapters(name)
        single[name] = model(**batch()).logits
    return model, single


def test_parallel_gives_one_output_per_head():
    model, single = parallel_model()
    inputs = batch()
    model.set_active_adapters(Parallel("a", "b"))
    assert model.active_head == ["a", "b"]
    out = model(**inputs, labels=torch.tensor([0, 1]))
    assert isinstance(out, MultiHeadOutput) and len(out) == 2
    assert_close(out[0].logits, single["a"])
    assert_close(out[1].logits, single["b"])
    assert_close(out.loss, out[0].loss + out[1].loss)
    # One active head serves every branch.
    model.active_head = "a"
    out = model(**inputs)
    assert len(out) == 2 and out[1].logits.shape == (2, 2)


def test_parallel_heads_inside_adapter_setup():
    model, single = parallel_model()
    model.set_active_adapters(None)
    with AdapterSetup(Parallel("a", "b")):
        out = model(**batch())
    assert len(out) == 2
    assert_close(out[0].logits, single["a"])
    assert_close(out[1].logits, single["b"])


def test_invertible_adapter_is_inverted_before_an_lm_head_added_later():
    # MAD-X: the language adapter's invertible module is undone before the vocabulary projection.
    logits = {}
    for order in ("head_first", "adapter_first"):
        model = tiny_model()
        steps = [lambda m: m.add_masked_lm_head("lang"), lambda m: m.add_adapter("lang", config="seq_bn_inv")]
        for seed, step in sorted(enumerate(steps), reverse=order == "adapter_first"):
            torch.manual_seed(seed)  # the same weights in both orders
            step(model)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "invertible" in name:
                    param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(5)) * 0.1)
        model.set_active_adapters("lang")
        logits[order] = model(**batch()).logits
    assert_close(logits["adapter_first"], logits["head_first"])
