"""ReFT (LoReFT, NoReFT, DiReFT) against its definition (Wu et al., 2024), on small tensors.

An intervention replaces the hidden state h leaving a layer, at the first ``prefix_positions``
and the last ``suffix_positions`` real (non-padding) positions of each sequence, by
``h + R^T(act(W h + b) - R h)`` (DiReFT: ``h + R^T act(W h + b)``); LoReFT's R has orthonormal rows.
Expected values are computed here with plain torch ops from the module's parameters.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert, tiny_bert_classifier
from safetensors.torch import load_file
from test_reference_fixtures import FIXTURES, MODELS, inputs_of, load_reference_like

import adapters
from adapters import AdapterConfig, AdapterConfigError, AdapterSetup, DiReftConfig, LoReftConfig, NoReftConfig
from adapters.composition import Average, BatchSplit, Stack
from adapters.core.context import adapter_hooks
from adapters.io import adapter_state_dict
from adapters.testing import CROSS_LIBRARY_ULPS, assert_close, randomize_adapter, tolerance

ORIGINAL = "projection.parametrizations.weight.original"


def _intervene(unit, h, subtract=True, act=None):
    """The intervention of one unit, written out: h + R^T(act(W h + b) - R h)."""
    R = unit.projection.weight.detach()
    W, b = unit.learned_source.weight.detach(), unit.learned_source.bias.detach()
    source = h @ W.T + b
    if act is not None:
        source = act(source)
    if subtract:
        source = source - h @ R.T
    return h + source @ R


def _model_with(config, name="a", seed=0):
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter(name, config=config, set_active=True)
    randomize_adapter(model, name, seed=seed)
    return model


def _plain_and_adapted(model, inputs, setup="a"):
    with torch.no_grad():
        model.set_active_adapters(None)
        plain = model(**inputs).last_hidden_state
        model.set_active_adapters(setup)
        adapted = model(**inputs).last_hidden_state
    return plain, adapted


def _inputs(left_padding=False):
    input_ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(input_ids)
    if left_padding:
        mask[1, :2] = 0
    else:
        mask[1, -2:] = 0
    return {"input_ids": input_ids, "attention_mask": mask}


@pytest.mark.parametrize(
    ("config", "subtract"),
    [(LoReftConfig(r=2), True), (NoReftConfig(r=2), True), (DiReftConfig(r=2), False)],
    ids=["loreft", "noreft", "direft"],
)
def test_unit_computes_the_intervention(config, subtract):
    model = _model_with(config.replace(layers=[1]))
    unit = model.encoder.layer[1].reft_layer.refts["a"].units[0]
    h = torch.randn(3, 4, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_close(unit.eval()(h), _intervene(unit, h, subtract))
    R = unit.projection.weight.detach()
    if config.orthogonality:
        assert_close(R @ R.T, torch.eye(2))
    else:
        assert not torch.allclose(R @ R.T, torch.eye(2), atol=1e-2)


def test_dropout_in_training_drops_parts_of_the_edit_never_of_h():
    """Training: h + dropout(edit); each entry of the output is h or h + edit / (1 - p)."""
    model = _model_with(LoReftConfig(r=2, dropout=0.5, layers=[1]))
    unit = model.encoder.layer[1].reft_layer.refts["a"].units[0].train()
    h = torch.randn(4, 3, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        edit = _intervene(unit, h) - h
        got = unit(h) - h
    # (got is (h + kept edit) - h: its rounding is that of h + 2 edit; a dropped entry is h + 0 - h, exactly 0)
    kept = (got - 2 * edit).abs() <= tolerance(h + 2 * edit)
    dropped = got == 0
    assert (kept | dropped).all() and kept.any() and dropped.any()


@pytest.mark.parametrize("left_padding", [False, True], ids=["right_padding", "left_padding"])
def test_prefix_and_suffix_positions_respect_padding(left_padding):
    """Only the first 2 and last 2 real positions change; prefix and suffix have their own unit."""
    model = _model_with(LoReftConfig(prefix_positions=2, suffix_positions=2, layers=[1], non_linearity="tanh"))
    inputs = _inputs(left_padding)
    plain, got = _plain_and_adapted(model, inputs)
    prefix_unit, suffix_unit = model.encoder.layer[1].reft_layer.refts["a"].units
    # row 0: 7 real tokens; row 1: 5 real tokens at 0..4 (right padding) or 2..6 (left padding)
    positions = {0: ([0, 1], [5, 6]), 1: ([2, 3], [5, 6]) if left_padding else ([0, 1], [3, 4])}
    expected = plain.clone()
    for row, (prefix, suffix) in positions.items():
        expected[row, prefix] = _intervene(prefix_unit, plain[row, prefix], act=torch.tanh)
        expected[row, suffix] = _intervene(suffix_unit, plain[row, suffix], act=torch.tanh)
    assert_close(got, expected)


def test_tied_weights_share_one_unit_and_the_suffix_wins_where_ranges_overlap():
    """prefix 3 and suffix 3 on a 5-token sequence overlap at position 2: the suffix result (from h) stands."""
    model = _model_with(LoReftConfig(prefix_positions=3, suffix_positions=3, tied_weights=True, layers=[1]))
    units = model.encoder.layer[1].reft_layer.refts["a"].units
    assert len(units) == 1
    inputs = _inputs()
    plain, got = _plain_and_adapted(model, inputs)
    expected = plain.clone()
    for row, (prefix, suffix) in {0: ([0, 1, 2], [4, 5, 6]), 1: ([0, 1, 2], [2, 3, 4])}.items():
        expected[row, prefix] = _intervene(units[0], plain[row, prefix])
        expected[row, suffix] = _intervene(units[0], plain[row, suffix])
    assert_close(got, expected)


def test_every_selected_layer_gets_its_own_intervention():
    """layers=[0]: layer 1 then runs on the intervened output of layer 0."""
    model = _model_with(NoReftConfig(prefix_positions=1, layers=[0]))
    assert "reft_layer" not in model.encoder.layer[1]._modules or not model.encoder.layer[1].reft_layer.refts
    inputs = _inputs()
    unit = model.encoder.layer[0].reft_layer.refts["a"].units[0]
    with torch.no_grad():
        model.set_active_adapters(None)
        hidden = model(**inputs, output_hidden_states=True).hidden_states
        layer0 = hidden[1].clone()
        layer0[:, 0] = _intervene(unit, layer0[:, 0])
        expected = model.encoder.layer[1](layer0)  # row 0 has no padding: no mask needed for it
        expected = expected[0] if isinstance(expected, tuple) else expected
        model.set_active_adapters("a")
        got = model(**inputs).last_hidden_state
    assert_close(got[0], expected[0])  # row 0 has no padding


def test_stack_applies_each_reft_adapter_in_order():
    model = _model_with(LoReftConfig(prefix_positions=2, layers=[1]), name="a", seed=0)
    model.add_adapter("b", config=DiReftConfig(prefix_positions=1, suffix_positions=1, layers=[1]))
    randomize_adapter(model, "b", seed=1)
    inputs = _inputs()
    plain, got = _plain_and_adapted(model, inputs, Stack("a", "b"))
    a = model.encoder.layer[1].reft_layer.refts["a"].units[0]
    b_prefix, b_suffix = model.encoder.layer[1].reft_layer.refts["b"].units
    expected = plain.clone()
    expected[:, :2] = _intervene(a, plain[:, :2])
    expected[:, 0] = _intervene(b_prefix, expected[:, 0], subtract=False)
    expected[0, 6] = _intervene(b_suffix, expected[0, 6], subtract=False)
    expected[1, 4] = _intervene(b_suffix, expected[1, 4], subtract=False)
    assert_close(got, expected)
    _, reversed_order = _plain_and_adapted(model, inputs, Stack("b", "a"))
    assert not torch.allclose(reversed_order, got, atol=1e-4), "Stack order must matter"


def test_adapter_setup_context_sees_the_padding():
    model = _model_with(LoReftConfig(prefix_positions=1, suffix_positions=2))
    inputs = _inputs()
    _, active = _plain_and_adapted(model, inputs)
    model.set_active_adapters(None)
    with torch.no_grad(), AdapterSetup("a"):
        in_context = model(**inputs).last_hidden_state
    torch.testing.assert_close(in_context, active, rtol=0, atol=0)
    model.delete_adapter("a")  # the mask capture goes with the last ReFT adapter
    assert not adapter_hooks(model) and not any(layer._forward_hooks for layer in model.encoder.layer)


def test_recorded_hidden_states_include_the_intervention():
    """output_hidden_states records what each layer hands on: its output after the intervention."""
    model = _model_with(LoReftConfig())
    layer_inputs = []
    model.encoder.layer[1].register_forward_pre_hook(lambda module, args: layer_inputs.append(args[0]))
    with torch.no_grad():
        out = model(**_inputs(), output_hidden_states=True)
        model.set_active_adapters(None)
        plain = model(**_inputs(), output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[1], layer_inputs[0], rtol=0, atol=0)
    assert not torch.allclose(out.hidden_states[1], plain.hidden_states[1], atol=1e-3)
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state, rtol=0, atol=0)


def test_orthonormal_r_survives_weight_decay_and_files_keep_exact_signs():
    """torch's own Householder map reads the sign diagonal with .int(): after AdamW's weight decay
    moves -1 to -0.99999 it gives R = 0 (the reference library's LoReFT stops acting). Ours does not."""
    model = _model_with(LoReftConfig(r=2, layers=[0]))
    unit = model.encoder.layer[0].reft_layer.refts["a"].units[0]
    original = unit.projection.parametrizations.weight.original
    with torch.no_grad():
        original.diagonal().mul_(0.9)  # what decoupled weight decay does over many steps
    R = unit.projection.weight.detach()
    assert_close(R @ R.T, torch.eye(2))
    torch_map = torch.nn.utils.parametrizations._Orthogonal(R, torch.nn.utils.parametrizations._OrthMaps.householder)
    torch_map.base = unit.projection.parametrizations.weight[0].base
    assert torch.count_nonzero(torch_map(original.detach())) == 0, "torch's map no longer truncates the signs"
    saved = adapter_state_dict(model.adapters_state, "a")[f"encoder.layer.0.reft_layer.refts.a.units.0.{ORIGINAL}"]
    torch.testing.assert_close(saved.diagonal(), torch.sign(original.detach().diagonal()), rtol=0, atol=0)
    torch.testing.assert_close(saved.tril(-1), original.detach().tril(-1), rtol=0, atol=0)
    assert unit.state_dict(keep_vars=True)[ORIGINAL] is original  # loading still writes into the parameter


def test_loreft_training_lowers_the_loss_with_adamw_and_the_head_frozen():
    torch.manual_seed(0)
    # A larger init range than BERT's 0.02, so that the frozen random head passes gradients on.
    model = tiny_bert_classifier(num_labels=2, initializer_range=0.2)
    adapters.init(model)
    model.add_adapter("a", config=LoReftConfig(prefix_positions=1, r=4, dropout=0.0), set_active=True)
    model.train_adapter("a")
    model.classifier.requires_grad_(False)  # only the interventions can lower the loss
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 100, (16, 9), generator=generator)
    labels = (input_ids[:, 0] > 50).long()  # readable at position 0, where the interventions act
    losses = []
    for _ in range(40):
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    unit = model.bert.encoder.layer[0].reft_layer.refts["a"].units[0]
    R = unit.projection.weight.detach()
    assert_close(R @ R.T, torch.eye(4))


