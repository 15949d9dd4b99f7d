"""ReFT files written by the reference library (adapters 1.3.0) for T5 and BART compute the same here.

Fixtures: fixtures/reference/reft/ (make_fixtures.py, run with the reference library's venv; the base
models are those of fixtures/reference/). The reference intervenes in every layer of both stacks;
its decoder layers intervene at the positions of the encoder's sequence (first/last real tokens
by the encoder's attention mask), which the decoder must have: the fixtures' decoders have 9
positions for 7 source tokens. With a shorter decoder the reference fails with an index error;
here that is an ``AdapterError`` naming the reason.
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
from adapters import AdapterError
from adapters.testing import CROSS_LIBRARY_ULPS, assert_close

HERE = Path(__file__).parent / "fixtures" / "reference" / "reft"
MANIFEST = json.loads((HERE / "manifest.json").read_text())
MODEL_TYPES = sorted(k for k in MANIFEST if k != "versions")
CASES = [(model_type, case) for model_type in MODEL_TYPES for case in MANIFEST[model_type]["cases"]]
PADDINGS = ("right", "left")


def _model(model_type: str) -> torch.nn.Module:
    model_class = getattr(transformers, MANIFEST[model_type]["base_class"])
    model = model_class.from_pretrained(HERE.parent / model_type / "base").eval()
    adapters.init(model)
    return model


def _outputs(model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(**batch)
    return {"encoder_last_hidden_state": out.encoder_last_hidden_state, "last_hidden_state": out.last_hidden_state}


def _loaded(model_type: str, case: str) -> torch.nn.Module:
    model = _model(model_type)
    model.load_adapter(str(HERE / model_type / case), set_active=True)
    return model


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize(("model_type", "case"), CASES)
def test_reference_file_computes_the_reference_outputs(model_type: str, case: str, padding: str) -> None:
    model = _loaded(model_type, case)
    batch = load_file(HERE / model_type / f"inputs.{padding}.safetensors")
    expected = load_file(HERE / model_type / f"{case}.{padding}.expected.safetensors")
    got = _outputs(model, batch)
    model.set_active_adapters(None)
    plain = _outputs(model, batch)
    for key, value in expected.items():
        assert_close(got[key], value, ulps=CROSS_LIBRARY_ULPS, msg=f"{model_type}/{case} {key}")
    # The adapter acts in the decoder (the decoder-only case in the decoder alone).
    assert not torch.allclose(plain["last_hidden_state"], got["last_hidden_state"])
    assert torch.equal(plain["encoder_last_hidden_state"], got["encoder_last_hidden_state"]) == (
        case == "loreft_decoder"
    )


@pytest.mark.parametrize(("model_type", "case"), CASES)
def test_saved_file_reloads_to_the_same_function(model_type: str, case: str) -> None:
    """Our file has the reference's keys, and reloads (here) to the same outputs."""
    model = _loaded(model_type, case)
    batch = load_file(HERE / model_type / "inputs.right.safetensors")
    before = _outputs(model, batch)
    with tempfile.TemporaryDirectory() as folder:
        model.save_adapter(folder, case)
        assert set(load_file(Path(folder) / "adapter.safetensors")) == set(
            load_file(HERE / model_type / case / "adapter.safetensors")
        )
        again = _model(model_type)
        again.load_adapter(folder, set_active=True)
    after = _outputs(again, batch)
    for key, value in before.items():
        assert torch.equal(after[key], value), key


@pytest.mark.parametrize(("model_type", "case"), CASES)
def test_decoder_shorter_than_the_positions_is_refused_with_the_reason(model_type: str, case: str) -> None:
    """The reference fails with an index error (recorded in the manifest); here an AdapterError says why."""
    assert "out of bounds" in MANIFEST[model_type]["errors"][f"{case}.short_decoder"]
    model = _loaded(model_type, case)
    batch = load_file(HERE / model_type / "inputs.right.safetensors")
    batch["decoder_input_ids"] = batch["decoder_input_ids"][:, :5]
    with pytest.raises(AdapterError, match="positions of the encoder's sequence"):
        _outputs(model, batch)
