"""Adapters written by the reference library (adapters 1.3.0) load here and compute the same outputs.

Fixtures: fixtures/reference/ (make_fixtures.py, run with the reference library's venv). Each case
compares the encoder's and the decoder's last hidden states (to ``CROSS_LIBRARY_ULPS`` of their scale:
another library on another transformers release) and checks that this library saves the same weight
keys the reference wrote, so files move both ways.
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
MANIFEST = json.loads((HERE / "manifest.json").read_text())
CASES = [(model_type, case) for model_type, entry in sorted(MANIFEST.items()) for case in entry["cases"]]
# T5's relative position bias: the reference computes it over prefix + keys as if the prefix
# positions came first, so every real key moves prefix_length positions away from its query (its
# buckets shift). Here prefix positions get no bias and the keys keep theirs; the weights load the
# same, the outputs differ on purpose.
DIFFERS_ON_PURPOSE = {("t5", "prefix_tuning")}


def _model(model_type: str) -> torch.nn.Module:
    entry = MANIFEST[model_type]
    model_class = getattr(transformers, entry["base_class"])
    return model_class.from_pretrained(HERE / model_type / "base", attn_implementation="eager").eval()


def _outputs(model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(**batch)
    # EncoderDecoderModel has an LM head: the fixtures hold its decoder output as logits.
    decoder = "last_hidden_state" if hasattr(out, "last_hidden_state") else "logits"
    return {"encoder_last_hidden_state": out.encoder_last_hidden_state, decoder: getattr(out, decoder)}


def _saved_keys(folder: Path) -> set[str]:
    files = list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))
    if files[0].suffix == ".safetensors":
        return set(load_file(files[0]))
    return set(torch.load(files[0], weights_only=True))


@pytest.mark.parametrize("model_type", sorted(MANIFEST))
def test_base_model_matches_reference(model_type: str) -> None:
    model = _model(model_type)
    batch = load_file(HERE / model_type / "inputs.safetensors")
    expected = load_file(HERE / model_type / "output_plain.safetensors")
    for key, value in _outputs(model, batch).items():
        assert_close(value, expected[key], ulps=CROSS_LIBRARY_ULPS)


@pytest.mark.parametrize(("model_type", "case"), CASES)
def test_reference_adapter_loads_with_equal_outputs(model_type: str, case: str) -> None:
    model = _model(model_type)
    adapters.init(model)
    name = model.load_adapter(str(HERE / model_type / case), set_active=True)
    batch = load_file(HERE / model_type / "inputs.safetensors")
    got = _outputs(model, batch)
    expected = load_file(HERE / model_type / f"{case}.expected.safetensors")
    plain = load_file(HERE / model_type / "output_plain.safetensors")
    assert any(not torch.allclose(got[key], plain[key], atol=1e-4) for key in plain), "the adapter did not act"
    if (model_type, case) in DIFFERS_ON_PURPOSE:
        # The documented difference is real (and is the only one: the weights and keys below match).
        assert not torch.allclose(got["encoder_last_hidden_state"], expected["encoder_last_hidden_state"], atol=1e-5)
    else:
        for key, value in got.items():
            assert_close(value, expected[key], ulps=CROSS_LIBRARY_ULPS, msg=f"{model_type}/{case}: {key}")
    # Ours saves the reference's keys (so the reference loads our files).
    with tempfile.TemporaryDirectory() as folder:
        model.save_adapter(folder, name)
        ours = _saved_keys(Path(folder))
    theirs = _saved_keys(HERE / model_type / case)
    # The reference repeats the prefix pool under every attention layer; ours keeps it once (it reads both).
    theirs = {k for k in theirs if ".prefix_tuning.pool." not in k}
    assert ours == theirs, (
        f"keys only here: {sorted(ours - theirs)[:3]}, only in the reference: {sorted(theirs - ours)[:3]}"
    )
