"""(IA)^3, DoRA, VeRA and gated LoRA against their definitions, on small tensors.

Expected values use plain torch ops on the layer's own weights and the adapter's tensors; the
library's value comes from calling the adapted linear layer (its forward hook applies the adapter).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_bert

import adapters
from adapters import AdapterConfigError, AdapterError, CompositionError, Stack
from adapters.methods.lora import VeRA, VeRAShared
from adapters.testing import assert_close, randomize_adapter

X = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(3))


def _model_with(config, name: str = "a", seed: int = 0):
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter(name, config=config, set_active=True)
    randomize_adapter(model, name, seed=seed)
    return model


def _assert_merge_and_reset(model, name: str, linear: torch.nn.Module, x: torch.Tensor, expected_weight=None) -> None:
    """Merged output equals the unmerged one; reset_adapter restores the weights.

    Both within rounding: merging adds (and multiplies), resetting divides and subtracts back.
    """
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        unmerged = linear(x)
        model.merge_adapter(name)
        if expected_weight is not None:
            assert_close(linear.weight, expected_weight)
        assert_close(linear(x), unmerged)
    model.reset_adapter()
    after = model.state_dict()
    for key, value in before.items():
        if value.is_floating_point():
            assert_close(after[key], value, msg=key)
        else:
            assert torch.equal(after[key], value), key


# -- (IA)^3 ----------------------------------------------------------------------------------
def test_ia3_config_matches_reference_defaults():
    config = adapters.IA3Config()
    assert config.to_dict() == {
        "architecture": "lora",
        "selfattn_lora": True,
        "intermediate_lora": True,
        "output_lora": False,
        "leave_out": [],
        "r": 1,
        "alpha": 1,
        "dropout": 0.0,
        "attn_matrices": ["k", "v"],
        "composition_mode": "scale",
        "init_weights": "ia3",
        "use_gating": False,
        "use_dora": False,
        "vera_d": None,
        "vera_b": None,
        "dtype": None,
        "init_weights_seed": None,
    }


def test_ia3_scales_outputs_of_k_v_and_ffn_input():
    """(IA)^3: y = (W x + b) * alpha * l on key, value and the intermediate dense; query untouched."""
    model = _model_with("ia3[alpha=2]")
    layer = model.encoder.layer[0]
    for linear in (layer.attention.self.key, layer.attention.self.value):
        vector = linear.loras["a"].lora_B.view(-1)
        with torch.no_grad():
            assert_close(linear(X), F.linear(X, linear.weight, linear.bias) * 2 * vector)
    dense = layer.intermediate.dense
    x_ffn = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = F.linear(x_ffn, dense.weight, dense.bias) * 2 * dense.loras["a"].lora_B.view(-1)
        assert_close(dense(x_ffn), expected)
    assert not hasattr(layer.attention.self.query, "loras")
    assert model.adapter_summary(as_dict=True)[0]["#param"] == 2 * (32 + 32 + 37)


def test_ia3_starts_as_identity():
    model = tiny_bert()
    adapters.init(model)
    key = model.encoder.layer[0].attention.self.key
    with torch.no_grad():
        plain = key(X)
        model.add_adapter("a", "ia3", set_active=True)
        assert_close(key(X), plain)  # (the output times a vector of ones: another computation)


def test_ia3_merge_scales_weight_and_bias_and_reset_is_exact():
    model = _model_with("ia3[alpha=2]")
    key = model.encoder.layer[0].attention.self.key
    scale = 2 * key.loras["a"].lora_B.detach().view(-1)
    expected_bias = key.bias.detach() * scale
    _assert_merge_and_reset(model, "a", key, X, expected_weight=key.weight.detach() * scale[:, None])
    model.merge_adapter("a")
    assert_close(key.bias, expected_bias)


def test_ia3_stack_multiplies_the_vectors():
    model = _model_with("ia3")
    model.add_adapter("b", "ia3[alpha=3]")
    randomize_adapter(model, "b", seed=1)
    model.set_active_adapters(Stack("a", "b"))
    key = model.encoder.layer[1].attention.self.key
    l_a, l_b = key.loras["a"].lora_B.view(-1), key.loras["b"].lora_B.view(-1)
    with torch.no_grad():
        assert_close(key(X), F.linear(X, key.weight, key.bias) * l_a * (3 * l_b))


def test_stack_mixing_ia3_and_lora_is_refused():
    model = _model_with("ia3")
    model.add_adapter("b", "lora[attn_matrices=['k']]")
    with pytest.raises(CompositionError, match="mixes additive"):
        model.set_active_adapters(Stack("a", "b"))
    assert model.active_adapters == Stack("a")


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"r": 2}, "r must be 1"),
        ({"dropout": 0.1}, "dropout must be 0"),
        ({"use_dora": True}, "use_dora"),
        ({"vera_d": 0.1, "vera_b": 0.0}, "vera_d"),
    ],
)
def test_ia3_refuses_what_scaling_cannot_do(overrides, match):
    with pytest.raises(AdapterConfigError, match=match):
        adapters.IA3Config(**overrides)


def test_lora_config_refusals():
    with pytest.raises(AdapterConfigError, match="composition_mode"):
        adapters.LoRAConfig(composition_mode="mul")
    with pytest.raises(AdapterConfigError, match="both vera_d and vera_b"):
        adapters.LoRAConfig(vera_d=0.1)
    assert adapters.AdapterConfig.load({"architecture": "lora", "vera_d": 1, "vera_b": 0}).vera_d == 1.0


# -- DoRA ------------------------------------------------------------------------------------
def _dora_expected(linear, lora, x, scaling):
    """m / ||W + B A||_row * (W x + b + scaling * B A x), the reference library's DoRA."""
    delta = lora.lora_B @ lora.lora_A
    norm = torch.linalg.norm(linear.weight + delta, dim=1)
    return lora.m.weight.view(-1) / norm * (F.linear(x, linear.weight, linear.bias) + scaling * F.linear(x, delta))


