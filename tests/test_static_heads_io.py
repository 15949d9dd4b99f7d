"""The static head of a transformers model with a head, saved and loaded with its adapter.

``save_adapter`` on e.g. a ``BertForSequenceClassification`` (after ``adapters.init``) writes, as
the reference library does by default (``with_head=True``), ``head_config.json`` and the head's
weights beside the adapter; ``load_adapter`` puts them back. Reference files
(``fixtures/reference/static_heads/``) were written by the reference library with
``make_static_head_fixtures.py``; its ``--export``/``--check`` modes prove the other direction
(``nox -s reference_roundtrip``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
import transformers
from conftest import TINY_BERT
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification, BertModel

import adapters
from adapters import AutoAdapterModel
from adapters.errors import AdapterLoadError
from adapters.testing import CROSS_LIBRARY_ULPS, assert_close, randomize_adapter

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
STATIC = FIXTURES / "static_heads"
MANIFEST = json.loads((STATIC / "manifest.json").read_text())
CASES = sorted(MANIFEST["cases"])
ADAPTER = MANIFEST["adapter"]["name"]
HEAD_SAFE = ["adapter.safetensors", "adapter_config.json", "head_config.json", "model_head.safetensors"]
HEAD_PICKLE = ["adapter_config.json", "head_config.json", "pytorch_adapter.bin", "pytorch_model_head.bin"]


def _generator():
    path = FIXTURES / "make_static_head_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_static_head_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inputs() -> dict[str, torch.Tensor]:
    return load_file(STATIC / "inputs.safetensors")


def fresh(case: str):
    """A fresh transformers model of the case's class from its plain checkpoint, adapter-capable."""
    model = getattr(transformers, MANIFEST["cases"][case]["model_class"]).from_pretrained(STATIC / case / "base")
    adapters.init(model)
    return model.eval()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs()).logits


