"""Adapters saved by the reference library (adapters 1.3.0) for decoder models load here with equal outputs.

The fixtures were written by ``fixtures/reference/make_fixtures.py`` in a separate venv with the
reference library (transformers 4.57); the base checkpoints are loaded here with transformers 5.
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
MODELS = json.loads((FIXTURES / "manifest.json").read_text())["models"]
CASES = [(model_type, case) for model_type, info in sorted(MODELS.items()) for case in info["cases"]]
# The reference's built-in Gemma interface hooks its bottleneck adapters on o_proj / down_proj, before
# Gemma's post-norms, and feeds them post_norm(h + x); here they act after the whole sub-layer (see
# adapters_gpt2.specs). The files load (same keys and shapes); the outputs differ by design.
OTHER_BOTTLENECK_PLACEMENT = {"gemma2", "gemma3_text"}


def _load(model_type: str, name: str) -> torch.Tensor:
    return load_file(FIXTURES / model_type / f"{name}.safetensors")


def _base(model_type: str) -> torch.nn.Module:
    cls = getattr(transformers, MODELS[model_type]["base_class"])
    # The attention the reference ran (Gemma 2: eager, for its logit soft-capping); the default when
    # config.json names none differs between transformers releases.
    implementation = MODELS[model_type]["config"].get("attn_implementation")
    options = {"attn_implementation": implementation} if implementation else {}
    return cls.from_pretrained(FIXTURES / model_type / "base", **options).eval()


@pytest.mark.parametrize("model_type", sorted(MODELS))
@torch.no_grad()
def test_plain_model_matches_reference_plain_output(model_type: str) -> None:
    got = _base(model_type)(**_load(model_type, "inputs")).last_hidden_state
    expected = _load(model_type, "output_plain")["last_hidden_state"]
    assert_close(got, expected, ulps=CROSS_LIBRARY_ULPS)


@pytest.mark.parametrize(("model_type", "case"), CASES)
@torch.no_grad()
def test_reference_adapter_loads_and_matches(model_type: str, case: str) -> None:
    model = _base(model_type)
    adapters.init(model)
    # load_adapter raises on any missing or unexpected weight key.
    name = model.load_adapter(str(FIXTURES / model_type / case), set_active=True)
    assert name == case
    got = model(**_load(model_type, "inputs")).last_hidden_state
    if model_type in OTHER_BOTTLENECK_PLACEMENT and "bn" in case:
        assert torch.isfinite(got).all()
        return
    expected = _load(model_type, f"{case}.expected")["last_hidden_state"]
    assert_close(got, expected, ulps=CROSS_LIBRARY_ULPS)
