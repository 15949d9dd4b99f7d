"""AdapterDrop: ``skip_layers`` bypasses the adapters of the listed layers.

A skipped layer must compute exactly what it computes without the adapter: the model with adapter
``a`` active and layers 0 and 2 skipped equals the model with adapter ``b``, a copy of ``a`` made
with ``leave_out=[0, 2]``. The other layers are unchanged, and nothing is hooked in skipped layers.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert

import adapters
from adapters import AdapterError, AdapterSetup, CompositionError
from adapters.composition import BatchSplit, Parallel, Stack
from adapters.testing import assert_close, randomize_adapter

SKIP = [0, 2]
CONFIGS = {
    "seq_bn": "seq_bn",
    "double_seq_bn": "double_seq_bn",
    "par_bn": "par_bn",
    "compacter": "compacter[reduction_factor=8]",
    "lora": "lora[attn_matrices=['q','k','v'],intermediate_lora=True,output_lora=True]",
    "ia3": "ia3",
    "dora": "dora",
    "vera": "vera",
    "prefix_tuning_flat": "prefix_tuning_flat[prefix_length=3]",
    "loreft": "loreft",
}


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, 100, (3, 6), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[2, -2:] = 0
    return {"input_ids": input_ids, "attention_mask": mask}


def run(model, inputs, setup=None, skip_layers=None):
    if setup is not None:
        model.set_active_adapters(setup, skip_layers=skip_layers)
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def _segments(path: str, old: str, new: str) -> str:
    return ".".join(new if part == old else part for part in path.split("."))


def copy_with_leave_out(model, source: str, target: str, config: str) -> None:
    """Add ``target`` as ``source`` without the SKIP layers (``leave_out``), with source's weights."""
    model.add_adapter(target, adapters.AdapterConfig.load(config, leave_out=SKIP))
    state = model.adapters_state
    sources = state.modules_of(source)
    kept = [i for i, _ in state.layers if i not in SKIP]
    for path, module in state.modules_of(target).items():
        # Parameters and buffers (VeRA's shared random matrices are buffers).
        weights = sources[_segments(path, target, source)].state_dict()
        for key, value in weights.items():
            if key.endswith("control_trans") and value.shape != module.state_dict()[key].shape:
                # Flat prefixes hold every layer's keys and values side by side: keep the kept layers'.
                table = value.view(adapters.AdapterConfig.load(config).prefix_length, -1)
                width = table.shape[1] // len(state.layers)
                weights[key] = torch.cat([table[:, i * width : (i + 1) * width] for i in kept], dim=1).reshape(-1)
        module.load_state_dict(weights)


def adapted(config: str, layers: int = 3, name: str = "a"):
    model = tiny_bert(num_hidden_layers=layers)
    adapters.init(model)
    model.add_adapter(name, config)
    randomize_adapter(model, name, std=0.3, seed=1)
    return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_skipped_layers_equal_an_adapter_left_out_there(name, batch):
    config = CONFIGS[name]
    model = adapted(config, name="src")
    copy_with_leave_out(model, "src", "dst", config)
    plain = run(model, batch, None)
    full = run(model, batch, "src")
    skipped = run(model, batch, "src", skip_layers=SKIP)
    # The same ops on the same weights (the copy's), none in the skipped layers: bit-identical.
    assert torch.equal(skipped, run(model, batch, "dst"))
    assert not torch.allclose(skipped, full, atol=1e-4) and not torch.allclose(skipped, plain, atol=1e-4)
    assert model.adapters_state.skip_layers == frozenset()
    # Activating again without skip_layers uses every layer again (as in the reference).
    assert torch.equal(run(model, batch, "src"), full)


@pytest.mark.parametrize("name", ["seq_bn", "lora", "prefix_tuning_flat"])
def test_skipping_every_adapted_layer_is_the_plain_model(name, batch):
    model = adapted(CONFIGS[name])
    model.set_active_adapters(None)
    plain = run(model, batch)
    # Nothing is hooked anywhere: the plain model's own computation.
    assert torch.equal(run(model, batch, "a", skip_layers=[0, 1, 2]), plain)


