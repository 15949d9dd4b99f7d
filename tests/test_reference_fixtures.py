"""Adapters saved by the reference library (adapters 1.3.0) load here with equal outputs.

The fixtures were written by ``tests/fixtures/reference/make_fixtures.py`` in a separate venv
with the reference library; see that folder's README. The reverse direction (our files loading
in the reference library) is checked by ``nox -s reference_roundtrip``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import adapters
from adapters.testing import CROSS_LIBRARY_ULPS, assert_close

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
MODELS = MANIFEST["models"]
CASES = [(model_type, case) for model_type, info in sorted(MODELS.items()) for case in info["cases"]]


def _drop_xmod_language_adapters(model: torch.nn.Module) -> None:
    # The reference's adapters.init deletes X-MOD's language adapters (we keep them). With language
    # adapters that output exact zeros, X-MOD's own language step reduces to output.LayerNorm(h + x),
    # which is what the reference computes in their place; the layer's final LayerNorm follows as
    # usual. (The modules stay, since X-MOD looks up its default language among them.)
    with torch.no_grad():
        for layer in model.encoder.layer:
            for language_adapter in layer.output.adapter_modules.values():
                language_adapter.dense2.weight.zero_()
                language_adapter.dense2.bias.zero_()


# Test-only changes that make a model compute what the reference's model computes after its
# adapters.init, where the reference deviates from the transformers model on purpose or by defect.
REFERENCE_MODEL_SETUP = {"xmod": _drop_xmod_language_adapters}

# Where the reference's output on the padded batch is wrong, only the rows the defect does not
# reach are compared; <case>.unpadded.safetensors (the same ids without padding) is compared in full.
_PREFIX_CASES = ("prefix_tuning", "prefix_tuning_gated", "prefix_tuning_flat")
_PROMPT = ("prompt_tuning", "prompt_tuning_bos")
REFERENCE_PADDING_DEFECTS: dict[tuple[str, str], list[int]] = {
    # Its sdpa (and DeBERTa's) attention lets the prompt positions attend to padding tokens.
    **{(m, c): [0] for m in ("albert", "bert", "roberta", "xlm-roberta", "deberta", "deberta-v2") for c in _PROMPT},
    # Its DistilBERT adds 1 to the logits of prefix and prompt positions whenever the batch has padding.
    **{("distilbert", c): [] for c in (*_PREFIX_CASES, *_PROMPT)},
}
UNPADDED_CASES = [(m, c) for m, c in CASES if (FIXTURES / m / f"{c}.unpadded.safetensors").exists()]


def load_base(model_type: str) -> torch.nn.Module:
    cls = getattr(transformers, MODELS[model_type]["base_class"])
    model = cls.from_pretrained(FIXTURES / model_type / "base").eval()
    return model


def load_reference_like(model_type: str) -> torch.nn.Module:
    model = load_base(model_type)
    if model_type in REFERENCE_MODEL_SETUP:
        REFERENCE_MODEL_SETUP[model_type](model)
    return model


def inputs_of(model_type: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / model_type / "inputs.safetensors")


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_plain_model_matches_reference_plain_output(model_type: str) -> None:
    model = load_base(model_type)
    expected = load_file(FIXTURES / model_type / "output_plain.safetensors")["last_hidden_state"]
    with torch.no_grad():
        got = model(**inputs_of(model_type)).last_hidden_state
    assert_close(got, expected, ulps=CROSS_LIBRARY_ULPS)


@pytest.mark.parametrize("model_type", sorted(REFERENCE_MODEL_SETUP))
def test_reference_model_setup_matches_reference_output_after_init(model_type: str) -> None:
    model = load_reference_like(model_type)
    adapters.init(model)
    expected = load_file(FIXTURES / model_type / "output_after_init.safetensors")["last_hidden_state"]
    with torch.no_grad():
        got = model(**inputs_of(model_type)).last_hidden_state
    assert_close(got, expected, ulps=CROSS_LIBRARY_ULPS)


def test_xmod_init_keeps_language_adapters() -> None:
    # Unlike the reference, adapters.init leaves X-MOD's own language adapters working.
    model = load_base("xmod")
    inputs = inputs_of("xmod")
    with torch.no_grad():
        plain = model(**inputs).last_hidden_state
        adapters.init(model)
        assert torch.equal(model(**inputs).last_hidden_state, plain)
    assert all(len(layer.output.adapter_modules) == 2 for layer in model.encoder.layer)


@pytest.mark.parametrize("model_type,case", CASES, ids=[f"{m}-{c}" for m, c in CASES])
def test_reference_adapter_gives_reference_output(model_type: str, case: str) -> None:
    model = load_reference_like(model_type)
    adapters.init(model)
    folder = FIXTURES / model_type / case
    name = model.load_adapter(folder, set_active=True)
    assert name == json.loads((folder / "adapter_config.json").read_text())["name"]
    expected = load_file(FIXTURES / model_type / f"{case}.expected.safetensors")["last_hidden_state"]
    with torch.no_grad():
        got = model(**inputs_of(model_type)).last_hidden_state
    rows = REFERENCE_PADDING_DEFECTS.get((model_type, case))
    if rows is not None:
        got, expected = got[rows], expected[rows]
    assert_close(got, expected, ulps=CROSS_LIBRARY_ULPS)


@pytest.mark.parametrize("model_type,case", UNPADDED_CASES, ids=[f"{m}-{c}" for m, c in UNPADDED_CASES])
def test_reference_adapter_gives_reference_output_without_padding(model_type: str, case: str) -> None:
    model = load_reference_like(model_type)
    adapters.init(model)
    model.load_adapter(FIXTURES / model_type / case, set_active=True)
    expected = load_file(FIXTURES / model_type / f"{case}.unpadded.safetensors")["last_hidden_state"]
    inputs = inputs_of(model_type)
    inputs["attention_mask"] = torch.ones_like(inputs["attention_mask"])
    with torch.no_grad():
        got = model(**inputs).last_hidden_state
    assert_close(got, expected, ulps=CROSS_LIBRARY_ULPS)


def test_adapter_saved_from_head_model_loads_into_base_and_head_models() -> None:
    base = load_base("bert")
    adapters.init(base)
    base.load_adapter(FIXTURES / "bert" / "head_lora", set_active=True)
    expected = load_file(FIXTURES / "bert" / "head_lora.expected.safetensors")["last_hidden_state"]
    with torch.no_grad():
        got = base(**inputs_of("bert")).last_hidden_state
    assert_close(got, expected, ulps=CROSS_LIBRARY_ULPS)

    head = transformers.BertForSequenceClassification.from_pretrained(FIXTURES / "bert" / "base", num_labels=3).eval()
    head.classifier.load_state_dict(
        {
            k.removeprefix("classifier."): v
            for k, v in load_file(FIXTURES / "bert" / "head_lora.classifier.safetensors").items()
        }
    )
    adapters.init(head)
    head.load_adapter(FIXTURES / "bert" / "head_lora", set_active=True)
    logits = load_file(FIXTURES / "bert" / "head_lora.logits.safetensors")["logits"]
    with torch.no_grad():
        assert_close(head(**inputs_of("bert")).logits, logits, ulps=CROSS_LIBRARY_ULPS)