def test_configs_and_reference_dicts():
    assert AdapterConfig.load("loreft") == LoReftConfig()
    assert AdapterConfig.load("direft[r=4,layers=[0,1]]") == DiReftConfig(r=4, layers=(0, 1))
    assert DiReftConfig().to_dict()["subtract_projection"] is False
    # The reference writes no subtract_projection and reads every file with True; so do we.
    reference_dict = {
        k: v for k, v in DiReftConfig().to_dict().items() if k not in ("subtract_projection", "leave_out")
    }
    loaded = AdapterConfig.load(reference_dict)
    assert type(loaded).__name__ == "ReftConfig" and loaded.subtract_projection is True
    assert (
        AdapterConfig.load(LoReftConfig(tied_weights=True).to_dict()).to_dict()
        == LoReftConfig(tied_weights=True).to_dict()
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(prefix_positions=0, suffix_positions=0), "intervenes nowhere"),
        (dict(layers="some"), "layers="),
        (dict(r=0), "rank r"),
        (dict(non_linearity="nope"), "non_linearity"),
        (dict(dtype="int8"), "dtype"),
        (dict(output_reft=False), "output_reft"),
    ],
)
def test_invalid_configs_are_refused(config, message):
    with pytest.raises(AdapterConfigError, match=message):
        LoReftConfig(**config)