def files_in(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def classifier(num_labels: int = 3, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(**TINY_BERT, num_labels=num_labels)).eval()
    adapters.init(model)
    return model


def trained(model, name: str = "sst2"):
    """``model`` with a random LoRA (active) and a head moved away from its initialisation."""
    model.add_adapter(name, config="lora", set_active=True)
    randomize_adapter(model, name, std=0.3, seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for key, param in sorted(model.named_parameters()):
            if not key.startswith(f"{model.base_model_prefix}."):
                param.add_(torch.randn(param.shape, generator=g) * 0.3)
    return model


# -- reference -> ours -----------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_reference_static_head_loads_with_its_adapter(case: str) -> None:
    folder = STATIC / case / "adapter"
    assert files_in(folder) == (HEAD_SAFE if MANIFEST["cases"][case]["use_safetensors"] else HEAD_PICKLE)
    expected = load_file(STATIC / case / "logits.safetensors")["logits"]
    model = fresh(case)
    name = model.load_adapter(folder, set_active=True)
    assert name == ADAPTER
    assert_close(logits(model), expected, ulps=CROSS_LIBRARY_ULPS)
    # The head is what the file says, bit for bit.
    saved = folder / ("model_head.safetensors" if MANIFEST["cases"][case]["use_safetensors"] else "")
    head = load_file(saved) if saved.is_file() else torch.load(folder / "pytorch_model_head.bin", weights_only=True)
    assert sorted(head) == MANIFEST["cases"][case]["head_params"]
    for key, value in head.items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("case", CASES)
def test_reference_folder_with_head_false_keeps_the_models_head(case: str) -> None:
    folder = STATIC / case / "adapter"
    model = fresh(case)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(f"{model.base_model_prefix}.")}
    model.load_adapter(folder, set_active=True, with_head=False)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    # The adapter alone does not reproduce the reference's logits: its head mattered.
    expected = load_file(STATIC / case / "logits.safetensors")["logits"]
    assert not torch.allclose(logits(model), expected, atol=1e-3)


def test_reference_labels_are_restored_into_the_config() -> None:
    model = BertForSequenceClassification.from_pretrained(STATIC / "bert_seq_cls" / "base", num_labels=3)
    model.config.id2label = {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    model.config.label2id = {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}
    adapters.init(model)
    model.load_adapter(STATIC / "bert_seq_cls" / "adapter")
    assert model.config.label2id == {"negative": 0, "neutral": 1, "positive": 2}
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}


# -- ours -> ours, and the file format ----------------------------------------------------------------
@pytest.mark.parametrize("use_safetensors", [True, False])
def test_save_adapter_writes_the_static_head_in_the_reference_format(tmp_path: Path, use_safetensors: bool) -> None:
    model = trained(classifier())
    model.config.name_or_path = "tiny-bert"
    expected = logits_of(model)
    model.save_adapter(tmp_path / "sst2", "sst2", use_safetensors=use_safetensors)
    assert files_in(tmp_path / "sst2") == (HEAD_SAFE if use_safetensors else HEAD_PICKLE)
    data = json.loads((tmp_path / "sst2" / "head_config.json").read_text())
    weights = "model_head.safetensors" if use_safetensors else "pytorch_model_head.bin"
    assert set(data.pop("integrity")) == {weights}  # ours only: the weights file's size and hash
    assert data == {
        "config": None,
        "hidden_size": 32,
        "label2id": {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2},
        "model_class": "BertForSequenceClassification",
        "model_name": "tiny-bert",
        "model_type": "bert",
        "name": None,
        "num_labels": 3,
        "version": "adapters.1.3.0",
    }
    path = tmp_path / "sst2" / weights
    head = load_file(path) if use_safetensors else torch.load(path, weights_only=True)
    assert sorted(head) == ["classifier.bias", "classifier.weight"]
    other = classifier()  # the same body, the initial head
    assert not torch.equal(logits_of(other), expected)
    other.load_adapter(tmp_path / "sst2", set_active=True)
    assert torch.equal(logits_of(other), expected)  # the same weights, the same computation


def logits_of(model, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (2, 7), generator=g)
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_with_head_false_writes_and_reads_the_adapter_only(tmp_path: Path) -> None:
    model = trained(classifier())
    model.save_adapter(tmp_path / "only", "sst2", with_head=False)
    assert files_in(tmp_path / "only") == ["adapter.safetensors", "adapter_config.json"]
    model.save_adapter(tmp_path / "both", "sst2")
    other = classifier(seed=5)
    head = other.classifier.weight.detach().clone()
    other.load_adapter(tmp_path / "both", with_head=False)
    assert torch.equal(other.classifier.weight, head)
    other.load_adapter(tmp_path / "only", load_as="again")  # no head files: the head stays
    assert torch.equal(other.classifier.weight, head)


def test_save_all_adapters_writes_each_with_the_head(tmp_path: Path) -> None:
    model = trained(classifier())
    model.add_adapter("second", config="seq_bn")
    model.save_all_adapters(tmp_path)
    assert files_in(tmp_path / "sst2") == HEAD_SAFE and files_in(tmp_path / "second") == HEAD_SAFE
    model.save_all_adapters(tmp_path / "plain", with_head=False)
    assert files_in(tmp_path / "plain" / "sst2") == ["adapter.safetensors", "adapter_config.json"]


def test_save_pretrained_keeps_the_head_in_the_checkpoint_only(tmp_path: Path) -> None:
    model = trained(classifier())
    model.save_pretrained(tmp_path / "ckpt")
    assert files_in(tmp_path / "ckpt" / "adapters" / "sst2") == ["adapter.safetensors", "adapter_config.json"]


def test_the_head_is_written_in_the_same_folder_swap(tmp_path: Path) -> None:
    # A save without the head replaces the adapter's files; a save with it replaces both together.
    model = trained(classifier())
    model.save_adapter(tmp_path / "sst2", "sst2", use_safetensors=False)
    model.save_adapter(tmp_path / "sst2", "sst2")
    assert files_in(tmp_path / "sst2") == HEAD_SAFE  # the pickles of the earlier save are gone


# -- refusals: before anything changes -------------------------------------------------------------
def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert not model.adapters_state.configs


def test_other_num_labels_is_refused_before_anything_changes(tmp_path: Path) -> None:
    trained(classifier()).save_adapter(tmp_path / "sst2", "sst2")
    other = classifier(num_labels=2)
    before = _state(other)
    with pytest.raises(AdapterLoadError, match=r"num_labels=3.*with_head=False"):
        other.load_adapter(tmp_path / "sst2")
    _unchanged(other, before)
    other.load_adapter(tmp_path / "sst2", with_head=False)  # the fix the message names
    assert list(other.adapters_state.configs) == ["sst2"]


def test_other_head_class_is_refused_before_anything_changes(tmp_path: Path) -> None:
    trained(classifier()).save_adapter(tmp_path / "sst2", "sst2")
    torch.manual_seed(0)
    tagger = BertForTokenClassification(BertConfig(**TINY_BERT, num_labels=3)).eval()
    adapters.init(tagger)
    before = _state(tagger)
    with pytest.raises(AdapterLoadError, match=r"BertForSequenceClassification.*BertForTokenClassification"):
        tagger.load_adapter(tmp_path / "sst2")
    _unchanged(tagger, before)


def test_flexible_head_files_are_refused_by_a_static_head(tmp_path: Path) -> None:
    flexible = AutoAdapterModel.from_pretrained(STATIC / "bert_seq_cls" / "base")
    flexible.add_adapter("sst2", config="lora")
    flexible.add_classification_head("sst2", num_labels=3)
    flexible.save_adapter(tmp_path / "sst2", "sst2")
    model = classifier()
    before = _state(model)
    with pytest.raises(AdapterLoadError, match=r"flexible head 'sst2' of a BertAdapterModel.*with_head=False"):
        model.load_adapter(tmp_path / "sst2")
    _unchanged(model, before)


def test_a_head_that_misses_tensors_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    trained(classifier()).save_adapter(tmp_path / "sst2", "sst2")
    head = load_file(tmp_path / "sst2" / "model_head.safetensors")
    del head["classifier.bias"]
    save_file(head, tmp_path / "sst2" / "model_head.safetensors")
    config = json.loads((tmp_path / "sst2" / "head_config.json").read_text())
    del config["integrity"]  # as a reference file, which has no record
    (tmp_path / "sst2" / "head_config.json").write_text(json.dumps(config))
    model = classifier()
    before = _state(model)
    with pytest.raises(AdapterLoadError, match=r"missing keys \['classifier.bias'\]"):
        model.load_adapter(tmp_path / "sst2")
    _unchanged(model, before)


def test_a_torn_head_is_refused(tmp_path: Path) -> None:
    model = trained(classifier())
    model.save_adapter(tmp_path / "a", "sst2")
    trained(classifier(seed=4), "sst2").save_adapter(tmp_path / "b", "sst2")
    (tmp_path / "a" / "model_head.safetensors").write_bytes((tmp_path / "b" / "model_head.safetensors").read_bytes())
    other = classifier()
    before = _state(other)
    with pytest.raises(AdapterLoadError, match="torn"):
        other.load_adapter(tmp_path / "a")
    _unchanged(other, before)


# -- models without a static head: as before ------------------------------------------------------
def test_bare_model_ignores_head_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    bare = BertModel(BertConfig(**TINY_BERT))
    adapters.init(bare)
    bare.add_adapter("sst2", config="lora")
    bare.save_adapter(tmp_path / "bare", "sst2")
    assert files_in(tmp_path / "bare") == ["adapter.safetensors", "adapter_config.json"]
    torch.manual_seed(0)
    other = BertModel(BertConfig(**TINY_BERT))
    adapters.init(other)
    assert other.load_adapter(STATIC / "bert_seq_cls" / "adapter") == ADAPTER


def test_adapter_model_converts_our_static_head(tmp_path: Path) -> None:
    model = trained(classifier())
    expected = logits_of(model)
    model.save_pretrained(tmp_path / "base", save_adapters=False)
    model.save_adapter(tmp_path / "sst2", "sst2")
    flexible = AutoAdapterModel.from_pretrained(tmp_path / "base").eval()
    flexible.load_adapter(tmp_path / "sst2", set_active=True)
    assert_close(logits_of(flexible), expected)


# -- ours -> reference: the export the reference's --check reads -------------------------------------
def test_export_for_the_reference_reloads_here(tmp_path: Path) -> None:
    generator = _generator()
    generator.export(str(tmp_path))
    for case in CASES:
        folder = tmp_path / case / "adapter"
        assert files_in(folder) == (HEAD_SAFE if generator.EXPORT_SAFETENSORS[case] else HEAD_PICKLE)
        expected = load_file(tmp_path / case / "logits.safetensors")["logits"]
        model = fresh(case)
        assert not torch.allclose(logits(model), expected, atol=1e-3)
        model.load_adapter(folder, set_active=True)
        assert torch.equal(logits(model), expected)


# -- heads tied to the input embeddings ------------------------------------------------------------
def test_a_tied_projection_is_neither_written_nor_read(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from transformers import BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, bos_token_id=1, eos_token_id=2))
    adapters.init(lm)
    lm.add_adapter("a", config="lora")
    lm.save_adapter(tmp_path / "lm", "a")  # its only head tensor is the embeddings: no head files
    assert files_in(tmp_path / "lm") == ["adapter.safetensors", "adapter_config.json"]
    # A reference file of such a head holds the tied tensor; loading it leaves the embeddings alone.
    save_file({"lm_head.weight": torch.ones(100, 32)}, tmp_path / "lm" / "model_head.safetensors")
    embeddings = lm.get_input_embeddings().weight.detach().clone()
    lm.load_adapter(tmp_path / "lm", load_as="b")
    assert torch.equal(lm.get_input_embeddings().weight, embeddings)

    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(**TINY_BERT)).eval()
    adapters.init(mlm)
    trained(mlm)
    expected = logits_of(mlm)
    mlm.save_adapter(tmp_path / "mlm", "sst2")
    head = load_file(tmp_path / "mlm" / "model_head.safetensors")
    assert "cls.predictions.decoder.weight" not in head and "cls.predictions.transform.dense.weight" in head
    torch.manual_seed(0)
    other = BertForMaskedLM(BertConfig(**TINY_BERT)).eval()
    adapters.init(other)
    other.load_adapter(tmp_path / "mlm", set_active=True)
    assert torch.equal(logits_of(other), expected)
