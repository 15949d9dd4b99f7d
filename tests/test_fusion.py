"""AdapterFusion: the fusion layer against its definition, training, files, errors and outputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from conftest import tiny_bert
from safetensors.torch import load_file

import adapters
from adapters import (
    AdapterConfigError,
    AdapterFusionConfig,
    AdapterLoadError,
    AdapterNameError,
    CompositionError,
    DynamicAdapterFusionConfig,
    StaticAdapterFusionConfig,
)
from adapters.composition import BatchSplit, Fuse, Parallel, Stack
from adapters.core.context import adapter_hooks
from adapters.methods.fusion import FusionLayer, FusionRegistry
from adapters.testing import CROSS_LIBRARY_ULPS, assert_close, randomize_adapter
from adapters.training import checkpoint_items, load_checkpoint, save_checkpoint

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture
def ids():
    # No padding: the last layer's FFN block is recomputed by hand below.
    return {"input_ids": torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))}


def fused_model(config="dynamic", adapter_config="seq_bn", names=("a", "b"), extra=()) -> torch.nn.Module:
    model = tiny_bert(**NO_DROPOUT)
    adapters.init(model)
    for i, name in enumerate((*names, *extra)):
        model.add_adapter(name, config=adapter_config)
        randomize_adapter(model, name, seed=i)
    model.add_adapter_fusion(list(names), config=config)
    randomize_fusion(model, ",".join(names))
    return model


def randomize_fusion(model, name: str, seed: int = 7) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in FusionRegistry.of(model.adapters_state).require(name).named_parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.2)


def fusion_layer(model, name: str, layer: int, place: str = "output_adapter") -> FusionLayer:
    return FusionRegistry.of(model.adapters_state).require(name).layers[(layer, place)]


# -- the definition ----------------------------------------------------------------------------
def reference_fusion(layer: FusionLayer, query, ups, residual, temperature):
    """Pfeiffer et al.'s AdapterFusion, written out with torch ops (per token, per adapter)."""
    config = layer.config
    if config.residual_before:
        ups = ups + residual[:, :, None, :]
    q = F.linear(query, layer.query.weight, layer.query.bias) if config.query else query
    k = F.linear(ups, layer.key.weight, layer.key.bias) if config.key else ups
    v = F.linear(ups, layer.value.weight) if config.value and config.value_before_softmax else ups
    scores = torch.einsum("btd,btnd->btn", q, k)
    probs = torch.softmax(scores / temperature, dim=-1)
    out = torch.einsum("btn,btnd->btd", probs, v)
    if config.value and not config.value_before_softmax:
        out = F.linear(out, layer.value.weight)
    return (out if config.residual_before else out + residual), probs


@pytest.mark.parametrize(
    "config",
    [
        DynamicAdapterFusionConfig(),
        StaticAdapterFusionConfig(),
        DynamicAdapterFusionConfig(value_before_softmax=False),
        DynamicAdapterFusionConfig(residual_before=True),
        DynamicAdapterFusionConfig(query=False, key=False),
    ],
    ids=["dynamic", "static", "value_after_softmax", "residual_before", "no_query_key"],
)
def test_fusion_layer_is_the_definition(config):
    torch.manual_seed(0)
    layer = FusionLayer(config, 8, dropout_prob=0.0)
    with torch.no_grad():
        for param in layer.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    query, ups, residual = torch.randn(2, 5, 8), torch.randn(2, 5, 3, 8), torch.randn(2, 5, 8)
    out, probs = layer(query, ups, residual)
    expected, expected_probs = reference_fusion(layer, query, ups, residual, 1.0)
    assert_close(out, expected)
    assert_close(probs, expected_probs)
    assert_close(probs.sum(-1), torch.ones(2, 5))


def test_dynamic_fusion_starts_as_the_plain_attention_average():
    layer = FusionLayer(DynamicAdapterFusionConfig(), 8, dropout_prob=0.0)
    expected = torch.full((8, 8), 1e-6).fill_diagonal_(1.0)
    assert torch.equal(layer.value.weight.detach(), expected)
    assert layer.value.bias is None
    assert not hasattr(FusionLayer(StaticAdapterFusionConfig(), 8, 0.0), "value")