def test_model_level_errors_leave_the_model_unchanged():
    model = tiny_bert()
    adapters.init(model)
    keys = set(model.state_dict())
    with pytest.raises(AdapterConfigError, match=r"layers \[5\] do not exist"):
        model.add_adapter("a", config=LoReftConfig(layers=[1, 5]))
    with pytest.raises(AdapterConfigError, match="selects no layer"):
        model.add_adapter("a", config=LoReftConfig(layers=[1], leave_out=[1]))
    with pytest.raises(AdapterConfigError, match="orthonormal rows"):
        model.add_adapter("a", config=LoReftConfig(r=33))
    assert set(model.state_dict()) == keys and not model.adapters_state.configs
    model.add_adapter("a", config=NoReftConfig(r=33), set_active=True)  # no orthogonality: any rank
    with pytest.raises(adapters.AdapterError, match="attention mask"):
        model(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 1, 1, 5))


@pytest.mark.parametrize(
    "model_type", sorted(m for m, e in MODELS.items() if "direft" in e.get("reloaded_differs", {}))
)
def test_direft_weights_of_the_reference_give_its_live_output(model_type):
    """The reference reads its own DiReFT files as NoReFT (the fixture's expected output, checked in
    test_reference_fixtures); with subtract_projection=False restored, its weights give the output
    the reference computed before saving."""
    model = load_reference_like(model_type)
    adapters.init(model)
    folder = FIXTURES / model_type / "direft"
    saved = AdapterConfig.load(folder)
    assert saved.subtract_projection is True  # what the file says, read as the reference reads it
    model.add_adapter("direft", config=DiReftConfig.from_dict(saved.replace(subtract_projection=False).to_dict()))
    result = model.load_state_dict(load_file(folder / "adapter.safetensors"), strict=False)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if ".direft." in k]
    model.set_active_adapters("direft")
    live = load_file(FIXTURES / model_type / "direft.live.safetensors")["last_hidden_state"]
    with torch.no_grad():
        assert_close(model(**inputs_of(model_type)).last_hidden_state, live, ulps=CROSS_LIBRARY_ULPS)


