"""Compacter (PHM), AdapterPlus and invertible adapters against their definitions.

Expected values are built here from the papers' formulas with plain torch ops (``torch.kron``
for the Kronecker products) on the library's own parameters; the library's output comes from
its modules or from a full forward pass with the adapter active.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_BERT, tiny_bert
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM

import adapters
from adapters import (
    AdapterConfigError,
    AdapterPlusConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    DoubleSeqBnInvConfig,
    SeqBnInvConfig,
    Stack,
)
from adapters.methods.bottleneck import GLOWCoupling, NICECoupling, PHMLayer
from adapters.methods.bottleneck.layer import Bottleneck
from adapters.testing import assert_close, randomize_adapter, tolerance


@pytest.fixture
def inputs():
    # No padding: sub-blocks are recomputed here without a mask.
    return {"input_ids": torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))}


def _ln(layer_norm, t):
    return F.layer_norm(t, layer_norm.normalized_shape, layer_norm.weight, layer_norm.bias, layer_norm.eps)


def _adapted(config, inputs, seed=0):
    """(model with adapter "a" active and random weights, its output, last layer, FFN input x, FFN h)."""
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", config=config, set_active=True)
    randomize_adapter(model, "a", seed=seed)
    layer = model.encoder.layer[-1]
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True)
        x = layer.attention(outputs.hidden_states[-2])[0]
        inter = F.gelu(F.linear(x, layer.intermediate.dense.weight, layer.intermediate.dense.bias))
        h = F.linear(inter, layer.output.dense.weight, layer.output.dense.bias)
    return model, outputs.last_hidden_state, layer, x, h


# -- Compacter: PHM layers --------------------------------------------------------------------
def _phm_by_hand(rules, blocks, bias, x):
    """y = x @ sum_i kron(A_i, W_i) + b, with every Kronecker product built by torch.kron."""
    weight = sum(torch.kron(rules[i], blocks[i]) for i in range(rules.shape[0]))
    y = x @ weight
    return y if bias is None else y + bias


def test_phm_layer_is_sum_of_kronecker_products():
    config = CompacterConfig(shared_phm_rule=False, factorized_phm_W=False, phm_dim=4)
    layer = PHMLayer(16, 8, config, position="down")
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    assert layer.phm_rule.shape == (4, 4, 4) and layer.W.shape == (4, 4, 2) and layer.b.shape == (8,)
    x = torch.randn(3, 5, 16)
    assert_close(layer(x), _phm_by_hand(layer.phm_rule, layer.W, layer.b, x))


def test_phm_layer_factorized_rule_and_weights():
    """W_i = W_left_i @ W_right_i (rank r), A_i = left_i @ right_i (outer product)."""
    config = CompacterConfig(shared_phm_rule=False, factorized_phm_rule=True, phm_rank=2, phm_dim=2, phm_bias=False)
    layer = PHMLayer(6, 4, config, position="up")
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    assert layer.W_left.shape == (2, 3, 2) and layer.W_right.shape == (2, 2, 2) and layer.b is None
    assert layer.phm_rule_left.shape == (2, 2, 1) and layer.phm_rule_right.shape == (2, 1, 2)
    rules = torch.stack([torch.outer(layer.phm_rule_left[i, :, 0], layer.phm_rule_right[i, 0]) for i in range(2)])
    blocks = torch.stack([layer.W_left[i] @ layer.W_right[i] for i in range(2)])
    x = torch.randn(2, 6)
    assert_close(layer(x), _phm_by_hand(rules, blocks, None, x))


def test_compacter_plus_plus_in_model(inputs):
    """compacter++: out = LN(h + x + up(gelu(down(LN(h + x))))) with PHM down/up and one shared rule."""
    model, got, layer, x, h = _adapted(CompacterPlusPlusConfig(reduction_factor=8), inputs)
    adapter = layer.output.adapters["a"]
    rule = model.shared_parameters["a"].phm_rule
    assert rule.shape == (4, 4, 4)
    down, up = adapter.adapter_down[0], adapter.adapter_up

    def phm(layer_, t):
        blocks = torch.stack([layer_.W_left[i] @ layer_.W_right[i] for i in range(4)])
        return _phm_by_hand(rule, blocks, layer_.b, t)

    ln = layer.output.LayerNorm
    inner = _ln(ln, h + x)
    with torch.no_grad():
        expected = _ln(ln, h + x + phm(up, F.gelu(phm(down, inner))))
    assert_close(got, expected)


def test_compacter_shares_one_rule_across_layers_and_places():
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", config=CompacterConfig(reduction_factor=8))
    keys = [k for k in model.state_dict() if ".a." in k or k.startswith("shared_parameters.a.")]
    assert [k for k in keys if "phm_rule" in k] == ["shared_parameters.a.phm_rule"]
    assert "encoder.layer.0.attention.output.adapters.a.adapter_down.0.W_left" in keys
    assert "encoder.layer.1.output.adapters.a.adapter_up.b" in keys
    rule = model.shared_parameters["a"].phm_rule
    for layer in model.encoder.layer:
        for adapter in (layer.attention.output.adapters["a"], layer.output.adapters["a"]):
            assert adapter.adapter_down[0].rules() is rule and adapter.adapter_up.rules() is rule
    assert model.get_adapter("a")[-1]["shared"] is model.shared_parameters["a"]
    model.delete_adapter("a")
    assert not any("shared_parameters" in k for k in model.state_dict())


def test_shared_phm_weights_are_used_by_every_layer(inputs):
    model, _, layer, _, _ = _adapted(CompacterPlusPlusConfig(reduction_factor=8, shared_W_phm=True), inputs)
    shared = model.shared_parameters["a"]
    assert {n for n, _ in shared.named_parameters()} == {
        "phm_rule",
        "W_down_left",
        "W_down_right",
        "W_up_left",
        "W_up_right",
    }
    assert [n for n, _ in layer.output.adapters["a"].adapter_up.named_parameters()] == ["b"]
    blocks = torch.bmm(shared.W_up_left, shared.W_up_right)
    up = layer.output.adapters["a"].adapter_up
    t = torch.randn(3, 4)
    assert_close(up(t), _phm_by_hand(shared.phm_rule, blocks, up.b, t))


def test_learn_phm_false_freezes_the_rule_but_saves_it():
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", config=CompacterPlusPlusConfig(reduction_factor=8, learn_phm=False))
    model.train_adapter("a")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any("phm_rule" in n for n in trainable)
    with tempfile.TemporaryDirectory() as folder:
        model.save_adapter(folder, "a")
        assert "shared_parameters.a.phm_rule" in load_file(f"{folder}/adapter.safetensors")


@pytest.mark.parametrize(
    "config, message",
    [
        (CompacterConfig(), "multiples of phm_dim"),  # 32 // 32 = 1 is no multiple of 4
        (CompacterPlusPlusConfig(reduction_factor={"0": 4, "default": 8}, shared_W_phm=True), "shared_W_phm"),
    ],
)
def test_phm_sizes_that_cannot_work_are_refused(config, message):
    model = tiny_bert()
    adapters.init(model)
    keys = set(model.state_dict())
    with pytest.raises(AdapterConfigError, match=message):
        model.add_adapter("a", config=config)
    assert set(model.state_dict()) == keys and "a" not in model.adapters_state.configs


def test_phm_with_other_init_modes_is_refused():
    with pytest.raises(AdapterConfigError, match="init_weights='bert' only"):
        CompacterConfig(init_weights="houlsby")


def test_compacter_saved_without_shared_rule_loads_with_a_warning():
    """The reference saves shared_parameters only from head models; its bare-model files lack them."""
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", config=CompacterPlusPlusConfig(reduction_factor=8))
    randomize_adapter(model, "a")
    fresh = tiny_bert()
    adapters.init(fresh)
    with tempfile.TemporaryDirectory() as folder:
        model.save_adapter(folder, "a")
        weights = load_file(f"{folder}/adapter.safetensors")
        kept = {k: v for k, v in weights.items() if not k.startswith("shared_parameters.")}
        save_file(kept, f"{folder}/adapter.safetensors")
        config = json.loads(Path(folder, "adapter_config.json").read_text())
        del config["integrity"]  # the reference library writes none
        Path(folder, "adapter_config.json").write_text(json.dumps(config))
        with pytest.warns(UserWarning, match="lack the shared PHM tensors"):
            fresh.load_adapter(folder)
    loaded = fresh.encoder.layer[0].output.adapters["a"].adapter_up.W_left
    assert torch.equal(loaded, weights["encoder.layer.0.output.adapters.a.adapter_up.W_left"])  # saved and loaded


# -- AdapterPlus ------------------------------------------------------------------------------
def test_adapter_plus_in_eval_is_channel_scaled_adapter_without_drop_path(inputs):
    """AdapterPlus (eval): out = LN(h + x) + s * up(gelu(down(LN(h + x)))), s one value per channel."""
    model, got, layer, x, h = _adapted(AdapterPlusConfig(reduction_factor=8), inputs)
    adapter = layer.output.adapters["a"]
    assert adapter.scaling.shape == (32,)
    down, up = adapter.adapter_down[0], adapter.adapter_up
    inner = _ln(layer.output.LayerNorm, h + x)
    with torch.no_grad():
        branch = F.linear(F.gelu(F.linear(inner, down.weight, down.bias)), up.weight, up.bias)
        expected = inner + adapter.scaling * branch
    assert_close(got, expected)
    with torch.no_grad():  # eval: drop path off, so repeated passes agree exactly
        assert torch.equal(model(**inputs).last_hidden_state, got)


def test_adapter_plus_houlsby_init():
    adapter = Bottleneck(32, 8, AdapterPlusConfig())
    for linear in (adapter.adapter_down[0], adapter.adapter_up):
        assert linear.weight.abs().max() <= 2e-2 and linear.weight.std() > 0
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    assert torch.equal(adapter.scaling, torch.ones(32))


def test_stochastic_depth_drops_whole_examples_while_training():
    p = 0.5
    adapter = Bottleneck(8, 4, AdapterPlusConfig(stochastic_depth=p))
    with torch.no_grad():
        for param in adapter.parameters():
            param.normal_()
    hidden, residual = torch.randn(64, 3, 8), torch.randn(64, 3, 8)
    down, up = adapter.adapter_down[0], adapter.adapter_up
    branch = adapter.scaling * F.linear(F.gelu(F.linear(hidden, down.weight, down.bias)), up.weight, up.bias)
    adapter.train()
    torch.manual_seed(0)
    with torch.no_grad():
        out = adapter(hidden, residual)
    kept_out = residual + branch / (1 - p)
    dropped = ((out - residual).abs() <= tolerance(residual)).flatten(1).all(1)
    kept = ((out - kept_out).abs() <= tolerance(kept_out)).flatten(1).all(1)
    assert bool((dropped ^ kept).all()), "each example keeps its whole branch (scaled by 1/(1-p)) or drops it"
    assert 10 < int(dropped.sum()) < 54
    adapter.eval()
    with torch.no_grad():
        assert_close(adapter(hidden, residual), residual + branch)


# -- invertible adapters --------------------------------------------------------------------
def _subnet(seq, t):
    return F.linear(F.relu(F.linear(t, seq[0].weight, seq[0].bias)), seq[2].weight, seq[2].bias)


def _random(module):
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0.0, 0.5)
    return module.double()


def test_nice_coupling_forward_and_exact_inverse():
    block = _random(NICECoupling(10, "relu", 2))
    x = torch.randn(2, 3, 10, dtype=torch.float64)
    x1, x2 = x[..., :5], x[..., 5:]
    y1 = x1 + _subnet(block.F, x2)
    y2 = x2 + _subnet(block.G, y1)
    y = block(x)
    assert_close(y, torch.cat((y1, y2), -1))
    assert_close(block.inverse(y), x)
    assert_close(block(block.inverse(x)), x)


def test_glow_coupling_forward_and_exact_inverse():
    block = _random(GLOWCoupling(9, "relu", 2))  # odd width: halves of 4 and 5
    x = torch.randn(2, 3, 9, dtype=torch.float64)
    x1, x2 = x[..., :4], x[..., 4:]

    def e(s):
        return torch.exp(5.0 * 0.636 * torch.atan(s / 5.0))

    r2 = _subnet(block.s2, x2)
    y1 = e(r2[..., :4]) * x1 + r2[..., 4:]
    r1 = _subnet(block.s1, y1)
    y2 = e(r1[..., :5]) * x2 + r1[..., 5:]
    y = block(x)
    assert_close(y, torch.cat((y1, y2), -1))
    assert_close(block.inverse(y), x)


def _first_layer_input(model, inputs):
    captured = {}

    def capture(module, args, kwargs):
        captured["x"] = args[0] if args else kwargs["hidden_states"]

    handle = model.encoder.layer[0].register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    return captured["x"]


def test_invertible_adapter_transforms_the_embedding_output(inputs):
    model = tiny_bert()
    adapters.init(model)
    with torch.no_grad():
        embedded = model.embeddings(input_ids=inputs["input_ids"])
    model.add_adapter("a", config="seq_bn_inv", set_active=True)
    randomize_adapter(model, "a")
    inv = model.invertible_adapters["a"]
    assert model.get_adapter("a")[-1]["invertible"] is inv
    with torch.no_grad():
        # The hook calls the same module on the same embedding output: bit-identical.
        assert torch.equal(_first_layer_input(model, inputs), inv(embedded))
    keys = {k for k in model.state_dict() if "invertible" in k}
    assert keys == {f"invertible_adapters.a.{s}.{i}.{w}" for s in "FG" for i in (0, 2) for w in ("weight", "bias")}


def test_stack_uses_only_the_first_adapters_invertible_adapter(inputs):
    model = tiny_bert()
    adapters.init(model)
    with torch.no_grad():
        embedded = model.embeddings(input_ids=inputs["input_ids"])
    model.add_adapter("lang", config="seq_bn_inv")
    model.add_adapter("task", config=DoubleSeqBnInvConfig())
    randomize_adapter(model, "lang")
    randomize_adapter(model, "task", seed=1)
    with torch.no_grad():
        model.set_active_adapters(Stack("lang", "task"))
        assert torch.equal(_first_layer_input(model, inputs), model.invertible_adapters["lang"](embedded))
        model.set_active_adapters(Stack("task", "lang"))
        assert torch.equal(_first_layer_input(model, inputs), model.invertible_adapters["task"](embedded))
        model.add_adapter("plain", config="seq_bn")
        model.set_active_adapters(Stack("plain", "lang"))
        assert torch.equal(_first_layer_input(model, inputs), embedded)


MLM_MODELS = {
    "bert": (lambda: BertForMaskedLM(BertConfig(**TINY_BERT)), lambda m: m.cls.predictions.transform),
    "roberta": (
        lambda: RobertaForMaskedLM(RobertaConfig(**TINY_BERT)),
        lambda m: lambda t: m.lm_head.layer_norm(F.gelu(m.lm_head.dense(t))),
    ),
}


@pytest.mark.parametrize("model_type", sorted(MLM_MODELS))
@pytest.mark.parametrize("kind", ["nice", "glow"])
def test_inverse_is_applied_before_the_output_embeddings(model_type, kind, inputs):
    """logits = decoder(inv^-1(transform(h))), where h saw inv(embeddings) at the bottom."""
    factory, transform_of = MLM_MODELS[model_type]
    torch.manual_seed(0)
    model = factory().eval()
    adapters.init(model)
    model.add_adapter("a", config=SeqBnInvConfig(inv_adapter=kind), set_active=True)
    randomize_adapter(model, "a")
    inv = model.base_model.invertible_adapters["a"]
    decoder = model.get_output_embeddings()
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True)
        transformed = transform_of(model)(outputs.hidden_states[-1])
        expected = F.linear(inv.inverse(transformed), decoder.weight, decoder.bias)
        assert_close(outputs.logits, expected)
        # Inside AdapterSetup the head still inverts what the body applied.
        model.set_active_adapters(None)
        plain = model(**inputs).logits
        with adapters.AdapterSetup("a"):
            assert_close(model(**inputs).logits, expected)
        assert torch.equal(model(**inputs).logits, plain)


def test_output_embeddings_receive_exactly_what_the_embeddings_gave_before_the_adapter(inputs):
    """inverse(forward(e)) == e through the model's own hooks: embeddings, then the output projection."""
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(**TINY_BERT)).eval()
    adapters.init(model)
    model.add_adapter("a", config="seq_bn_inv", set_active=True)
    randomize_adapter(model, "a")
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0]) and None)
    with torch.no_grad():
        model.set_active_adapters(None)
        embedded = model.bert.embeddings(input_ids=inputs["input_ids"])
        model.set_active_adapters("a")
        transformed = model.bert.embeddings(input_ids=inputs["input_ids"])
        assert torch.equal(transformed, model.bert.invertible_adapters["a"](embedded))  # the hook's own call
        model.get_output_embeddings()(transformed)
    assert not torch.allclose(transformed, embedded, atol=1e-3)
    assert_close(seen[-1], embedded)