def test_temperature_anneals_from_50_by_005_per_forward():
    layer = FusionLayer(DynamicAdapterFusionConfig(temperature=True), 8, dropout_prob=0.0)
    query, ups, residual = torch.randn(1, 2, 8), torch.randn(1, 2, 2, 8), torch.randn(1, 2, 8)
    for step in range(3):
        temperature = layer.T
        assert temperature == pytest.approx(50.0 - 0.05 * step)
        out, _ = layer(query, ups, residual)
        assert_close(out, reference_fusion(layer, query, ups, residual, temperature)[0])
    layer.T = 1.01
    layer(query, ups, residual)
    assert layer.T == 1.0  # never below 1


def _ln(layer_norm, t):
    return F.layer_norm(t, layer_norm.normalized_shape, layer_norm.weight, layer_norm.bias, layer_norm.eps)


def _seq_bn(adapter, t):
    down = adapter.adapter_down[0]
    return F.linear(F.relu(F.linear(t, down.weight, down.bias)), adapter.adapter_up.weight, adapter.adapter_up.bias)


@pytest.mark.parametrize("stacked", [False, True], ids=["fuse", "stack_lang_fuse"])
def test_model_output_is_fusion_of_the_adapters_up_projections(ids, stacked):
    """Last layer's FFN block by hand: seq_bn's LN(h + x) is each adapter's input and the query,
    h the residual, the fused output goes through the block's LayerNorm with x."""
    model = fused_model(extra=("lang",) if stacked else ())
    setup = Stack("lang", Fuse("a", "b")) if stacked else Fuse("a", "b")
    model.set_active_adapters(setup)
    with torch.no_grad():
        outputs = model(**ids, output_hidden_states=True)
        layer = model.encoder.layer[-1]
        x = layer.attention(outputs.hidden_states[-2])[0]
        inter = F.gelu(F.linear(x, layer.intermediate.dense.weight, layer.intermediate.dense.bias))
        h = F.linear(inter, layer.output.dense.weight, layer.output.dense.bias)
        adapters_here = layer.output.adapters
        hidden = h
        if stacked:  # lang: seq_bn on LN(h + x) with residual h; its output is the fusion's input
            hidden = _seq_bn(adapters_here["lang"], _ln(layer.output.LayerNorm, h + x)) + h
        query = _ln(layer.output.LayerNorm, hidden + x)
        ups = torch.stack([_seq_bn(adapters_here[n], query) for n in ("a", "b")], dim=2)
        fused, _ = reference_fusion(fusion_layer(model, "a,b", 1), query, ups, hidden, 1.0)
        expected = _ln(layer.output.LayerNorm, fused + x)
    assert_close(outputs.last_hidden_state, expected)


def test_fusion_over_houlsby_adapters_sits_at_both_places(ids):
    model = fused_model(adapter_config="double_seq_bn")
    keys = set(FusionRegistry.of(model.adapters_state).require("a,b").layers)
    assert keys == {(i, p) for i in (0, 1) for p in ("mh_adapter", "output_adapter")}
    assert "a,b" in model.encoder.layer[0].attention.output.adapter_fusion_layer._modules
    model.set_active_adapters(Fuse("a", "b"))
    with torch.no_grad():
        out = model(**ids, output_adapter_fusion_attentions=True)
    assert set(out.adapter_fusion_attentions["a,b"][0]) == {"mh_adapter", "output_adapter"}


def test_fuse_nested_in_parallel_and_batch_split_equals_separate_runs(ids):
    model = fused_model(extra=("c",))

    def run(setup, inputs=ids):
        model.set_active_adapters(setup)
        with torch.no_grad():
            return model(**inputs).last_hidden_state

    branch = Stack("c", Fuse("a", "b"))
    assert_close(run(Parallel(branch, "b")), torch.cat([run(branch), run("b")]))
    first, second = ({k: v[i : i + 1] for k, v in ids.items()} for i in (0, 1))
    split = run(BatchSplit(Stack(Fuse("a", "b")), "c", batch_sizes=[1, 1]))
    assert_close(split, torch.cat([run(Fuse("a", "b"), first), run("c", second)]))


