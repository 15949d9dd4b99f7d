"""Prefix tuning inside ConfigUnions (MAM, UniPELT's layout) saved by the reference library on ViT and BEiT.

Fixtures: fixtures/reference/ (make_fixtures.py, run with the reference library's venv, transformers
4.57). The gated prefix of UniPELT keeps one gate per layer where the 4.x self-attention module was
(``encoder.layer.N.attention.attention.prefix_tuning.prefix_gates.NAME``); these files load here, give
the reference's outputs, and this library saves the same weight keys.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import adapters
from adapters.testing import CROSS_LIBRARY_ULPS, assert_close

HERE = Path(__file__).parent / "fixtures" / "reference"
MODELS = json.loads((HERE / "manifest.json").read_text())["models"]
CASES = [(model_type, case) for model_type, entry in sorted(MODELS.items()) for case in entry["cases"]]


def _base(model_type: str) -> torch.nn.Module:
    cls = getattr(transformers, MODELS[model_type]["base_class"])
    return cls.from_pretrained(HERE / model_type / "base").eval()


def _saved_keys(folder: Path) -> set[str]:
    files = list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))
    if files[0].suffix == ".safetensors":
        return set(load_file(files[0]))
    return set(torch.load(files[0], weights_only=True))


@pytest.mark.parametrize(("model_type", "case"), CASES)
@torch.no_grad()
def test_reference_union_with_prefix_loads_and_matches(model_type: str, case: str) -> None:
    model = _base(model_type)
    adapters.init(model)
    # load_adapter raises on any missing or unexpected weight key (the prefix gates included).
    name = model.load_adapter(str(HERE / model_type / case), set_active=True)
    batch = load_file(HERE / model_type / "inputs.safetensors")
    got = model(**batch).last_hidden_state
    expected = load_file(HERE / model_type / f"{case}.expected.safetensors")["last_hidden_state"]
    plain = load_file(HERE / model_type / "output_plain.safetensors")["last_hidden_state"]
    assert not torch.allclose(got, plain, atol=1e-4), "the adapter did not act"
    assert_close(got, expected, ulps=CROSS_LIBRARY_ULPS, msg=f"{model_type}/{case}")
    with tempfile.TemporaryDirectory() as folder:
        model.save_adapter(folder, name)
        ours = _saved_keys(Path(folder))
    # The reference repeats the prefix pool under every attention layer; ours keeps it once (it reads both).
    theirs = {k for k in _saved_keys(HERE / model_type / case) if ".prefix_tuning.pool." not in k}
    assert ours == theirs, f"only here: {sorted(ours - theirs)[:3]}, only in the reference: {sorted(theirs - ours)[:3]}"
