"""BatchSplit over plain LoRA adapters takes the batched path; it equals each adapter on its examples."""

from __future__ import annotations

import pytest
import torch
from conftest import each_adapter_alone, padded_batch, tiny_bert, with_random_adapters

from adapters import CompositionError
from adapters.composition import BatchSplit, Stack
from adapters.methods.lora.batched import BatchedLoRAs
from adapters.methods.lora.composition import ComposedLoRAs
from adapters.testing import assert_close

ALL_LINEARS = "lora[attn_matrices=['q','k','v'],intermediate_lora=True,output_lora=True,r=4,alpha={alpha}]"


def hooks_of(model) -> set[type]:
    """The types of what the model-wide setup runs at its places (the hooks of its linears among them)."""
    return {type(plan) for plan in model.adapters_state.activation.plans.values()}


@pytest.mark.parametrize("sizes", [[2, 2, 2], [1, 3, 0], [0, 4, 2]], ids=["equal", "unequal", "leading_empty"])
@torch.no_grad()
def test_batched_path_equals_each_adapter_on_its_examples(sizes):
    # Different alphas: per-adapter scalings go into the stacked B.
    model = with_random_adapters(
        {n: ALL_LINEARS.format(alpha=a) for n, a in zip("abc", (4, 8, 2), strict=True)}, tiny_bert()
    )
    inputs = padded_batch(sum(sizes))
    model.set_active_adapters(BatchSplit("a", "b", "c", batch_sizes=sizes))
    assert BatchedLoRAs in hooks_of(model) and ComposedLoRAs not in hooks_of(model)
    out = model(**inputs).last_hidden_state
    assert_close(out, each_adapter_alone(model, "abc", sizes, inputs))
    with torch.inference_mode():
        model.set_active_adapters(BatchSplit("a", "b", "c", batch_sizes=sizes))
        # The same ops on the same inputs (inference mode takes the no-grad path): bit-identical.
        assert torch.equal(model(**inputs).last_hidden_state, out)


@pytest.mark.parametrize("sizes", [[2, 2, 2], [1, 3, 0]], ids=["equal", "unequal"])
def test_adapters_of_different_ranks_are_batched_padded_to_the_largest(sizes):
    ranks = {"a": 2, "b": 8, "c": 5}
    configs = {n: f"lora[attn_matrices=['q','v'],output_lora=True,r={r},alpha=8]" for n, r in ranks.items()}
    model = with_random_adapters(configs, tiny_bert())
    inputs = padded_batch(sum(sizes))
    model.set_active_adapters(BatchSplit("a", "b", "c", batch_sizes=sizes))
    assert BatchedLoRAs in hooks_of(model) and ComposedLoRAs not in hooks_of(model)
    with torch.no_grad():
        assert_close(model(**inputs).last_hidden_state, each_adapter_alone(model, "abc", sizes, inputs))
    # Gradients reach each adapter's own rank only (the padding is no parameter).
    model.train_adapter(BatchSplit("a", "b", "c", batch_sizes=sizes))
    model.eval()
    model(**inputs).last_hidden_state.pow(3).sum().backward()
    lora = model.encoder.layer[0].attention.self.query.loras
    assert lora["a"].lora_A.grad.shape == (2, 32) and lora["b"].lora_B.grad.shape == (32, 8)


def test_batched_path_gradients_equal_the_engines():
    configs = {n: ALL_LINEARS.format(alpha=8) for n in "ab"}
    inputs = padded_batch(4)
    # A fixed random weighting of the outputs: a sum of their squares would be constant (the model ends with a
    # LayerNorm without affine change, so each position's squares add up to the hidden size), its gradients zero
    # and what both paths give for them rounding noise that differs between kernel sets.
    weights = torch.randn(4, 5, 32, generator=torch.Generator().manual_seed(7))
    grads = []
    for setup in (BatchSplit("a", "b", batch_sizes=[1, 3]), BatchSplit(Stack("a"), "b", batch_sizes=[1, 3])):
        model = with_random_adapters(configs, tiny_bert())
        model.train_adapter(setup)
        model.eval()  # no dropout in the body
        (model(**inputs).last_hidden_state * weights).sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
        assert (BatchedLoRAs in hooks_of(model)) == (setup[0] == "a")
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 5 * 2 * 2 * 2
    for key in grads[0]:
        assert_close(grads[0][key], grads[1][key], msg=key)


@pytest.mark.parametrize(
    "configs",
    [
        {"a": "lora", "b": "dora"},
        {"a": "lora", "b": "lora[use_gating=True]"},
        {"a": "lora", "b": "lora[dropout=0.1]"},
        {"a": "lora", "b": "lora[leave_out=[1]]"},  # b is missing in layer 1
        {"a": "ia3", "b": "ia3"},
    ],
    ids=["dora", "gating", "dropout", "leave_out", "ia3"],
)
@torch.no_grad()
def test_other_loras_run_through_the_engine_and_stay_exact(configs):
    model = with_random_adapters(configs, tiny_bert())
    inputs = padded_batch(3)
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[2, 1]))
    out = model(**inputs).last_hidden_state
    assert_close(out, each_adapter_alone(model, "ab", [2, 1], inputs))


@torch.no_grad()
def test_batched_path_refuses_a_batch_its_sizes_do_not_cover():
    model = with_random_adapters({"a": "lora", "b": "lora"}, tiny_bert())
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 1]))
    with pytest.raises(CompositionError, match="batch size 3"):
        model(**padded_batch(3))
