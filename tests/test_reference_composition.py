"""Composition setups give the outputs the reference library (adapters 1.3.0) computes.

Adapters and expected outputs come from ``tests/fixtures/reference/make_composition_fixtures.py``
(run in a separate venv with the reference library) on the tiny BERT of ``bert/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import adapters
from adapters.composition import AdapterCompositionBlock, Average
from adapters.testing import CROSS_LIBRARY_ULPS, assert_close

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
FOLDER = FIXTURES / "composition"
MANIFEST = json.loads((FOLDER / "manifest.json").read_text())
EXPECTED = load_file(FOLDER / "expected.safetensors")

# Cases whose reference output follows another definition than ours, with the reason.
DIFFERENT_DEFINITION = {
    # The reference's Average returns sum(w_i * out_i) / n; here it is sum(w_i * out_i), so that
    # Average with weights [1, 0] is the first adapter (tested in test_composition.py).
    "average_bn": "reference divides the weighted sum by the number of adapters",
    "average_lora": "reference divides the weighted sum by the number of adapters",
}
PENDING: set[str] = set()  # cases whose feature has not landed yet


@pytest.fixture(scope="module")
def model():
    model = transformers.BertModel.from_pretrained(FIXTURES / "bert" / "base").eval()
    adapters.init(model)
    for name in ["bn_a", "bn_b", "bn_c", "lora_a", "lora_b"]:
        model.load_adapter(FOLDER / name)
    # The fusion of fuse_bn and stack_fuse_bn: dynamic, saved by the reference as a legacy pickle.
    model.load_adapter_fusion(FOLDER / "fusion_bn_a_bn_b")
    return model


CASES = [c for c in sorted(MANIFEST["setups"]) if c not in DIFFERENT_DEFINITION and c not in PENDING]


@pytest.mark.parametrize("case", CASES)
def test_setup_matches_the_reference(model, case):
    setup = AdapterCompositionBlock.from_dict(MANIFEST["setups"][case])
    model.set_active_adapters(setup)
    with torch.no_grad():
        out = model(**load_file(FIXTURES / "bert" / "inputs.safetensors")).last_hidden_state
    assert_close(out, EXPECTED[case], ulps=CROSS_LIBRARY_ULPS)


@pytest.mark.parametrize("case", sorted(DIFFERENT_DEFINITION))
def test_average_is_the_weighted_sum_not_the_references_mean(model, case):
    setup = AdapterCompositionBlock.from_dict(MANIFEST["setups"][case])
    assert isinstance(setup, Average)
    model.set_active_adapters(setup)
    inputs = load_file(FIXTURES / "bert" / "inputs.safetensors")
    with torch.no_grad():
        out = model(**inputs).last_hidden_state
    assert not torch.allclose(out, EXPECTED[case], atol=1e-4), "the reference's definition differs"
