"""model.average_adapter: parameter averaging into a new, ordinary adapter."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert

import adapters
from adapters import AdapterConfigError, AdapterNameError
from adapters.testing import assert_close, randomize_adapter


def _model(config, names=("a", "b")):
    model = tiny_bert()
    adapters.init(model)
    for seed, name in enumerate(names):
        model.add_adapter(name, config=config)
        randomize_adapter(model, name, seed=seed)
    return model


def _params(model, name):
    """Parameters and buffers of one adapter, keyed with the adapter's name removed."""
    out = {}
    for path, module in model.adapters_state.modules_of(name).items():
        for key, value in module.state_dict().items():
            out[f"{path[: -len(name)]}.{key}"] = value
    return out


def _output(model, setup, inputs):
    model.set_active_adapters(setup)
    with torch.no_grad():
        return model(**inputs).last_hidden_state


@pytest.mark.parametrize("config", ["lora", "ia3", "dora", "vera", "seq_bn", "lora|seq_bn"])
def test_weights_one_and_zero_give_the_first_adapter(config, inputs):
    model = _model(config)
    model.average_adapter("avg", ["a", "b"], weights=[1, 0])
    avg, a = _params(model, "avg"), _params(model, "a")
    assert avg.keys() == a.keys()
    # 1 * a + 0 * b: another computation than a itself (exact in IEEE arithmetic, but not the same ops).
    for key, value in a.items():
        assert_close(avg[key], value, msg=key)
    assert_close(_output(model, "avg", inputs), _output(model, "a", inputs))


@pytest.mark.parametrize("config", ["lora", "ia3", "dora", "vera", "seq_bn"])
def test_linear_is_the_weighted_sum_of_every_tensor(config):
    model = _model(config)
    model.average_adapter("avg", ["a", "b"], weights=[3, 1])  # normalized to 0.75 / 0.25
    avg, a, b = _params(model, "avg"), _params(model, "a"), _params(model, "b")
    for key in a:
        assert_close(avg[key], 0.75 * a[key] + 0.25 * b[key], msg=key)


def test_weights_default_equal_and_normalize_off_and_dict_form():
    model = _model("lora", names=("a", "b", "c"))
    a, b, c = (_params(model, n) for n in "abc")
    key = next(k for k in a if k.endswith("lora_B"))
    model.average_adapter("eq", ["a", "b", "c"])
    assert_close(_params(model, "eq")[key], (a[key] + b[key] + c[key]) / 3)
    model.average_adapter("raw", ["a", "b"], weights=[2.0, -1.0], normalize_weights=False)
    assert_close(_params(model, "raw")[key], 2 * a[key] - b[key])
    model.average_adapter("dict", {"a": 1.0, "c": 3.0})
    assert_close(_params(model, "dict")[key], 0.25 * a[key] + 0.75 * c[key])


def test_negate_b_keeps_a_positive():
    model = _model("lora")
    model.average_adapter(
        "n", ["a", "b"], weights=[0.5, -0.5], combine_strategy="lora_linear_only_negate_b", normalize_weights=False
    )
    avg, a, b = _params(model, "n"), _params(model, "a"), _params(model, "b")
    for key in a:
        sign = -1.0 if key.endswith("lora_B") else 1.0
        assert_close(avg[key], 0.5 * a[key] + sign * 0.5 * b[key])


@pytest.mark.parametrize("config", ["lora[r=4,alpha=12]", "lora[r=2,intermediate_lora=True,output_lora=True]"])
def test_svd_at_full_rank_reproduces_the_weighted_delta_w(config):
    model = _model(config)
    model.average_adapter("s", ["a", "b"], weights=[0.3, 0.7], combine_strategy="lora_delta_w_svd", svd_rank=32)
    assert model.adapters_state.configs["s"].r == 32
    for (layer, place), p in model.adapters_state.method_data["lora"].items():
        expected = 0.3 * p.loras["a"].delta_weight() + 0.7 * p.loras["b"].delta_weight()
        assert_close(p.loras["s"].delta_weight(), expected, msg=f"{layer} {place}")