def test_invertible_adapter_round_trip_and_keys(inputs):
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", config=SeqBnInvConfig(inv_adapter="glow"), set_active=True)
    randomize_adapter(model, "a")
    with torch.no_grad():
        expected = model(**inputs).last_hidden_state
    fresh = tiny_bert()
    adapters.init(fresh)
    with tempfile.TemporaryDirectory() as folder:
        model.save_adapter(folder, "a")
        assert {k.split(".")[2] for k in load_file(f"{folder}/adapter.safetensors") if "invertible" in k} == {
            "s1",
            "s2",
        }
        fresh.load_adapter(folder, set_active=True)
    with torch.no_grad():
        # Same base weights, the adapter's weights saved and loaded back: the same computation.
        assert torch.equal(fresh(**inputs).last_hidden_state, expected)
    fresh.delete_adapter("a")
    assert not fresh.adapters_state.method_data["bottleneck"][(-1, "invertible")]._handles


def test_version_1_configs_with_nested_invertible_adapter_load():
    config = adapters.AdapterConfig.load(
        {
            **SeqBnInvConfig().to_dict(),
            "inv_adapter": None,
            "inv_adapter_reduction_factor": None,
            "invertible_adapter": {"block_type": "glow", "non_linearity": "relu", "reduction_factor": 4},
        }
    )
    assert (config.inv_adapter, config.inv_adapter_reduction_factor) == ("glow", 4)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"inv_adapter": "real_nvp"}, "inv_adapter="),
        ({"inv_adapter_reduction_factor": None}, "inv_adapter_reduction_factor"),
        ({"scaling": "row"}, "scaling="),
        ({"stochastic_depth": 1.5}, "stochastic_depth="),
    ],
)
def test_invalid_options_are_refused(overrides, message):
    with pytest.raises(AdapterConfigError, match=message):
        SeqBnInvConfig(**overrides)


def test_invertible_adapter_on_a_head_without_a_fitting_output_projection_is_refused():
    from transformers import DebertaConfig, DebertaForMaskedLM

    torch.manual_seed(0)
    model = DebertaForMaskedLM(DebertaConfig(**TINY_BERT, legacy=False))
    adapters.init(model)
    with pytest.raises(AdapterConfigError, match=r"cannot\s+be inverted"):
        model.add_adapter("a", config="seq_bn_inv")
    assert "a" not in model.adapters_state.configs


def test_invertible_adapter_of_narrow_embeddings_has_embedding_size():
    from transformers import AlbertConfig, AlbertForMaskedLM

    torch.manual_seed(0)
    model = AlbertForMaskedLM(AlbertConfig(**TINY_BERT, embedding_size=16)).eval()
    adapters.init(model)
    model.add_adapter("a", config="seq_bn_inv", set_active=True)
    assert model.albert.invertible_adapters["a"].F[0].in_features == 8
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.isfinite(model(input_ids=torch.tensor([[5, 6, 7]])).logits).all()