def test_dora_rescales_by_magnitude_over_row_norm():
    model = _model_with("dora[r=4,alpha=12]")
    query = model.encoder.layer[0].attention.self.query
    lora = query.loras["a"]
    assert lora.m.weight.shape == (32, 1)
    with torch.no_grad():
        assert_close(query(X), _dora_expected(query, lora, X, 3.0))


def test_dora_starts_as_identity_with_magnitude_of_w():
    model = tiny_bert()
    adapters.init(model)
    value = model.encoder.layer[1].attention.self.value
    with torch.no_grad():
        plain = value(X)
        model.add_adapter("a", "dora", set_active=True)
        # m is initialised by this same norm of the same weight: bit-identical.
        assert torch.equal(value.loras["a"].m.weight.view(-1), torch.linalg.norm(value.weight, dim=1))
        assert_close(value(X), plain)


def test_dora_gradient_flows_through_the_norm():
    """The norm is not detached (reference): gradients equal those of the formula itself."""
    model = _model_with("dora[r=4,alpha=12]")
    model.train_adapter("a")
    query = model.encoder.layer[0].attention.self.query
    lora = query.loras["a"]
    query(X).sum().backward()
    got = [p.grad.clone() for p in (lora.lora_A, lora.lora_B, lora.m.weight)]
    for p in (lora.lora_A, lora.lora_B, lora.m.weight):
        p.grad = None
    _dora_expected(query, lora, X, 3.0).sum().backward()
    for g, p in zip(got, (lora.lora_A, lora.lora_B, lora.m.weight), strict=True):
        assert_close(g, p.grad)


def test_dora_merge_and_reset_are_exact():
    model = _model_with("dora[r=4,alpha=12,intermediate_lora=True]")
    query = model.encoder.layer[0].attention.self.query
    lora = query.loras["a"]
    with torch.no_grad():
        scale = lora.m.weight.view(-1) / torch.linalg.norm(query.weight + lora.lora_B @ lora.lora_A, dim=1)
        expected = scale[:, None] * (query.weight + 3.0 * lora.lora_B @ lora.lora_A)
    _assert_merge_and_reset(model, "a", query, X, expected_weight=expected)
    _assert_merge_and_reset(model, "a", model.encoder.layer[0].intermediate.dense, X)


