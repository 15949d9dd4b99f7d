"""VeRA files: the reference library's layout loads and computes the reference's function.

The reference saves ``d``/``b`` as square matrices and no shared random matrices; this library
saves vectors plus the shared matrices. Diagonal matrices load as vectors; matrices that training
filled off the diagonal put the adapter in full mode, which computes and saves the matrices as the
reference does. See ``methods/lora/vera.py``.
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
from adapters import AdapterError, AdapterLoadError
from adapters.methods.lora import VeRA
from adapters.testing import CROSS_LIBRARY_ULPS, assert_close, randomize_adapter

FIXTURE = Path(__file__).parent / "fixtures" / "reference" / "bert"
# Reference files whose every parameter got N(0, 0.1) noise, off-diagonal entries of d and b included
# (written by tests/fixtures/reference/dropin/make_dropin.py with the reference library).
DROPIN = Path(__file__).parent / "fixtures" / "reference" / "dropin"
# Every model type where the reference can run VeRA (not gpt2's fused Conv1D, nor llama/mistral).
REFERENCE_VERA_MODELS = (
    "albert", "bart", "bert", "deberta-v2", "distilbert", "electra", "roberta", "t5", "vit", "xlm-roberta"
)  # fmt: skip


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


def _veras(model, name: str) -> list[VeRA]:
    return [m for m in model.adapters_state.modules_of(name).values() if isinstance(m, VeRA)]


def _trained_reference_file(tmp_path: Path) -> Path:
    """The bert fixture with noise on every entry of d and b, as training the reference's matrices gives."""
    folder = _copy_fixture(tmp_path)
    tensors = load_file(folder / "adapter.safetensors")
    generator = torch.Generator().manual_seed(7)
    noised = {k: v + 0.1 * torch.randn(v.shape, generator=generator) for k, v in tensors.items()}
    save_file(noised, folder / "adapter.safetensors")
    return folder


def test_reference_vera_with_off_diagonal_entries_computes_the_reference_definition(tmp_path):
    """h = W x + b + (alpha / r) * x (vera_B @ lora_B @ vera_D @ lora_A)^T with the file's full matrices.

    The shared lora_A / lora_B are drawn here as the reference draws them (seed, then Kaiming-uniform
    A then B, shaped from the first adapted linear); nothing of this library's computation is used.
    """
    folder = _trained_reference_file(tmp_path)
    tensors = load_file(folder / "adapter.safetensors")
    config = json.loads((folder / "adapter_config.json").read_text())["config"]
    r, scaling = config["r"], config["alpha"] / config["r"]
    torch.manual_seed(config["init_weights_seed"])
    shared_a = torch.nn.init.kaiming_uniform_(torch.zeros(r, 32))
    shared_b = torch.nn.init.kaiming_uniform_(torch.zeros(32, r))
    model = _fresh_bert()
    model.load_adapter(folder, set_active=True)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(3))
    for layer in (0, 1):
        for role in ("query", "value"):
            linear = getattr(model.encoder.layer[layer].attention.self, role)
            prefix = f"encoder.layer.{layer}.attention.self.{role}.loras.vera."
            vera_d, vera_b = tensors[prefix + "vera_D"], tensors[prefix + "vera_B"]
            assert (vera_d - torch.diag(torch.diagonal(vera_d))).abs().max() > 0.05  # really full
            delta_w = vera_b @ shared_b @ vera_d @ shared_a
            with torch.no_grad():
                expected = x @ linear.weight.t() + linear.bias + scaling * (x @ delta_w.t())
                assert_close(linear(x), expected, msg=prefix)
    assert all(m.full for m in _veras(model, "vera"))


@pytest.mark.parametrize("model_type", REFERENCE_VERA_MODELS)
def test_reference_trained_vera_gives_reference_outputs(model_type):
    import transformers

    entry = json.loads((DROPIN / "manifest.json").read_text())["models"][model_type]
    model = getattr(transformers, entry["base_class"]).from_pretrained(DROPIN / model_type / "base").eval()
    adapters.init(model)
    model.load_adapter(str(DROPIN / model_type / "vera"), set_active=True)
    veras = _veras(model, "vera")
    assert veras and all(m.full and m.vera_D.dim() == 2 for m in veras)
    batch = load_file(DROPIN / model_type / "inputs.safetensors")
    with torch.no_grad():
        out = model(**batch)
    expected = load_file(DROPIN / model_type / "vera.expected.safetensors")
    for key, value in expected.items():
        assert_close(getattr(out, key), value, ulps=CROSS_LIBRARY_ULPS, msg=f"{model_type}: {key}")


def test_full_mode_vera_saves_the_reference_matrices_and_reloads_the_same_function(tmp_path, inputs):
    model = _fresh_bert()
    model.load_adapter(_trained_reference_file(tmp_path / "in"), load_as="v", set_active=True)
    randomize_adapter(model, "v", seed=3)  # every entry of the full matrices, changed here
    model.save_adapter(tmp_path / "out", "v")
    saved = load_file(tmp_path / "out" / "adapter.safetensors")
    query = model.encoder.layer[0].attention.self.query.loras["v"]
    key = "encoder.layer.0.attention.self.query.loras.v."
    assert saved[key + "vera_D"].shape == (8, 8) and saved[key + "vera_B"].shape == (32, 32)
    assert torch.equal(saved[key + "vera_D"], query.vera_D.detach())
    other = _fresh_bert()
    other.load_adapter(tmp_path / "out", set_active=True)
    assert all(m.full for m in _veras(other, "v"))
    with torch.no_grad():
        assert torch.equal(other(**inputs).last_hidden_state, model(**inputs).last_hidden_state)


def test_full_mode_is_per_adapter(tmp_path, inputs):
    model = _fresh_bert()
    model.load_adapter(_trained_reference_file(tmp_path), load_as="full")
    model.load_adapter(FIXTURE / "vera", load_as="diag")  # diagonal matrices: vectors
    model.add_adapter("ours", "vera")
    assert all(m.full for m in _veras(model, "full"))
    assert not any(m.full for name in ("diag", "ours") for m in _veras(model, name))
    model.save_adapter(tmp_path / "ours", "ours")
    assert load_file(tmp_path / "ours" / "adapter.safetensors")[
        "encoder.layer.0.attention.self.query.loras.ours.vera_D"
    ].shape == (8,)


def test_full_mode_vera_merges_and_resets(tmp_path, inputs):
    model = _fresh_bert()
    model.load_adapter(_trained_reference_file(tmp_path), set_active=True)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        unmerged = model(**inputs).last_hidden_state
        model.merge_adapter("vera")
        assert_close(model(**inputs).last_hidden_state, unmerged)
    model.reset_adapter()
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_averaging_full_mode_vera_is_refused(tmp_path):
    model = _fresh_bert()
    model.load_adapter(_trained_reference_file(tmp_path / "a"), load_as="full")
    model.load_adapter(_trained_reference_file(tmp_path / "b"), load_as="full2")
    model.load_adapter(FIXTURE / "vera", load_as="vec")
    model.load_adapter(FIXTURE / "vera", load_as="vec2")
    keys = set(model.state_dict())
    for sources in (["full", "vec"], ["vec", "full"], ["full", "full2"]):
        with pytest.raises(AdapterError, match="cannot be averaged"):
            model.average_adapter("avg", sources)
        assert set(model.state_dict()) == keys and "avg" not in model.adapters_state.configs
    model.average_adapter("avg", ["vec", "vec2"])  # vector-mode VeRA averages as before
    assert not any(m.full for m in _veras(model, "avg"))


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
