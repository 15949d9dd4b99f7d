"""Adapters the reference library saved from the dual CLIPModel load here with equal outputs.

The fixtures (``tests/fixtures/reference/clip/``, manifest.json "dual_models") were written by
``make_vision_fixtures.py``; the outputs hold both towers' last hidden states, flattened per
example and concatenated (text first). They pin the layer numbering across the two towers
(``seq_bn_custom`` has ``leave_out=[1]`` and a reduction factor for layer 0) and each tower's own
hidden size (text 32, vision 64).
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
DUAL = json.loads((FIXTURES / "manifest.json").read_text()).get("dual_models", {})
CASES = [(model_type, case) for model_type, info in sorted(DUAL.items()) for case in info["cases"]]


def both_towers(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    towers = (out.text_model_output.last_hidden_state, out.vision_model_output.last_hidden_state)
    return torch.cat([t.flatten(1) for t in towers], dim=1)


def load(model_type: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    cls = getattr(transformers, DUAL[model_type]["base_class"])
    model = cls.from_pretrained(FIXTURES / model_type / "base").eval()
    return model, load_file(FIXTURES / model_type / "inputs.safetensors")


@pytest.mark.parametrize("model_type", sorted(DUAL))
def test_plain_dual_model_matches_reference(model_type: str) -> None:
    model, inputs = load(model_type)
    expected = load_file(FIXTURES / model_type / "output_plain.safetensors")["last_hidden_state"]
    assert_close(both_towers(model, inputs), expected, ulps=CROSS_LIBRARY_ULPS)


@pytest.mark.parametrize("model_type,case", CASES, ids=[f"{m}-{c}" for m, c in CASES])
def test_reference_adapter_gives_reference_output_in_both_towers(model_type: str, case: str) -> None:
    model, inputs = load(model_type)
    adapters.init(model)
    model.load_adapter(FIXTURES / model_type / case, set_active=True)
    expected = load_file(FIXTURES / model_type / f"{case}.expected.safetensors")["last_hidden_state"]
    assert_close(both_towers(model, inputs), expected, ulps=CROSS_LIBRARY_ULPS)