def test_dora_in_a_stack_is_refused():
    model = _model_with("dora")
    model.add_adapter("b", "lora")
    with pytest.raises(CompositionError, match="DoRA"):
        model.set_active_adapters(Stack("b", "a"))


# -- VeRA ------------------------------------------------------------------------------------
def test_vera_is_diag_b_B_diag_d_A_with_shared_frozen_matrices():
    model = _model_with("vera[intermediate_lora=True,alpha=16]")
    shared = model.shared_parameters["a"]
    query = model.encoder.layer[1].attention.self.query
    dense = model.encoder.layer[0].intermediate.dense  # 32 -> 37: the corner of the shared matrices
    for linear, x in ((query, X), (dense, X)):
        vera = linear.loras["a"]
        assert vera.shared is shared
        a = shared.lora_A[:, : linear.in_features]
        b = shared.lora_B[: linear.out_features]
        delta = torch.diag(vera.vera_B) @ b @ torch.diag(vera.vera_D) @ a
        with torch.no_grad():
            expected = F.linear(x, linear.weight, linear.bias) + (16 / 8) * F.linear(x, delta)
            assert_close(linear(x), expected)
    assert shared.lora_A.shape == (8, 32) and shared.lora_B.shape == (37, 8)


def test_vera_trains_vectors_only():
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", "vera")
    model.train_adapter("a")
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    # q and v of 2 layers: d (r = 8) and b (32) each; the shared A and B are frozen buffers.
    assert sum(trainable.values()) == 4 * (8 + 32)
    assert all(n.endswith(("vera_D", "vera_B")) for n in trainable)
    assert {n for n, _ in model.named_buffers() if "shared_parameters" in n} == {
        "shared_parameters.a.lora_A",
        "shared_parameters.a.lora_B",
    }
    assert model.adapter_summary(as_dict=True)[0]["#param"] == 4 * (8 + 32)


def test_vera_starts_as_identity_and_matches_reference_draw_of_shared_matrices():
    model = tiny_bert()
    adapters.init(model)
    with torch.no_grad():
        plain = model.encoder.layer[0].attention.self.query(X)
        model.add_adapter("a", "vera[init_weights_seed=42]", set_active=True)
        assert_close(model.encoder.layer[0].attention.self.query(X), plain)  # (plus a zero update)
    # With a seed, A then B are drawn Kaiming-uniform right after seeding, as the reference draws them.
    torch.manual_seed(42)
    a = torch.nn.init.kaiming_uniform_(torch.zeros(8, 32))
    b = torch.nn.init.kaiming_uniform_(torch.zeros(32, 8))
    assert torch.equal(model.shared_parameters["a"].lora_A, a)
    assert torch.equal(model.shared_parameters["a"].lora_B, b)


def test_vera_merge_and_reset_are_exact():
    model = _model_with("vera[intermediate_lora=True,output_lora=True]")
    _assert_merge_and_reset(model, "a", model.encoder.layer[0].attention.self.value, X)
    _assert_merge_and_reset(model, "a", model.encoder.layer[1].output.dense, torch.randn(2, 5, 37))


def test_vera_delete_removes_shared_matrices():
    model = tiny_bert()
    adapters.init(model)
    keys = set(model.state_dict())
    model.add_adapter("a", "vera")
    model.delete_adapter("a")
    assert set(model.state_dict()) == keys


def test_dvora_is_dora_on_the_vera_update():
    model = _model_with("dvora")
    query = model.encoder.layer[0].attention.self.query
    vera = query.loras["a"]
    shared = model.shared_parameters["a"]
    delta = torch.diag(vera.vera_B) @ shared.lora_B @ torch.diag(vera.vera_D) @ shared.lora_A
    norm = torch.linalg.norm(query.weight + delta, dim=1)
    with torch.no_grad():
        expected = vera.m.weight.view(-1) / norm * (F.linear(X, query.weight, query.bias) + F.linear(X, delta))
        assert_close(query(X), expected)
    _assert_merge_and_reset(model, "a", query, X)


