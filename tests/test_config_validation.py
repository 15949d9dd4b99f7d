"""Every field of every config is type- and range-checked, with an error that names the field.

Configs come from user code, shorthand strings and ``adapter_config.json`` files that anyone may
have written; a wrong value must stop at the config with an ``AdapterConfigError`` naming the
field and what it allows, not later as a ``TypeError`` or ``ZeroDivisionError`` from deep inside
a module constructor, and never as a silently accepted ``Infinity``.

Integral floats for integer fields (``"r": 8.0``, what some JSON writers produce) are accepted and
stored as ints; any other float there (``4.5``) is refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adapters
from adapters import (
    AdapterConfig,
    AdapterConfigError,
    AdapterError,
    AdapterLoadError,
    BnConfig,
    CompacterConfig,
    LoRAConfig,
    LoReftConfig,
    ParBnConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    SeqBnConfig,
    SeqBnInvConfig,
)
from adapters.configs.fusion import AdapterFusionConfig, DynamicAdapterFusionConfig

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_CONFIGS = sorted(
    [
        *ROOT.glob("tests/fixtures/**/adapter_config.json"),
        *ROOT.glob("packages/*/tests/fixtures/**/adapter_config.json"),
    ]
)
FUSION_FIXTURE_CONFIGS = sorted(
    [
        *ROOT.glob("tests/fixtures/**/adapter_fusion_config.json"),
        *ROOT.glob("packages/*/tests/fixtures/**/adapter_fusion_config.json"),
    ]
)

# (config class, field, an invalid value). Each is refused with the field's name in the message.
INVALID = [
    # sizes: integers (not bools, not 4.5), positive, within int32
    (LoRAConfig, "r", 4.5),
    (LoRAConfig, "r", True),
    (LoRAConfig, "r", "8"),
    (LoRAConfig, "r", 0),
    (LoRAConfig, "r", -3),
    (LoRAConfig, "r", 2**40),
    (LoRAConfig, "r", None),
    (LoReftConfig, "r", 1.5),
    (PrefixTuningConfig, "prefix_length", 2.5),
    (PrefixTuningConfig, "prefix_length", False),
    (PrefixTuningConfig, "bottleneck_size", 0),
    (PrefixTuningConfig, "bottleneck_size", "512"),
    (PromptTuningConfig, "prompt_length", 10.5),
    (PromptTuningConfig, "prompt_length", -1),
    (CompacterConfig, "phm_dim", 0),
    (CompacterConfig, "phm_dim", 2.5),
    (CompacterConfig, "phm_rank", 0),
    (LoReftConfig, "prefix_positions", -1),
    (LoReftConfig, "suffix_positions", 1.5),
    # reduction factors: positive finite numbers (or a dict of them)
    (SeqBnConfig, "reduction_factor", 0),
    (SeqBnConfig, "reduction_factor", -16),
    (SeqBnConfig, "reduction_factor", math.inf),
    (SeqBnConfig, "reduction_factor", math.nan),
    (SeqBnConfig, "reduction_factor", "16"),
    (SeqBnConfig, "reduction_factor", True),
    (SeqBnConfig, "reduction_factor", {"default": 0}),
    (SeqBnConfig, "reduction_factor", {"default": "x"}),
    (SeqBnInvConfig, "inv_adapter_reduction_factor", 0),
    (SeqBnInvConfig, "inv_adapter_reduction_factor", math.inf),
    # finite floats
    (ParBnConfig, "scaling", math.inf),
    (ParBnConfig, "scaling", -math.inf),
    (ParBnConfig, "scaling", math.nan),
    (ParBnConfig, "scaling", None),
    (ParBnConfig, "scaling", True),
    (LoRAConfig, "alpha", math.inf),
    (LoRAConfig, "alpha", math.nan),
    (LoRAConfig, "alpha", 0),
    (LoRAConfig, "alpha", "8"),
    (LoRAConfig, "vera_d", math.nan),
    (CompacterConfig, "phm_init_range", math.inf),
    (CompacterConfig, "phm_init_range", -0.1),
    # probabilities
    (LoRAConfig, "dropout", 1.5),
    (LoRAConfig, "dropout", -0.1),
    (LoRAConfig, "dropout", math.nan),
    (SeqBnConfig, "dropout", 2),
    (SeqBnConfig, "stochastic_depth", math.nan),
    (PrefixTuningConfig, "dropout", math.inf),
    (LoReftConfig, "dropout", "0.1"),
    (DynamicAdapterFusionConfig, "dropout_prob", 1.5),
    (DynamicAdapterFusionConfig, "dropout_prob", math.nan),
    # strings from their known sets
    (SeqBnConfig, "non_linearity", "sine"),
    (SeqBnConfig, "non_linearity", 3),
    (SeqBnConfig, "init_weights", "zeros"),
    (PrefixTuningConfig, "non_linearity", "sine"),
    (LoRAConfig, "composition_mode", "mul"),
    (LoRAConfig, "init_weights", None),
    (LoRAConfig, "attn_matrices", ["q", "x"]),
    (LoRAConfig, "attn_matrices", "qv"),
    (LoRAConfig, "dtype", "int8"),
    (PromptTuningConfig, "combine", "suffix"),
    (PromptTuningConfig, "prompt_init", "zeros"),
    (PromptTuningConfig, "prompt_init_text", 5),
    (CompacterConfig, "phm_c_init", "zeros"),
    (CompacterConfig, "hypercomplex_nonlinearity", "relu"),
    (LoReftConfig, "non_linearity", "sine"),
    (LoReftConfig, "layers", "some"),
    (LoReftConfig, "layers", [0, -1]),
    (LoReftConfig, "layers", [0.5]),
    # booleans are true or false, not 0/1 or "yes"
    (SeqBnConfig, "mh_adapter", 1),
    (SeqBnConfig, "is_parallel", "yes"),
    (LoRAConfig, "use_dora", None),
    (PrefixTuningConfig, "flat", 0),
    (DynamicAdapterFusionConfig, "key", 1),
    # layer lists: non-negative integers
    (LoRAConfig, "leave_out", [0, -1]),
    (LoRAConfig, "leave_out", [1.5]),
    (LoRAConfig, "leave_out", 3),
    (SeqBnConfig, "leave_out", [True]),
    # seeds: torch's range
    (LoRAConfig, "init_weights_seed", 2**70),
    (LoRAConfig, "init_weights_seed", 1.5),
]


def _base(cls: type[AdapterConfig]) -> dict:
    if cls is DynamicAdapterFusionConfig:
        return DynamicAdapterFusionConfig().to_dict()
    return cls().to_dict()


@pytest.mark.parametrize(("cls", "field", "value"), INVALID, ids=[f"{c.__name__}.{f}={v!r}" for c, f, v in INVALID])
def test_invalid_field_values_are_refused_naming_the_field(cls, field, value):
    with pytest.raises(AdapterConfigError, match=field):
        cls(**{field: value})
    # The same from a dict (adapter_config.json) and through replace().
    data = {**_base(cls), field: value}
    with pytest.raises(AdapterConfigError, match=field):
        AdapterFusionConfig.load(data) if issubclass(cls, AdapterFusionConfig) else AdapterConfig.load(data)
    with pytest.raises(AdapterConfigError, match=field):
        cls().replace(**{field: value})


def test_reduction_factor_zero_gives_a_config_error_not_zero_division():
    # Found: {"reduction_factor": 0} raised ZeroDivisionError from inside add_adapter.
    model = tiny_bert()
    adapters.init(model)
    with pytest.raises(AdapterConfigError, match="reduction_factor"):
        model.add_adapter("a", {**SeqBnConfig().to_dict(), "reduction_factor": 0})
    with pytest.raises(AdapterConfigError, match="reduction_factor"):
        model.add_adapter("a", "seq_bn[reduction_factor=0]")
    assert not model.adapters_state.configs


def test_fractional_rank_gives_a_config_error_not_type_error():
    # Found: r=4.5 raised "TypeError: empty() takes 1 positional argument but 2 were given".
    model = tiny_bert()
    adapters.init(model)
    with pytest.raises(AdapterConfigError, match=r"r=4\.5.*integer"):
        model.add_adapter("a", "lora[r=4.5]")


@pytest.mark.parametrize(("cls", "field"), [(LoRAConfig, "r"), (PrefixTuningConfig, "prefix_length")])
def test_integral_floats_are_accepted_as_ints(cls, field):
    config = AdapterConfig.load({**cls().to_dict(), field: 8.0})
    assert getattr(config, field) == 8 and type(getattr(config, field)) is int
    assert type(config.to_dict()[field]) is int


def test_json_infinity_and_nan_are_refused(tmp_path):
    # JSON has no Infinity or NaN, but Python's json module writes and reads them; they must not load.
    for field, value in (("scaling", math.inf), ("scaling", math.nan), ("dropout", math.nan)):
        text = json.dumps({"config": {**ParBnConfig().to_dict(), field: value}})
        assert "Infinity" in text or "NaN" in text
        (tmp_path / "adapter_config.json").write_text(text)
        with pytest.raises(AdapterConfigError, match=field):
            AdapterConfig.load(tmp_path)


def test_valid_values_still_load():
    assert LoRAConfig(alpha=0.5).alpha == 0.5  # alpha is any positive number (scaling alpha / r)
    assert SeqBnConfig(reduction_factor=0.5).reduction_factor == 0.5  # a bottleneck wider than the model
    assert SeqBnConfig(reduction_factor={"0": 4, "default": 8}).reduction_for_layer(1) == 8
    assert ParBnConfig(scaling=-2).scaling == -2 and ParBnConfig(scaling="learned").scaling == "learned"
    assert SeqBnConfig(non_linearity="GELU_new").non_linearity == "GELU_new"  # case as the reference
    assert LoRAConfig(dropout=1.0).dropout == 1.0
    assert LoRAConfig(leave_out=[0, 1]).leave_out == (0, 1)
    assert LoRAConfig(init_weights_seed=0).init_weights_seed == 0
    assert BnConfig(mh_adapter=True, output_adapter=False, reduction_factor=4, non_linearity="relu").mh_adapter


@pytest.mark.parametrize("path", FIXTURE_CONFIGS, ids=lambda p: str(p.parent.relative_to(ROOT)))
def test_every_committed_reference_config_still_parses(path):
    from adapters.io.adapter_io import parse_saved_config

    data = json.loads(path.read_text())
    parse_saved_config(data, path.parent)


@pytest.mark.parametrize("path", FUSION_FIXTURE_CONFIGS, ids=lambda p: str(p.parent.relative_to(ROOT)))
def test_every_committed_fusion_config_still_parses(path):
    AdapterFusionConfig.load(path)


def test_bottleneck_activation_names_match_the_modules():
    from adapters.configs.bottleneck import NON_LINEARITIES
    from adapters.methods.bottleneck.layer import _ACTIVATIONS

    assert set(NON_LINEARITIES) == set(_ACTIVATIONS)


# -- property-based: random config dicts --------------------------------------------------------
CONFIG_CLASSES = [
    adapters.SeqBnConfig,
    adapters.DoubleSeqBnConfig,
    adapters.ParBnConfig,
    adapters.SeqBnInvConfig,
    adapters.CompacterPlusPlusConfig,
    adapters.AdapterPlusConfig,
    adapters.LoRAConfig,
    adapters.IA3Config,
    adapters.VeraConfig,
    adapters.DoRAConfig,
    adapters.PrefixTuningConfig,
    adapters.PromptTuningConfig,
    adapters.LoReftConfig,
    adapters.DiReftConfig,
]
KNOWN_STRINGS = [
    *"relu gelu tanh bert lora ia3 vera mam_adapter houlsby prefix from_string random_uniform add scale".split(),
    *"all learned channel nice glow normal float16 x".split(),
    "",
]
# Values that JSON can hold, weighted towards ones near the valid ranges.
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-4, max_value=40),
    st.sampled_from([0, 2**31, 2**63, 10**9, 10**30, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 1.0, 8.0, 1e-9, 1e300, -0.5]),
    st.sampled_from(KNOWN_STRINGS),
    st.text(max_size=5),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=6,
)


def typed_values(hint) -> st.SearchStrategy:
    """Values of a field's annotated type, mostly in or near the valid range."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(typed_values(arg) for arg in typing.get_args(hint)))
    if origin is tuple:
        return st.lists(typed_values(typing.get_args(hint)[0]), max_size=3)
    if origin is not None and issubclass(origin, Mapping):
        keys = st.sampled_from(["0", "1", "2", "default"])
        return st.dictionaries(keys, typed_values(typing.get_args(hint)[1]), max_size=3)
    return {
        bool: st.booleans(),
        int: st.one_of(st.integers(min_value=-1, max_value=40), st.sampled_from([2**31 - 1, 2**31, 10**9])),
        float: st.one_of(st.floats(min_value=-1, max_value=40), st.sampled_from([0.0, 0.5, 1.0, 1e-9])),
        str: SCALARS.filter(lambda v: isinstance(v, str)),
        type(None): st.none(),
    }.get(hint, JSON_VALUES)


