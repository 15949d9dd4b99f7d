"""VeRA files: the reference library's layout is converted when possible and refused clearly otherwise.

The reference saves ``d``/``b`` as square matrices and no shared random matrices; this library
saves vectors plus the shared matrices. See ``methods/lora/vera.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert
from safetensors.torch import load_file, save_file

import adapters
from adapters import AdapterLoadError
from adapters.testing import randomize_adapter

FIXTURE = Path(__file__).parent / "fixtures" / "reference" / "bert"


def _fresh_bert():
    import transformers

    model = transformers.BertModel.from_pretrained(FIXTURE / "base").eval()
    adapters.init(model)
    return model


def _copy_fixture(tmp_path: Path) -> Path:
    folder = tmp_path / "vera"
    shutil.copytree(FIXTURE / "vera", folder)
    return folder


def test_reference_vera_matrices_are_diagonal_and_become_vectors():
    tensors = load_file(FIXTURE / "vera" / "adapter.safetensors")
    assert all(v.dim() == 2 and v.shape[0] == v.shape[1] for v in tensors.values())
    assert not any("shared_parameters" in k for k in tensors)  # the reference does not save A and B
    model = _fresh_bert()
    model.load_adapter(FIXTURE / "vera")
    query = model.encoder.layer[0].attention.self.query.loras["vera"]
    key = "encoder.layer.0.attention.self.query.loras.vera.vera_B"
    assert query.vera_B.dim() == 1
    assert torch.equal(query.vera_B.detach(), torch.diagonal(tensors[key]))  # the diagonal, copied


def test_reference_vera_with_off_diagonal_entries_is_refused(tmp_path):
    folder = _copy_fixture(tmp_path)
    tensors = load_file(folder / "adapter.safetensors")
    key = "encoder.layer.1.attention.self.value.loras.vera.vera_D"
    tensors[key] = tensors[key] + 0.01  # as training the reference's full matrices does
    save_file(tensors, folder / "adapter.safetensors")
    model = _fresh_bert()
    keys = set(model.state_dict())
    with pytest.raises(AdapterLoadError, match="off-diagonal"):
        model.load_adapter(folder)
    assert set(model.state_dict()) == keys and not model.adapters_state.configs


def test_reference_vera_without_seed_is_refused(tmp_path):
    folder = _copy_fixture(tmp_path)
    data = json.loads((folder / "adapter_config.json").read_text())
    data["config"]["init_weights_seed"] = None
    (folder / "adapter_config.json").write_text(json.dumps(data))
    model = _fresh_bert()
    keys = set(model.state_dict())
    with pytest.raises(AdapterLoadError, match="without init_weights_seed"):
        model.load_adapter(folder)
    assert set(model.state_dict()) == keys and not model.adapters_state.configs


def test_our_vera_files_hold_vectors_and_the_shared_matrices(tmp_path, inputs):
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("v", "vera", set_active=True)
    randomize_adapter(model, "v")
    model.save_adapter(tmp_path, "v")
    tensors = load_file(tmp_path / "adapter.safetensors")
    assert tensors["shared_parameters.v.lora_A"].shape == (8, 32)
    assert tensors["encoder.layer.0.attention.self.query.loras.v.vera_D"].shape == (8,)
    assert tensors["encoder.layer.0.attention.self.query.loras.v.vera_B"].shape == (32,)
    other = tiny_bert()
    adapters.init(other)
    other.load_adapter(tmp_path, load_as="w", set_active=True)
    with torch.no_grad():
        # The same base weights and the adapter's tensors saved and loaded back: the same computation.
        assert torch.equal(other(**inputs).last_hidden_state, model(**inputs).last_hidden_state)
    assert torch.equal(other.shared_parameters["w"].lora_A, model.shared_parameters["v"].lora_A)
