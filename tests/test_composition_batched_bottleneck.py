"""Parallel and BatchSplit over plain bottleneck adapters take the batched path; it equals each adapter alone."""

from __future__ import annotations

import pytest
import torch
from conftest import each_adapter_alone, padded_batch, with_random_adapters
from transformers import GPT2Config, GPT2Model

from adapters import CompositionError
from adapters.composition import BatchSplit, Parallel, Stack
from adapters.core.residual import ResidualBlockHooks
from adapters.methods.bottleneck.batched import BatchedBottlenecks
from adapters.methods.bottleneck.composition import ComposedBottlenecks
from adapters.testing import assert_close


def block_functions(model) -> set[type]:
    """The types of the functions the active residual-block hooks route through."""
    found = set()
    for module in model.modules():
        forward = module.__dict__.get("forward")
        if isinstance(getattr(forward, "__self__", None), ResidualBlockHooks):
            found.add(type(forward.__self__._fn))
        for hook in module._forward_hooks.values():
            if isinstance(getattr(hook, "__self__", None), ResidualBlockHooks) and hook.__self__._fn is not None:
                found.add(type(hook.__self__._fn))
    return found


def separate_passes(model, names, inputs):
    parts = []
    for name in names:
        model.set_active_adapters(name)
        parts.append(model(**inputs).last_hidden_state)
    return torch.cat(parts)


# Per-adapter scalings go into the stacked up-projections; leave_out=[0] lets layer 0 run once and
# the adapters at its FFN block make Parallel's copies by broadcasting h + x.
SEQ_BN = "seq_bn[reduction_factor=4,scaling={scaling},leave_out={leave_out}]"


@pytest.mark.parametrize("leave_out", [[], [0]], ids=["copies_at_layer_input", "copies_at_the_block"])
@torch.no_grad()
def test_parallel_batched_path_equals_separate_passes(leave_out):
    configs = {n: SEQ_BN.format(scaling=s, leave_out=leave_out) for n, s in zip("abc", (1.0, 0.5, 2.0), strict=True)}
    model = with_random_adapters(configs)
    inputs = padded_batch(2)
    model.set_active_adapters(Parallel("a", "b", "c"))
    assert block_functions(model) == {BatchedBottlenecks}
    out = model(**inputs).last_hidden_state
    assert out.shape[0] == 6
    assert_close(out, separate_passes(model, "abc", inputs))


@pytest.mark.parametrize("config", ["double_seq_bn[reduction_factor=4]", "par_bn[reduction_factor=4,leave_out=[0]]"])
def test_houlsby_and_parallel_adapters_take_the_batched_path(config):
    model = with_random_adapters({n: config for n in "ab"})
    inputs = padded_batch(2)
    model.set_active_adapters(Parallel("a", "b"))
    assert block_functions(model) == {BatchedBottlenecks}
    with torch.no_grad():
        assert_close(model(**inputs).last_hidden_state, separate_passes(model, "ab", inputs))


@pytest.mark.parametrize("sizes", [[2, 2, 2], [1, 3, 0], [0, 4, 2]], ids=["equal", "unequal", "leading_empty"])
@torch.no_grad()
def test_batch_split_batched_path_equals_each_adapter_on_its_examples(sizes):
    configs = {n: SEQ_BN.format(scaling=s, leave_out=[]) for n, s in zip("abc", (1.0, 0.5, 2.0), strict=True)}
    model = with_random_adapters(configs)
    inputs = padded_batch(sum(sizes))
    model.set_active_adapters(BatchSplit("a", "b", "c", batch_sizes=sizes))
    assert block_functions(model) == {BatchedBottlenecks}
    out = model(**inputs).last_hidden_state
    assert_close(out, each_adapter_alone(model, "abc", sizes, inputs))