@pytest.mark.parametrize("name", ["seq_bn", "lora"])
def test_nothing_is_hooked_in_skipped_layers(name):
    model = adapted(CONFIGS[name])
    model.set_active_adapters("a", skip_layers=[0])

    def hooks(layer) -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in layer.modules())

    layers = model.encoder.layer
    assert hooks(layers[0]) == 0 and hooks(layers[1]) > 0
    model.set_active_adapters("a")
    assert hooks(layers[0]) == hooks(layers[1])


@pytest.mark.parametrize("name", ["seq_bn", "lora"])
def test_skip_layers_under_parallel_and_batch_split(name, batch):
    model = adapted(CONFIGS[name])
    model.add_adapter("b", CONFIGS[name])
    randomize_adapter(model, "b", std=0.3, seed=2)
    separate = torch.cat([run(model, batch, n, skip_layers=[0, 1]) for n in "ab"])

    model.set_active_adapters(Parallel("a", "b"), skip_layers=[0, 1])
    calls = []
    for index, layer in enumerate(model.encoder.layer):
        layer.register_forward_pre_hook(lambda m, args, i=index: calls.append((i, args[0].shape[0])))
    assert_close(run(model, batch), separate)
    # The batch is copied at the first layer where an adapter acts, not at a skipped one (seq_bn's
    # adapters at the layer's FFN block copy it there, so that layer's input is not copied).
    assert calls == [(0, 3), (1, 3), (2, 3 if name == "seq_bn" else 6)]

    split = run(model, batch, BatchSplit("a", Stack("b"), batch_sizes=[1, 2]), skip_layers=[0, 1])
    assert_close(split, torch.cat([separate[:1], separate[4:]]))


def test_adapter_setup_keeps_the_models_skip_layers_or_takes_its_own(batch):
    model = adapted("seq_bn")
    expected = run(model, batch, "a", skip_layers=[0])
    full = run(model, batch, "a")
    model.set_active_adapters(None, skip_layers=[0])
    # AdapterSetup installs what set_active_adapters does: the same computation.
    with AdapterSetup("a"):
        assert torch.equal(run(model, batch), expected)
    model.set_active_adapters(None)
    with AdapterSetup("a", skip_layers=[0]):
        assert torch.equal(run(model, batch), expected)
    with AdapterSetup("a"):
        assert torch.equal(run(model, batch), full)
    assert model.adapters_state.skip_layers == frozenset() and model.active_adapters is None


def test_invalid_skip_layers_are_refused_and_change_nothing(batch):
    model = adapted("seq_bn")
    before = run(model, batch, "a", skip_layers=[1])
    with pytest.raises(AdapterError, match=r"skip_layers \[5\] are not layers of this model; its layers are \[0, 1, 2"):
        model.set_active_adapters("a", skip_layers=[5])
    with pytest.raises(AdapterError, match="list of layer indices"):
        model.set_active_adapters("a", skip_layers=1)
    # A setup refused at activation keeps the previous skip_layers too.
    # (Two LoRAs stacked on the non-square FFN linears: refused by the places themselves.)
    for name in "cd":
        model.add_adapter(name, "lora[intermediate_lora=True]")
    with pytest.raises(CompositionError, match="non-square"):
        model.set_active_adapters(Stack("c", "d"), skip_layers=[0])
    assert model.adapters_state.skip_layers == frozenset({1})
    assert torch.equal(run(model, batch), before)


def test_train_adapter_uses_every_layer_and_delete_keeps_skip_layers(batch):
    model = adapted("seq_bn")
    model.add_adapter("b", "seq_bn")
    model.set_active_adapters(["a", "b"], skip_layers=[0])
    model.delete_adapter("b")
    assert model.active_adapters == Stack("a") and model.adapters_state.skip_layers == frozenset({0})
    model.train_adapter("a")
    assert model.adapters_state.skip_layers == frozenset()
