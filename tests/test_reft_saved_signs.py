"""LoReFT files mean what torch's Householder map makes of them; fresh adapters still train with weight decay.

A file stores R as Householder reflectors (below the diagonal of ``original``), a diagonal ``d`` and
an orthogonal ``base``: torch computes ``R = (base @ (Q * trunc(d)))^T``, where Q is the product of
the reflections and ``trunc`` (``.int()``) scales column i of Q by ``trunc(d_i)``: 0 for |d_i| < 1,
+-2 for 2 <= |d_i| < 3. Expected values here build Q reflection by reflection from the definition.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from conftest import tiny_bert
from safetensors.torch import load_file, save_file

import adapters
from adapters import LoReftConfig
from adapters.testing import assert_close, randomize_adapter

ORIGINAL = "projection.parametrizations.weight.original"
BASE = "projection.parametrizations.weight.0.base"
PREFIX = "encoder.layer.1.reft_layer.refts.a.units.0."
DIAGONAL = torch.tensor([-0.93, -1.2, 2.5])  # torch reads 0, -1, 2


def _model() -> torch.nn.Module:
    model = tiny_bert()
    adapters.init(model)
    return model


def _householder_rows(original: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """R from the stored tensors by the definition: reflections I - 2 v v^T / |v|^2, v_j = e_j + A[j+1:, j]."""
    tall = original.double().mT  # d x r
    d, r = tall.shape
    q = torch.eye(d, dtype=torch.float64)
    for j in range(r):
        v = torch.zeros(d, dtype=torch.float64)
        v[j] = 1.0
        v[j + 1 :] = tall[j + 1 :, j]
        q = q @ (torch.eye(d, dtype=torch.float64) - 2.0 * torch.outer(v, v) / (v @ v))
    q = q[:, :r] * tall.diagonal().trunc()
    return (base.double() @ q).mT


def _file_with_diagonal(folder: Path) -> dict[str, torch.Tensor]:
    """An adapter folder whose first unit in layer 1 has ``DIAGONAL`` on its sign diagonal, as a reference
    file of an adapter trained with weight decay or perturbed might."""
    model = _model()
    model.add_adapter("a", config=LoReftConfig(r=3, layers=[1], prefix_positions=2))
    randomize_adapter(model, "a", seed=3)
    model.save_adapter(str(folder), "a")
    tensors = load_file(folder / "adapter.safetensors")
    tensors[PREFIX + ORIGINAL].diagonal().copy_(DIAGONAL)
    save_file(tensors, folder / "adapter.safetensors")
    # The config names the weights file by size and hash; a reference file has no such record.
    data = json.loads((folder / "adapter_config.json").read_text())
    del data["integrity"]
    (folder / "adapter_config.json").write_text(json.dumps(data))
    return tensors


def _inputs() -> dict[str, torch.Tensor]:
    input_ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(input_ids)
    mask[1, -2:] = 0
    return {"input_ids": input_ids, "attention_mask": mask}


def _output(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**_inputs()).last_hidden_state


def test_loaded_diagonal_is_truncated_as_torch_reads_it() -> None:
    with tempfile.TemporaryDirectory() as folder:
        tensors = _file_with_diagonal(Path(folder))
        model = _model()
        model.load_adapter(folder, set_active=True)
    unit = model.encoder.layer[1].reft_layer.refts["a"].units[0]
    expected = _householder_rows(tensors[PREFIX + ORIGINAL], tensors[PREFIX + BASE])
    R = unit.projection.weight.detach()
    assert_close(R, expected.float())
    # -0.93 switches row 0 off, -1.2 keeps row 1 at unit length, 2.5 doubles row 2.
    assert_close(R.norm(dim=1), torch.tensor([0.0, 1.0, 2.0]))
    # The intervention at the prefix positions computes with that R.
    W, b = unit.learned_source.weight.detach(), unit.learned_source.bias.detach()
    model.set_active_adapters(None)
    with torch.no_grad():
        h = model.encoder.layer[1](model(**_inputs(), output_hidden_states=True).hidden_states[1])
    h = (h[0] if isinstance(h, tuple) else h)[0, :2].double()
    edit = (h @ W.double().T + b.double() - h @ expected.T) @ expected
    model.set_active_adapters("a")
    assert_close(_output(model)[0, :2], (h + edit).float())


def test_saved_file_holds_the_integer_factors_and_reloads_to_the_same_function() -> None:
    with tempfile.TemporaryDirectory() as folder:
        tensors = _file_with_diagonal(Path(folder))
        model = _model()
        model.load_adapter(folder, set_active=True)
    before = _output(model)
    with tempfile.TemporaryDirectory() as folder:
        model.save_adapter(folder, "a")
        saved = load_file(Path(folder) / "adapter.safetensors")
        # trunc(d) exactly, which torch's .int() reads back: the file means this function in the reference too.
        assert torch.equal(saved[PREFIX + ORIGINAL].diagonal(), DIAGONAL.trunc())
        assert torch.equal(saved[PREFIX + ORIGINAL].tril(-1), tensors[PREFIX + ORIGINAL].tril(-1))
        again = _model()
        again.load_adapter(folder, set_active=True)
    assert torch.equal(_output(again), before)
    # A whole-model state dict (nn.Module.load_state_dict) reads the diagonal the same way.
    copy = _model()
    copy.add_adapter("a", config=LoReftConfig(r=3, layers=[1], prefix_positions=2), set_active=True)
    copy.load_state_dict(model.state_dict())
    assert torch.equal(_output(copy), before)


def test_fresh_adapter_trains_with_adamw_weight_decay() -> None:
    """Weight decay moves the sign diagonal off +-1 at every step; R keeps acting, receiving gradients."""
    torch.manual_seed(0)
    model = _model()
    model.add_adapter("a", config=LoReftConfig(r=2, layers=[1], prefix_positions=2, dropout=0.0), set_active=True)
    model.train_adapter("a")
    unit = model.encoder.layer[1].reft_layer.refts["a"].units[0]
    original = unit.projection.parametrizations.weight.original
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    weights = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(2))
    for _ in range(5):
        loss = (model(**_inputs()).last_hidden_state * weights).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    diagonal = original.detach().diagonal()
    assert (diagonal.abs() < 1).all()  # torch's own map would read 0 here
    loss = (model(**_inputs()).last_hidden_state * weights).sum()
    loss.backward()
    assert original.grad is not None and original.grad.triu(1).abs().sum() > 0
    R = unit.projection.weight.detach()
    assert_close(R @ R.T, torch.eye(2))
    # Saved with exact signs.
    saved = model.state_dict()[PREFIX + ORIGINAL]
    assert torch.equal(saved.diagonal(), torch.sign(diagonal))