@pytest.mark.parametrize(
    ("batched", "engine"),
    [
        (Parallel("a", "b"), Parallel(Stack("a"), "b")),
        (BatchSplit("a", "b", batch_sizes=[1, 3]), BatchSplit(Stack("a"), "b", batch_sizes=[1, 3])),
    ],
    ids=["parallel", "batch_split"],
)
def test_batched_path_gradients_equal_the_engines(batched, engine):
    configs = {n: "seq_bn[reduction_factor=4,leave_out=[0]]" for n in "ab"}
    inputs = padded_batch(4 if isinstance(batched, BatchSplit) else 2)
    # A fixed random weighting of the outputs: a sum of their squares would be constant (the model ends with a
    # LayerNorm without affine change, so each position's squares add up to the hidden size), its gradients zero
    # and what both paths give for them rounding noise that differs between kernel sets.
    weights = torch.randn(4, 5, 32, generator=torch.Generator().manual_seed(7))
    grads, losses = [], []
    for setup in (batched, engine):
        model = with_random_adapters(configs)
        model.train_adapter(setup)
        model.eval()  # no dropout in the body
        loss = (model(**inputs).last_hidden_state * weights).sum()
        loss.backward()
        losses.append(loss.detach())
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
        assert block_functions(model) == ({BatchedBottlenecks} if setup is batched else {ComposedBottlenecks})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 2 * 2 * 4  # 2 layers, 2 adapters, 4 tensors
    assert_close(losses[0], losses[1])
    for key in grads[0]:
        assert_close(grads[0][key], grads[1][key], msg=key)


@pytest.mark.parametrize(
    "configs",
    [
        {"a": "seq_bn", "b": "seq_bn[reduction_factor=8]"},  # bottleneck sizes differ
        {"a": "seq_bn", "b": "seq_bn[non_linearity=gelu]"},
        {"a": "seq_bn", "b": "seq_bn[ln_before=True]"},
        {"a": "seq_bn", "b": "seq_bn[use_gating=True]"},
        {"a": "seq_bn", "b": "seq_bn[leave_out=[1]]"},  # b is missing in layer 1
        {"a": "par_bn", "b": "par_bn[dropout=0.1]"},
        {"a": "compacter[reduction_factor=4]", "b": "compacter[reduction_factor=4]"},
        {"a": "seq_bn[scaling=learned]", "b": "seq_bn"},
    ],
    ids=["sizes", "activation", "ln_before", "gating", "leave_out", "dropout", "compacter", "learned_scaling"],
)
@torch.no_grad()
def test_other_bottlenecks_run_through_the_engine_and_stay_exact(configs):
    model = with_random_adapters(configs)
    inputs = padded_batch(3)
    # Where b is left out, only that layer runs through the engine.
    expected = {ComposedBottlenecks, BatchedBottlenecks} if "leave_out" in configs["b"] else {ComposedBottlenecks}
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[2, 1]))
    assert block_functions(model) == expected
    out = model(**inputs).last_hidden_state
    assert_close(out, each_adapter_alone(model, "ab", [2, 1], inputs))
    model.set_active_adapters(Parallel("a", "b"))
    assert block_functions(model) == expected
    assert_close(model(**inputs).last_hidden_state, separate_passes(model, "ab", inputs))


@torch.no_grad()
def test_pre_ln_model_parallel_batched_path_equals_separate_passes():
    torch.manual_seed(0)
    gpt2 = GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=32)).eval()
    model = with_random_adapters({n: "seq_bn[reduction_factor=4]" for n in "ab"}, gpt2)
    inputs = padded_batch(2)
    model.set_active_adapters(Parallel("a", "b"))
    assert block_functions(model) == {BatchedBottlenecks}
    assert_close(model(**inputs).last_hidden_state, separate_passes(model, "ab", inputs))


@torch.no_grad()
def test_batched_path_refuses_a_batch_its_sizes_do_not_cover():
    model = with_random_adapters({"a": "seq_bn", "b": "seq_bn"})
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 1]))
    with pytest.raises(CompositionError, match="batch size 3"):
        model(**padded_batch(3))
