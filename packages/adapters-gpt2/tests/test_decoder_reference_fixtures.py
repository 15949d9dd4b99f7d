"""Adapters saved by the reference library (adapters 1.3.0) for decoder models load here with equal outputs.

The fixtures were written by ``fixtures/reference/make_fixtures.py`` in a separate venv with the
reference library (transformers 4.57); the base checkpoints are loaded here with transformers 5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import adapters

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
REPO = FIXTURES.parents[4]
REFERENCE_PYTHON = Path("/tmp/ref/bin/python")
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
    return cls.from_pretrained(FIXTURES / model_type / "base").eval()


@pytest.mark.parametrize("model_type", sorted(MODELS))
@torch.no_grad()
def test_plain_model_matches_reference_plain_output(model_type: str) -> None:
    got = _base(model_type)(**_load(model_type, "inputs")).last_hidden_state
    expected = _load(model_type, "output_plain")["last_hidden_state"]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


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
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_type", ["gpt2"])
def test_our_files_load_in_the_reference_with_equal_outputs(model_type: str, tmp_path: Path) -> None:
    """GPT-2 (LoRA on the fused Conv1D c_attn among them): export_ours.py, then check_in_reference.py.

    The other decoders are checked by ``nox -s reference_roundtrip``; this runs only where the
    reference library's venv exists.
    """
    if not REFERENCE_PYTHON.exists():
        pytest.skip("the reference library's venv (/tmp/ref) is not installed")
    env = {**os.environ, "PYTHONPATH": ""}
    run = dict(capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    export = subprocess.run([sys.executable, str(FIXTURES / "export_ours.py"), str(tmp_path), model_type], **run)
    assert export.returncode == 0, export.stdout + export.stderr
    check = [str(REFERENCE_PYTHON), str(REPO / "tests" / "fixtures" / "reference" / "check_in_reference.py")]
    result = subprocess.run([*check, str(tmp_path)], **run)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout and f"{model_type}/lora_all: OK" in result.stdout, result.stdout