def test_svd_truncates_to_the_best_low_rank_approximation():
    model = _model("lora[r=4]")
    model.average_adapter("s", ["a", "b"], combine_strategy="lora_delta_w_svd", svd_rank=3)
    place = model.adapters_state.method_data["lora"][(0, "q")]
    summed = 0.5 * place.loras["a"].delta_weight() + 0.5 * place.loras["b"].delta_weight()
    u, s, vh = torch.linalg.svd(summed.double())
    best = (u[:, :3] * s[:3]) @ vh[:3]
    got = place.loras["s"].delta_weight()
    assert torch.linalg.matrix_rank(got) == 3
    assert_close(got, best.float())  # (got is float32: compared at float32's precision)


def test_averaged_adapter_saves_loads_and_merges(tmp_path, inputs):
    model = _model("dora")
    model.average_adapter("avg", ["a", "b"], weights=[0.4, 0.6], set_active=True)
    assert model.active_adapters == adapters.Stack("avg")
    expected = _output(model, "avg", inputs)
    model.save_adapter(tmp_path, "avg")
    other = tiny_bert()
    adapters.init(other)
    other.load_adapter(tmp_path, set_active=True)
    with torch.no_grad():
        # The same base weights and the adapter's tensors saved and loaded back: the same computation.
        assert torch.equal(other(**inputs).last_hidden_state, expected)
    model.merge_adapter("avg")
    with torch.no_grad():
        assert_close(model(**inputs).last_hidden_state, expected)


def test_overwrite_ok_may_replace_one_of_the_sources():
    model = _model("lora")
    a, b = _params(model, "a"), _params(model, "b")
    with pytest.raises(AdapterNameError, match="exists already"):
        model.average_adapter("a", ["a", "b"])
    model.average_adapter("a", ["a", "b"], overwrite_ok=True)
    for key, value in _params(model, "a").items():
        assert_close(value, 0.5 * a[key] + 0.5 * b[key])
    assert list(model.adapters_state.configs) == ["b", "a"]


@pytest.mark.parametrize(
    "configs,kwargs,match",
    [
        (("lora", "lora[r=4]"), {}, r"differ in \['r'\]"),
        (("lora", "ia3"), {}, "differ in"),
        (("ia3", "ia3"), {"combine_strategy": "lora_delta_w_svd", "svd_rank": 1}, "plain LoRA adapters only"),
        (("vera", "vera"), {"combine_strategy": "lora_linear_only_negate_b"}, "plain LoRA adapters only"),
        (("lora", "lora"), {"combine_strategy": "lora_delta_w_svd"}, "svd_rank >= 1"),
        (("lora", "lora"), {"svd_rank": 4}, r"svd_rank applies only to combine_strategy in \['lora_delta_w_svd'"),
        (("lora", "lora"), {"combine_strategy": "slerp"}, "Unknown combine_strategy"),
        (("lora", "lora"), {"weights": [1.0]}, "1 weights for 2 adapters"),
        (("lora", "lora"), {"weights": [1.0, -1.0]}, "sum to 0"),
    ],
)
def test_invalid_requests_raise_and_change_nothing(configs, kwargs, match):
    model = tiny_bert()
    adapters.init(model)
    for name, config in zip("ab", configs, strict=True):
        model.add_adapter(name, config)
    keys = set(model.state_dict())
    with pytest.raises(AdapterConfigError, match=match):
        model.average_adapter("avg", ["a", "b"], **kwargs)
    assert set(model.state_dict()) == keys and list(model.adapters_state.configs) == ["a", "b"]


def test_dropout_and_init_weights_may_differ():
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", "lora[dropout=0.1]")
    model.add_adapter("b", "lora[init_weights='bert']")
    model.average_adapter("avg", ["a", "b"])
    assert model.adapters_state.configs["avg"].dropout == 0.1
