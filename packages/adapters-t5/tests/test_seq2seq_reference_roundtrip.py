"""Adapters and heads saved here for T5 and BART load in the reference library with equal outputs.

``fixtures/reference/export_ours.py`` writes them (this library), ``check_in_reference.py`` loads
them with the reference library (adapters 1.3.0, transformers 4.57): the bare models' encoder and
decoder states for each adapter, the reference's T5AdapterModel/BartAdapterModel outputs for each
adapter saved with its head (classification, seq2seq LM, QA). Runs only where the reference's
venv (/tmp/ref) exists.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
REPO = FIXTURES.parents[4]
REFERENCE_PYTHON = Path("/tmp/ref/bin/python")


@pytest.mark.parametrize("model_type", ["t5", "bart"])
def test_our_files_load_in_the_reference_with_equal_outputs(model_type: str, tmp_path: Path) -> None:
    if not REFERENCE_PYTHON.exists():
        pytest.skip("the reference library's venv (/tmp/ref) is not installed")
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    run = dict(capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    export = subprocess.run([sys.executable, str(FIXTURES / "export_ours.py"), str(tmp_path), model_type], **run)
    assert export.returncode == 0, export.stdout + export.stderr
    check = subprocess.run([str(REFERENCE_PYTHON), str(FIXTURES / "check_in_reference.py"), str(tmp_path)], **run)
    assert check.returncode == 0, check.stdout + check.stderr
    for case in ("lora_all", "seq_bn_cross", "head_cls", "head_lm", "head_qa"):
        assert f"{model_type}/{case}: OK" in check.stdout, check.stdout
    assert "0 failed" in check.stdout, check.stdout