@st.composite
def config_dicts(draw: st.DrawFn) -> dict:
    cls = draw(st.sampled_from(CONFIG_CLASSES))
    data = cls().to_dict()
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    for field in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True)):
        # Mostly values of the field's type (which reach the range checks and the model), else any JSON.
        data[field] = draw(st.one_of(typed_values(hints[field]), typed_values(hints[field]), JSON_VALUES))
    if draw(st.integers(0, 9)) == 9:
        data[draw(st.text(min_size=1, max_size=4))] = draw(SCALARS)  # an unknown key now and then
    return data


def _structure(model: torch.nn.Module) -> tuple[list[str], dict[str, torch.Tensor]]:
    return [n for n, _ in model.named_modules()], {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(model: torch.nn.Module, before: tuple[list[str], dict[str, torch.Tensor]]) -> None:
    modules, state = _structure(model)
    assert modules == before[0]
    assert state.keys() == before[1].keys()
    assert all(torch.equal(state[k], v) for k, v in before[1].items())


_MODEL: list[torch.nn.Module] = []


def _shared_model() -> torch.nn.Module:
    if not _MODEL:
        model = tiny_bert()
        adapters.init(model)
        _MODEL.append(model)
    return _MODEL[0]


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(config_dicts())
def test_random_config_dicts_give_a_config_or_a_config_error(data):
    try:
        config = AdapterConfig.load(data)
    except AdapterConfigError:
        return
    assert AdapterConfig.load(config.to_dict()) == config  # what loads also round-trips


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(config_dicts())
def test_random_configs_give_an_adapter_or_a_library_error_and_leave_the_model_unchanged(data):
    model = _shared_model()
    before = _structure(model)
    try:
        model.add_adapter("h", data)
    except AdapterError:
        _assert_same(model, before)
        return
    try:
        model.set_active_adapters("h")
        with torch.no_grad():
            output = model(input_ids=torch.tensor([[2, 5, 6, 3]])).last_hidden_state
        assert output.shape[-1] == 32
    finally:
        model.delete_adapter("h")


def test_huge_config_file_is_refused(tmp_path):
    data = {"config": LoRAConfig().to_dict(), "model_name": "x" * (2 << 20)}
    (tmp_path / "adapter_config.json").write_text(json.dumps(data))
    with pytest.raises(AdapterLoadError, match="MiB"):
        AdapterConfig.load(tmp_path)


def test_deeply_nested_config_file_is_refused(tmp_path):
    # Found: a config file of nested lists raised RecursionError from json.
    (tmp_path / "adapter_config.json").write_text('{"config": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(AdapterLoadError, match="nested"):
        AdapterConfig.load(tmp_path)


def test_deeply_nested_unions_are_refused():
    config = LoRAConfig().to_dict()
    for _ in range(2000):
        config = {"architecture": "union", "configs": [config]}
    with pytest.raises(AdapterConfigError, match="nested"):
        AdapterConfig.load(config)


@pytest.mark.parametrize("factor", [1e-300, 5e-324])
@pytest.mark.parametrize("field", ["reduction_factor", "inv_adapter_reduction_factor"])
def test_reduction_factors_too_small_for_any_model_give_config_errors(field, factor):
    # hidden // 5e-324 is inf: int() of it raised OverflowError, and 1e-300 overflowed torch's shapes.
    model = tiny_bert()
    adapters.init(model)
    before = _structure(model)
    with pytest.raises(AdapterConfigError, match=field):
        model.add_adapter("a", SeqBnInvConfig(**{field: factor}))
    _assert_same(model, before)