def _to_full(model, name: str = "a", seed: int = 5) -> None:
    """Put adapter ``name``'s VeRA modules in full mode (as loading a reference-trained file does), randomized."""
    for module in model.adapters_state.modules_of(name).values():
        if isinstance(module, VeRA):
            module.use_full_matrices()
    randomize_adapter(model, name, seed=seed)


def test_full_mode_vera_is_vera_B_B_vera_D_A_with_square_matrices():
    """Full mode (the reference's VeRA): dW = vera_B @ lora_B @ vera_D @ lora_A, every entry used."""
    model = _model_with("vera[intermediate_lora=True,alpha=16]")
    query, dense = model.encoder.layer[1].attention.self.query, model.encoder.layer[0].intermediate.dense
    with torch.no_grad():
        before = query(X)
        query.loras["a"].use_full_matrices()  # diag(d), diag(b): the same update
        assert_close(query(X), before)
    _to_full(model)
    shared = model.shared_parameters["a"]
    for linear in (query, dense):
        vera = linear.loras["a"]
        assert vera.vera_D.shape == (8, 8) and vera.vera_B.shape == (linear.out_features,) * 2
        assert (vera.vera_D - torch.diag(torch.diagonal(vera.vera_D))).abs().max() > 0
        a, b = shared.lora_A[:, : linear.in_features], shared.lora_B[: linear.out_features]
        delta = vera.vera_B @ b @ vera.vera_D @ a
        with torch.no_grad():
            assert_close(linear(X), F.linear(X, linear.weight, linear.bias) + (16 / 8) * F.linear(X, delta))
            assert_close(vera.delta_weight(), (16 / 8) * delta)
    _assert_merge_and_reset(model, "a", query, X)
    _assert_merge_and_reset(model, "a", dense, X)


def test_full_mode_vera_trains_every_entry_of_its_matrices():
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", "vera[intermediate_lora=True]")
    _to_full(model)
    model.train_adapter("a")
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    # q and v (32 -> 32) of 2 layers, and the intermediate dense (32 -> 37) of 2 layers.
    assert sum(trainable.values()) == 4 * (8 * 8 + 32 * 32) + 2 * (8 * 8 + 37 * 37)
    (model(input_ids=torch.tensor([[5, 6, 7]])).last_hidden_state ** 3).sum().backward()
    grad = model.encoder.layer[0].attention.self.query.loras["a"].vera_D.grad
    assert (grad - torch.diag(torch.diagonal(grad))).abs().max() > 0


def test_full_mode_dvora_is_dora_on_the_full_vera_update():
    model = _model_with("dvora")
    _to_full(model)
    query = model.encoder.layer[0].attention.self.query
    vera, shared = query.loras["a"], model.shared_parameters["a"]
    delta = vera.vera_B @ shared.lora_B @ vera.vera_D @ shared.lora_A
    norm = torch.linalg.norm(query.weight + delta, dim=1)
    with torch.no_grad():
        plain = F.linear(X, query.weight, query.bias) + vera.scaling * F.linear(X, delta)
        assert_close(query(X), vera.m.weight.view(-1) / norm * plain)
    _assert_merge_and_reset(model, "a", query, X)