def test_batch_split_gives_each_example_its_adapters_intervention_at_its_own_positions():
    model = _model_with(NoReftConfig(prefix_positions=0, suffix_positions=2, layers=[1]), name="a", seed=0)
    model.add_adapter("b", config=DiReftConfig(prefix_positions=1, layers=[1]))
    randomize_adapter(model, "b", seed=1)
    inputs = _inputs(left_padding=True)  # row 1: padding at positions 0-1, real tokens 2-6
    plain, got = _plain_and_adapted(model, inputs, BatchSplit("a", "b", batch_sizes=[1, 1]))
    a = model.encoder.layer[1].reft_layer.refts["a"].units[1]  # the suffix unit
    b = model.encoder.layer[1].reft_layer.refts["b"].units[0]
    expected = plain.clone()
    expected[0, 5:] = _intervene(a, plain[0, 5:])  # row 0 (no padding): a on its last two positions
    expected[1, 2] = _intervene(b, plain[1, 2], subtract=False)  # row 1: b on its first real position
    assert_close(got, expected)


def test_average_of_reft_adapters_needs_weights_summing_to_one():
    model = _model_with(LoReftConfig(layers=[1]), name="a")
    model.add_adapter("b", config=NoReftConfig(layers=[1]))
    with pytest.raises(adapters.CompositionError, match="sum"):
        model.set_active_adapters(Average("a", "b", weights=[1, 1], normalize_weights=False))
    assert model.active_adapters == Stack("a")


def test_loreft_runs_in_bfloat16():
    """Householder products have no bf16 kernels (CPU or CUDA): R is computed in float32 and cast back."""
    model = _model_with(LoReftConfig(r=2, prefix_positions=2, suffix_positions=1)).to(torch.bfloat16)
    unit = model.encoder.layer[0].reft_layer.refts["a"].units[0]
    assert unit.projection.weight.dtype == torch.bfloat16
    plain, adapted = _plain_and_adapted(model, _inputs())
    assert adapted.dtype == torch.bfloat16 and torch.isfinite(adapted).all()
    assert not torch.equal(plain, adapted)
    rotation = unit.projection.weight.float()
    # R's entries are rounded to bfloat16: each product of two unit rows is off by at most about 1 ulp of it.
    atol = tolerance(torch.eye(2), ulps=2, dtype=torch.bfloat16)
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(2), rtol=0, atol=atol)