# -- outputs ----------------------------------------------------------------------------------
def test_fusion_attentions_are_returned_when_asked(ids):
    model = fused_model()
    model.set_active_adapters(Fuse("a", "b"))
    with torch.no_grad():
        plain = model(**ids)
        out = model(**ids, output_adapter_fusion_attentions=True)
        as_tuple = model(**ids, return_dict=False, output_adapter_fusion_attentions=True)
    assert "adapter_fusion_attentions" not in plain
    # Recording only keeps (detached) the probabilities the layers compute anyway: the same computation.
    assert torch.equal(out.last_hidden_state, plain.last_hidden_state)
    attentions = out.adapter_fusion_attentions
    assert set(attentions) == {"a,b"} and set(attentions["a,b"]) == {0, 1}
    probs = attentions["a,b"][1]["output_adapter"]
    assert probs.shape == (2, 7, 2) and not probs.requires_grad
    assert_close(probs.sum(-1), torch.ones(2, 7))
    assert isinstance(as_tuple, tuple) and set(as_tuple[-1]) == {"a,b"}
    with torch.no_grad():
        assert "adapter_fusion_attentions" not in model(**ids)  # only for the call that asked


def test_fuse_acts_only_when_active(ids):
    model = fused_model()
    with torch.no_grad():
        plain = model(**ids).last_hidden_state
        model.set_active_adapters(Fuse("a", "b"))
        fused = model(**ids).last_hidden_state
        model.set_active_adapters(None)
        again = model(**ids).last_hidden_state
    assert not torch.allclose(plain, fused, atol=1e-4)
    assert torch.equal(plain, again)


# -- training ---------------------------------------------------------------------------------
def test_training_the_fusion_changes_only_fusion_weights(ids):
    model = fused_model()
    model.train_adapter_fusion(Fuse("a", "b"))
    assert model.active_adapters == Fuse("a", "b")
    fusion_params = dict(FusionRegistry.of(model.adapters_state).require("a,b").named_parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(fusion_params)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    target = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(5))
    losses = []
    for _ in range(15):
        loss = F.mse_loss(model(**ids).last_hidden_state, target)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == set(fusion_params)