def test_full_mode_vera_on_a_fused_linear():
    """Fused (q, k, v in one projection; k left out): vera_D spans the pairs' stacked d, vera_B all adapted rows.

    With diagonal matrices that is vector mode's per-slice update; with full ones
    dW = vera_B @ blockdiag(B, B) @ vera_D @ [A; A], spread over the enabled slices.
    """
    config = adapters.VeraConfig(alpha=16)
    shared = VeRAShared(8, 16, 12, "vera")
    vera = VeRA(16, 36, config, shared, slices=(True, False, True))
    with torch.no_grad():
        vera.vera_D.normal_(generator=torch.Generator().manual_seed(1))
        vera.vera_B.normal_(generator=torch.Generator().manual_seed(2))
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(4))
    full = copy.deepcopy(vera)
    full.use_full_matrices()
    assert full.vera_D.shape == (16, 16) and full.vera_B.shape == (24, 24)
    with torch.no_grad():
        assert_close(full.delta(x), vera.delta(x))
        assert_close(full.delta_weight(), vera.delta_weight())
        full.vera_D.add_(0.1 * torch.randn(16, 16, generator=torch.Generator().manual_seed(5)))
        full.vera_B.add_(0.1 * torch.randn(24, 24, generator=torch.Generator().manual_seed(6)))
        rows = full.vera_B @ torch.block_diag(shared.lora_B, shared.lora_B) @ full.vera_D @ shared.lora_A.repeat(2, 1)
        expected = torch.cat([rows[:12], torch.zeros(12, 16), rows[12:]]) * 2.0
        assert_close(full.delta_weight(), expected)
        assert_close(full.delta(x), x @ expected.t())


# -- gating ----------------------------------------------------------------------------------
def test_gated_lora_replaces_scaling_by_mean_sigmoid_gate():
    """UniPELT's gate: g = mean over positions of sigmoid(Linear(x)); y = W x + b + g * B A x."""
    model = _model_with("lora[use_gating=True,alpha=16]")
    query = model.encoder.layer[0].attention.self.query
    lora = query.loras["a"]
    gate = torch.sigmoid(F.linear(X, lora.gate.weight, lora.gate.bias)).mean(dim=1, keepdim=True)
    with torch.no_grad():
        expected = F.linear(X, query.weight, query.bias) + gate * (X @ lora.lora_A.T @ lora.lora_B.T)
        assert_close(query(X), expected)
    with pytest.raises(AdapterError, match="gated"):
        model.merge_adapter("a")
    assert model.adapters_state.merged is None


# -- where LoRA goes: the attention output ("o") and a gated FFN's gate ---------------------------
def test_lora_on_the_attention_output_is_w_plus_scaled_ba_and_merges():
    model = _model_with(adapters.LoRAConfig(r=4, alpha=8, attn_matrices=["o"]))
    dense = model.encoder.layer[0].attention.output.dense
    lora = dense.loras["a"]
    assert "a" not in model.encoder.layer[0].attention.self.query._modules.get("loras", {})
    with torch.no_grad():
        expected = F.linear(X, dense.weight + 2.0 * lora.lora_B @ lora.lora_A, dense.bias)
        assert_close(dense(X), expected)
    _assert_merge_and_reset(model, "a", dense, X)


def test_gate_lora_adapts_the_gate_projection_of_a_gated_ffn():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=50)
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    adapters.init(model)
    model.add_adapter(
        "a", config=adapters.LoRAConfig(r=4, alpha=4, selfattn_lora=False, gate_lora=True), set_active=True
    )
    randomize_adapter(model, "a")
    mlp = model.model.layers[1].mlp
    lora = mlp.gate_proj.loras["a"]
    assert not hasattr(mlp.up_proj, "loras") and not hasattr(mlp.down_proj, "loras")
    with torch.no_grad():
        gate = F.linear(X, mlp.gate_proj.weight + lora.lora_B @ lora.lora_A)
        expected = mlp.down_proj(F.silu(gate) * mlp.up_proj(X))
        assert_close(mlp(X), expected)
    _assert_merge_and_reset(model, "a", mlp.gate_proj, X)
    assert "gate_lora" in model.adapters_state.configs["a"].to_dict()
    # Not written at its default: the reference's LoRAConfig has no such field.
    assert "gate_lora" not in adapters.LoRAConfig().to_dict()


def test_gate_lora_on_a_model_without_a_gate_is_refused():
    model = tiny_bert()
    adapters.init(model)
    with pytest.raises(AdapterConfigError, match=r"gate_lora to False where .* ffn_gate is not\s+declared"):
        model.add_adapter("a", config=adapters.LoRAConfig(gate_lora=True))
    assert not model.adapters_state.configs
