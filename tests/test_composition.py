"""What each composition block computes, checked against separate runs of the plain adapters."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert

import adapters
from adapters import CompositionError
from adapters.composition import Average, BatchSplit, Parallel, Split, Stack
from adapters.testing import assert_close, randomize_adapter

CONFIGS = ["seq_bn", "par_bn", "lora", "ia3", "dora"]


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, 100, (3, 6), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[2, -2:] = 0
    return {"input_ids": input_ids, "attention_mask": mask}


def adapted(config, layers=2, leave_out=()):
    model = tiny_bert(num_hidden_layers=layers)
    adapters.init(model)
    for seed, name in enumerate(["a", "b", "c"]):
        model.add_adapter(name, adapters.AdapterConfig.load(config, leave_out=list(leave_out)))
        randomize_adapter(model, name, seed=seed)
    return model


def run(model, setup, inputs):
    model.set_active_adapters(setup)
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def sliced(inputs, rows):
    return {k: v[rows] for k, v in inputs.items()}


@pytest.mark.parametrize("config", CONFIGS)
def test_batch_split_equals_each_adapter_on_its_examples(config, batch):
    model = adapted(config)
    out = run(model, BatchSplit("a", Stack("b"), batch_sizes=[1, 2]), batch)
    expected = torch.cat([run(model, "a", sliced(batch, slice(0, 1))), run(model, "b", sliced(batch, slice(1, 3)))])
    assert_close(out, expected)
    with pytest.raises(CompositionError, match="batch size 3"):
        run(model, BatchSplit("a", "b", batch_sizes=[1, 1]), batch)


@pytest.mark.parametrize("config", CONFIGS)
def test_parallel_equals_separate_runs_concatenated(config, batch):
    model = adapted(config, layers=3, leave_out=[0])
    out = run(model, Parallel("a", "b", "c"), batch)
    expected = torch.cat([run(model, name, batch) for name in "abc"])
    assert_close(out, expected)
    model.set_active_adapters(None)
    with torch.no_grad():
        assert model(**batch).last_hidden_state.shape[0] == 3, "deactivating Parallel restores the batch"


@pytest.mark.parametrize("config", CONFIGS)
def test_average_with_weights_one_zero_is_the_first_adapter(config, batch):
    model = adapted(config)
    assert_close(run(model, Average("a", "b", weights=[1, 0]), batch), run(model, "a", batch))
    both = run(model, Average("a", "b"), batch)
    assert not torch.allclose(both, run(model, "a", batch)) and not torch.allclose(both, run(model, "b", batch))


@pytest.mark.parametrize("config", ["seq_bn", "lora"])
def test_split_on_a_one_layer_model_is_per_position(config, batch):
    # In a one-layer model with adapters only after attention, position p's output depends on
    # the adapter that sees position p: Split equals the runs of each adapter cut at the split.
    model = adapted(config if config == "seq_bn" else "lora[attn_matrices=[],selfattn_lora=False,output_lora=True]", 1)
    out = run(model, Split("a", "b", splits=[2, 4]), batch)
    expected = torch.cat([run(model, "a", batch)[:, :2], run(model, "b", batch)[:, 2:]], dim=1)
    assert_close(out, expected)


@pytest.mark.parametrize(
    ("config", "first_layer_rows"),
    [
        # Adapters only at the FFN block: they copy the batch, so the first adapted layer runs once (as in
        # the reference library).
        ("seq_bn", 3),
        # An adapter after attention (or inside it, LoRA) needs the copies at the layer input.
        ("double_seq_bn", 6),
        ("lora", 6),
    ],
)
def test_parallel_computes_the_layers_below_the_first_adapter_once(config, first_layer_rows, batch):
    model = adapted(config, layers=4, leave_out=[0, 1])
    model.set_active_adapters(Parallel("a", "b"))
    calls = []
    for index, layer in enumerate(model.encoder.layer):
        # Registered after activation, so it sees each layer's input after the batch is copied.
        layer.register_forward_pre_hook(lambda m, args, i=index: calls.append((i, args[0].shape[0])))
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    assert calls == [(0, 3), (1, 3), (2, first_layer_rows), (3, 6)]
    expected = torch.cat([run(model, name, batch) for name in "ab"])
    assert_close(out, expected)