def test_unfreeze_adapters_trains_them_too():
    model = fused_model(extra=("other",))
    model.train_adapter_fusion(Fuse("a", "b"), unfreeze_adapters=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    state = model.adapters_state
    expected = {n for name in ("a", "b") for n, _ in state.parameters_of(name)}
    expected |= set(dict(FusionRegistry.of(state).require("a,b").named_parameters()))
    assert trainable == expected


def test_regularization_loss_is_the_value_matrices_distance_to_identity():
    model = fused_model()
    model.freeze_model()
    assert model.get_fusion_regularization_loss() is None  # no trainable value matrix
    model.train_adapter_fusion(Fuse("a", "b"))
    expected = sum(0.01 * (torch.eye(32) - fusion_layer(model, "a,b", i).value.weight).pow(2).sum() for i in (0, 1))
    loss = model.get_fusion_regularization_loss()
    assert_close(loss, expected)
    loss.backward()
    assert fusion_layer(model, "a,b", 0).value.weight.grad is not None
    static = fused_model(config="static")
    static.train_adapter_fusion(Fuse("a", "b"))
    assert static.get_fusion_regularization_loss() is None  # no value matrix


# -- files ------------------------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path, ids):
    model = fused_model()
    model.save_adapter_fusion(tmp_path / "fusion", "a,b")
    model.save_adapter_fusion(tmp_path / "legacy", Fuse("a", "b"), use_safetensors=False)
    files = {p.name for p in (tmp_path / "fusion").iterdir()}
    assert files == {"adapter_fusion_config.json", "model_adapter_fusion.safetensors"}
    assert (tmp_path / "legacy" / "pytorch_model_adapter_fusion.bin").is_file()
    saved = json.loads((tmp_path / "fusion" / "adapter_fusion_config.json").read_text())
    assert saved["name"] == "a,b" and saved["adapter_names"] == ["a", "b"]
    assert saved["config"] == DynamicAdapterFusionConfig().to_dict()
    model.save_all_adapters(tmp_path / "adapters")
    model.set_active_adapters(Fuse("a", "b"))
    with torch.no_grad():
        expected = model(**ids).last_hidden_state

    for folder in ("fusion", "legacy"):
        other = tiny_bert(**NO_DROPOUT)
        adapters.init(other)
        other.load_adapter(tmp_path / "adapters" / "a")
        other.load_adapter(tmp_path / "adapters" / "b")
        assert other.load_adapter_fusion(tmp_path / folder, set_active=True) == "a,b"
        assert other.active_adapters == Fuse("a", "b")
        with torch.no_grad():
            # The same model with the very weights (saved, loaded back) on the same inputs: the same computation.
            assert torch.equal(other(**ids).last_hidden_state, expected)
    assert other.load_adapter_fusion(tmp_path / "fusion", load_as="copy") == "copy"
    other.set_active_adapters(Fuse("a", "b", name="copy"))
    with torch.no_grad():
        assert torch.equal(other(**ids).last_hidden_state, expected)


def test_loading_refuses_foreign_files_and_changes_nothing(tmp_path):
    model = fused_model(config="static")
    model.save_adapter_fusion(tmp_path / "static", "a,b")
    wider = tiny_bert(**NO_DROPOUT, hidden_size=48)
    adapters.init(wider)
    with pytest.raises(AdapterLoadError, match="hidden_size"):
        wider.load_adapter_fusion(tmp_path / "static")
    bare = tiny_bert(**NO_DROPOUT)
    adapters.init(bare)
    with pytest.raises(AdapterNameError, match="No adapter named 'a'"):
        bare.load_adapter_fusion(tmp_path / "static")  # its adapters are not loaded
    # A config that does not match the weights: dynamic expects value matrices the file lacks.
    config_path = tmp_path / "static" / "adapter_fusion_config.json"
    data = json.loads(config_path.read_text())
    data["config"] = DynamicAdapterFusionConfig().to_dict()
    config_path.write_text(json.dumps(data))
    model.delete_adapter_fusion("a,b")
    with pytest.raises(AdapterLoadError, match="missing keys"):
        model.load_adapter_fusion(tmp_path / "static")
    assert FusionRegistry.of(model.adapters_state).fusions == {}
    assert not any("adapter_fusion_layer" in n for n, _ in model.named_parameters())


def test_save_pretrained_keeps_fusions_out_of_the_checkpoint(tmp_path):
    model = fused_model()
    model.save_pretrained(tmp_path)
    assert not any("adapter_fusion_layer" in k for k in load_file(tmp_path / "model.safetensors"))
    assert (tmp_path / "adapter_fusions" / "a,b" / "adapter_fusion_config.json").is_file()


def test_trainer_checkpoint_holds_the_fusion(tmp_path, ids):
    model = fused_model()
    model.train_adapter_fusion(Fuse("a", "b"))
    assert [(kind.kind, name) for kind, name in checkpoint_items(model)] == [
        ("adapter", "a"),
        ("adapter", "b"),
        ("fusion", "a,b"),
    ]
    adapters.training.check_adapter_training(model)  # fusion weights count as adapter weights
    save_checkpoint(model, tmp_path)
    with torch.no_grad():
        layer = fusion_layer(model, "a,b", 0)
        saved = layer.query.weight.clone()
        layer.query.weight.zero_()
    assert load_checkpoint(model, tmp_path) == ["a", "b", "a,b"]
    assert torch.equal(fusion_layer(model, "a,b", 0).query.weight, saved)  # restored in place


REFERENCE = Path(__file__).parent / "fixtures" / "reference"
FUSION_CASES = json.loads((REFERENCE / "fusion" / "manifest.json").read_text())["cases"]


@pytest.mark.parametrize("case", sorted(FUSION_CASES))
def test_reference_fusion_gives_reference_output(case):
    """Fusions saved by the reference (make_fusion_fixtures.py): par_bn, double_seq_bn, config options."""
    model = transformers.BertModel.from_pretrained(REFERENCE / "bert" / "base").eval()
    adapters.init(model)
    for name in FUSION_CASES[case]:
        model.load_adapter(REFERENCE / "fusion" / name)
    model.load_adapter_fusion(REFERENCE / "fusion" / f"{case}_fusion", set_active=True)
    with torch.no_grad():
        out = model(**load_file(REFERENCE / "bert" / "inputs.safetensors")).last_hidden_state
    expected = load_file(REFERENCE / "fusion" / "expected.safetensors")[case]
    assert_close(out, expected, ulps=CROSS_LIBRARY_ULPS)


# -- the API and its errors ---------------------------------------------------------------------
def test_add_variants_names_and_delete(ids):
    model = fused_model()
    registry = FusionRegistry.of(model.adapters_state)
    model.add_adapter_fusion("a,b", config="static", name="mine", set_active=True)
    assert model.active_adapters == Fuse("a", "b", name="mine")
    assert isinstance(registry.require("mine").config, StaticAdapterFusionConfig)
    with pytest.raises(AdapterNameError, match="exists already"):
        model.add_adapter_fusion(Fuse("a", "b"))
    model.add_adapter_fusion(Fuse("a", "b"), config={**DynamicAdapterFusionConfig().to_dict()}, overwrite_ok=True)
    model.delete_adapter_fusion(Fuse("a", "b", name="mine"))
    assert model.active_adapters is None  # the deleted fusion was active
    model.delete_adapter_fusion(["a", "b"])
    assert registry.fusions == {}
    assert not any("adapter_fusion_layer" in n for n, _ in model.named_parameters())
    assert not adapter_hooks(model)  # no fusion, no hooks (but those opening and closing each pass)
    with pytest.raises(AdapterNameError, match="No AdapterFusion"):
        model.delete_adapter_fusion("a,b")


def test_config_loading():
    assert AdapterFusionConfig.load("static") == StaticAdapterFusionConfig()
    assert AdapterFusionConfig.load(None).value_initialized is True
    assert AdapterFusionConfig.load("dynamic", temperature=True).temperature
    assert (
        AdapterFusionConfig.load(StaticAdapterFusionConfig().to_dict()).to_dict()
        == StaticAdapterFusionConfig().to_dict()
    )
    with pytest.raises(AdapterConfigError, match="missing"):
        AdapterFusionConfig.load({"key": True})
    with pytest.raises(AdapterConfigError, match="static"):
        AdapterFusionConfig.load("nope")
    with pytest.raises(dataclasses.FrozenInstanceError):
        DynamicAdapterFusionConfig().temperature = True  # immutable


def test_fuse_of_lora_adapters_is_refused():
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("x", config="lora")
    model.add_adapter("y", config="lora")
    with pytest.raises(AdapterConfigError, match="bottleneck"):
        model.add_adapter_fusion(Fuse("x", "y"))
    with pytest.raises(CompositionError, match="Fuse"):
        model.set_active_adapters(Fuse("x", "y"))
    assert model.active_adapters is None


def test_fuse_without_fusion_layer_is_refused_and_changes_nothing(ids):
    model = tiny_bert(**NO_DROPOUT)
    adapters.init(model)
    model.add_adapter("a", config="seq_bn", set_active=True)
    model.add_adapter("b", config="seq_bn")
    with pytest.raises(CompositionError, match=r"add_adapter_fusion\(Fuse\('a', 'b'\)\)"):
        model.set_active_adapters(Fuse("a", "b"))
    with pytest.raises(CompositionError, match="AdapterFusion layer 'a,b'"):
        model.set_active_adapters(Stack("a", Fuse("a", "b")))
    assert model.active_adapters == Stack("a")
    with pytest.raises(CompositionError, match="add_adapter_fusion"):
        model.train_adapter_fusion(Fuse("a", "b"))
    assert model.active_adapters == Stack("a")


def test_fused_adapters_must_share_their_places():
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="double_seq_bn")
    with pytest.raises(AdapterConfigError, match="mh_adapter"):
        model.add_adapter_fusion(Fuse("a", "b"))
    assert FusionRegistry.of(model.adapters_state).fusions == {}
