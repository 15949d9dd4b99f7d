"""Loading an adapter folder is bounded by its files, not by what its config claims.

A 500-byte ``adapter_config.json`` saying ``r=10**9`` used to make ``load_adapter`` allocate
terabytes before it compared anything with the weights file. Now the adapter is first built on
PyTorch's ``meta`` device (shapes, no memory), its shapes are compared with the file's, and only
a match is allocated. ``add_adapter`` refuses a config whose parameter count is out of all
proportion to the model. Weights that are NaN or infinite are refused, weights of another dtype
are cast with a warning (or refused where the cast would overflow), and a prompt-tuning adapter
initialised from text loads without the tokenizer (its prompt is in the file).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import adapters
from adapters import AdapterConfigError, AdapterError, AdapterLoadError, LoRAConfig, PromptTuningConfig
from adapters.files import format as fmt
from adapters.testing import randomize_adapter
from adapters.testing.conformance import method_cases


class LargestAllocation(TorchDispatchMode):
    """Records the largest tensor storage (in bytes) created on a real device while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.device.type != "meta":
                self.largest = max(self.largest, leaf.untyped_storage().nbytes())
        return out


def saved(folder: Path, config="lora", model=None, name: str = "a") -> Path:
    if model is None:
        model = tiny_bert()
        adapters.init(model)
    model.add_adapter(name, config)
    randomize_adapter(model, name, std=0.3)
    model.save_adapter(folder, name)
    return folder


def edit_config(folder: Path, **changes) -> None:
    path = folder / fmt.ADAPTER_CONFIG
    data = json.loads(path.read_text())
    data["config"].update(changes)
    path.write_text(json.dumps(data))


def edit_weights(folder: Path, change) -> None:
    """Rewrite the weights file (and drop the integrity record, as a file of the reference library has none)."""
    tensors = load_file(folder / fmt.ADAPTER_WEIGHTS)
    change(tensors)
    save_file(tensors, folder / fmt.ADAPTER_WEIGHTS)
    path = folder / fmt.ADAPTER_CONFIG
    data = json.loads(path.read_text())
    data.pop("integrity", None)
    path.write_text(json.dumps(data))


def fresh() -> torch.nn.Module:
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("keep", "seq_bn", set_active=True)
    return model


def structure(model: torch.nn.Module):
    return (
        [n for n, _ in model.named_modules()],
        {k: v.clone() for k, v in model.state_dict().items()},
        list(model.adapters_state.configs),
        model.active_adapters,
    )


def assert_unchanged(model: torch.nn.Module, before) -> None:
    after = structure(model)
    assert after[0] == before[0]
    assert after[1].keys() == before[1].keys() and all(torch.equal(after[1][k], v) for k, v in before[1].items())
    assert after[2:] == before[2:]


def refused(model: torch.nn.Module, folder: Path, error=AdapterLoadError, match: str | None = None, **kwargs):
    before = structure(model)
    with pytest.raises(error, match=match) as info:
        model.load_adapter(folder, **kwargs)
    assert_unchanged(model, before)
    return info.value


# -- sizes in the config against the weights file ---------------------------------------------------
@pytest.mark.parametrize(
    ("config", "field", "value"),
    [
        ("lora", "r", 10**5),
        ("seq_bn", "reduction_factor", 1e-4),
        ("prefix_tuning", "bottleneck_size", 10**5),
        ("prefix_tuning", "prefix_length", 10**5),
        ("prompt_tuning", "prompt_length", 10**5),
        ("noreft", "r", 10**5),
    ],
)
def test_config_sizes_are_checked_against_the_file_before_allocating(tmp_path, config, field, value):
    # Found: the loader built the adapter at the config's size, then compared with the file
    # (r=10**6 took 1 GB; r=10**9 asks for 128 GB to 4 TB). Now nothing of that size is allocated.
    edit_config(saved(tmp_path, config), **{field: value})
    model = fresh()
    with LargestAllocation() as probe:
        error = refused(model, tmp_path, match="has shape")
    assert probe.largest < 1 << 20, f"allocated {probe.largest} bytes before refusing"
    assert f"{field}=" in str(error)


@pytest.mark.parametrize(
    ("config", "field", "value"),
    [
        ("lora", "r", 10**9),
        ("prefix_tuning", "bottleneck_size", 10**9),
        ("prefix_tuning", "prefix_length", 10**9),
        ("prompt_tuning", "prompt_length", 2**31 - 1),
        ("seq_bn", "reduction_factor", 1e-6),
    ],
)
def test_hostile_sizes_are_refused_without_allocating(tmp_path, config, field, value):
    edit_config(saved(tmp_path, config), **{field: value})
    model = fresh()
    with LargestAllocation() as probe:
        refused(model, tmp_path)
    assert probe.largest < 1 << 20


def test_legacy_pickles_are_checked_before_allocating_too(tmp_path):
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", "lora")
    model.save_adapter(tmp_path, "a", use_safetensors=False)
    edit_config(tmp_path, r=10**5)
    with LargestAllocation() as probe:
        refused(fresh(), tmp_path, match="has shape")
    assert probe.largest < 1 << 20


def test_add_adapter_refuses_a_config_out_of_proportion_to_the_model(monkeypatch):
    from adapters.model import dry_run

    # The floor keeps small models from refusing ordinary configs; without it the cap is 10x the model.
    monkeypatch.setattr(dry_run, "PARAMETER_FLOOR", 0)
    model = fresh()
    before = structure(model)
    with LargestAllocation() as probe:
        with pytest.raises(AdapterConfigError, match=r"r=100000\b.*parameters"):
            model.add_adapter("big", LoRAConfig(r=100_000))
    assert probe.largest < 1 << 20
    assert_unchanged(model, before)
    model.add_adapter("fine", LoRAConfig(r=8))


def test_the_parameter_cap_has_a_floor_for_small_models():
    from adapters.model import dry_run

    assert dry_run.PARAMETER_FLOOR >= 1 << 24 and dry_run.PARAMETER_FACTOR >= 10
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("mam", "mam")  # prefix tuning with an 800-wide MLP: several times the tiny model
    with pytest.raises(AdapterConfigError, match="r=1000000000"):
        model.add_adapter("huge", LoRAConfig(r=10**9))


# -- values in the config -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "changes", "field"),
    [
        ("seq_bn", {"reduction_factor": 0}, "reduction_factor"),  # found: ZeroDivisionError
        ("lora", {"r": 4.5}, "r"),  # found: TypeError from torch.empty
        ("par_bn", {"scaling": float("inf")}, "scaling"),  # found: loaded, every output inf
        ("lora", {"dropout": float("nan")}, "dropout"),
        ("lora", {"alpha": "8"}, "alpha"),
        ("prefix_tuning", {"non_linearity": "sine"}, "non_linearity"),
    ],
)
def test_invalid_config_values_in_a_folder_are_refused(tmp_path, config, changes, field):
    edit_config(saved(tmp_path, config), **changes)
    error = refused(fresh(), tmp_path)
    assert field in str(error) and isinstance(error.__cause__, AdapterConfigError)


def test_deeply_nested_config_json_is_refused(tmp_path):
    # Found: RecursionError from json.
    saved(tmp_path)
    (tmp_path / fmt.ADAPTER_CONFIG).write_text('{"config": ' + "[" * 100_000 + "]" * 100_000 + "}")
    refused(fresh(), tmp_path, match="nested")


def test_config_file_over_the_size_limit_is_refused(tmp_path):
    saved(tmp_path)
    data = json.loads((tmp_path / fmt.ADAPTER_CONFIG).read_text())
    data["padding"] = "x" * (1 << 20)
    (tmp_path / fmt.ADAPTER_CONFIG).write_text(json.dumps(data))
    refused(fresh(), tmp_path, match="MiB")


# -- values in the weights file -----------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, bad):
    saved(tmp_path)
    key = "encoder.layer.1.attention.self.value.loras.a.lora_B"

    def poison(tensors):
        tensors[key][0, 0] = bad

    edit_weights(tmp_path, poison)
    refused(fresh(), tmp_path, match=rf"{key}.*(NaN|infinite)")


def test_weights_of_another_dtype_are_cast_with_a_warning(tmp_path):
    saved(tmp_path)
    expected = load_file(tmp_path / fmt.ADAPTER_WEIGHTS)
    edit_weights(tmp_path, lambda t: t.update({k: v.half() for k, v in t.items()}))
    model = fresh()
    with pytest.warns(UserWarning, match=r"float16.*float32"):
        model.load_adapter(tmp_path)
    state = model.state_dict()
    for key, value in expected.items():
        assert torch.equal(state[key], value.half().float())


def test_a_cast_that_would_overflow_is_refused(tmp_path):
    saved(tmp_path)
    key = "encoder.layer.0.attention.self.query.loras.a.lora_A"
    edit_weights(tmp_path, lambda t: t[key].__setitem__((0, 0), 1e6))
    model = fresh().half()
    refused(model, tmp_path, match=rf"{key}.*float16")


def test_integer_weights_are_refused(tmp_path):
    saved(tmp_path)
    key = "encoder.layer.0.attention.self.query.loras.a.lora_A"
    edit_weights(tmp_path, lambda t: t.update({key: t[key].long()}))
    refused(fresh(), tmp_path, match=rf"{key}.*int64")


# -- prompt tuning from text ----------------------------------------------------------------------------
def test_prompt_initialised_from_text_loads_without_a_tokenizer(tmp_path, monkeypatch):
    # Found: load_adapter asked for the tokenizer, although the prompt's weights are in the file.
    from adapters.methods.prompt_tuning import method as prompt_method

    config = PromptTuningConfig(prompt_length=3, prompt_init="from_string", prompt_init_text="hello")
    source = tiny_bert()
    adapters.init(source)
    with monkeypatch.context() as patch:  # stands in for the tokenizer of a real checkpoint
        patch.setattr(prompt_method, "prompt_from_text", lambda c, m, e: e.weight[[2, 5, 6]].detach().clone())
        saved(tmp_path, config, model=source)
    expected = load_file(tmp_path / fmt.ADAPTER_WEIGHTS)
    model = tiny_bert()
    adapters.init(model)
    assert not getattr(model.config, "tokenizer_name_or_path", None) and not model.config.name_or_path
    model.load_adapter(tmp_path)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    # A new adapter from text still needs the tokenizer.
    with pytest.raises(AdapterConfigError, match="tokenizer"):
        model.add_adapter("b", config)


# -- property-based: mutated configs of saved folders --------------------------------------------------
SIZE_FIELDS = {"r", "reduction_factor", "bottleneck_size", "prefix_length", "prompt_length", "phm_dim", "phm_rank"}
SOURCES = ["seq_bn", "par_bn", "lora", "ia3", "prefix_tuning", "prompt_tuning", "loreft", "compacter++"]
MUTATIONS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-2, max_value=70),
    st.sampled_from([2**31 - 1, 2**31, 10**9, 10**30, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 2.0, 8.0, 1e-9]),
    st.sampled_from(["relu", "tanh", "all", "bert", "learned", "nice", "prefix", "x", ""]),
    st.lists(st.integers(min_value=-1, max_value=3), max_size=3),
    st.dictionaries(st.sampled_from(["0", "1", "default", "x"]), st.integers(-1, 16), max_size=2),
)
SIZES = st.one_of(st.integers(min_value=1, max_value=64), st.sampled_from([10**5, 10**9, 2**31 - 1]), MUTATIONS)
_FOLDERS: dict[str, Path] = {}


def _saved_source(config: str, root: Path) -> Path:
    if config not in _FOLDERS:
        folder = root / config.replace("+", "p")
        model = tiny_bert()
        adapters.init(model)
        model.add_adapter("a", config if config != "compacter++" else "compacter++[reduction_factor=8]")
        randomize_adapter(model, "a", std=0.3)
        model.save_adapter(folder, "a")
        _FOLDERS[config] = folder
    return _FOLDERS[config]


@pytest.fixture(scope="module")
def sources_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sources")


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_mutated_configs_load_or_raise_a_library_error_and_leave_the_model_unchanged(data, sources_root, tmp_path):
    source = _saved_source(data.draw(st.sampled_from(SOURCES)), sources_root)
    config = json.loads((source / fmt.ADAPTER_CONFIG).read_text())
    fields = sorted(k for k in config["config"] if k != "architecture")
    # Size fields half of the time: those are what the trial build compares with the file.
    sizes = [f for f in fields if f in SIZE_FIELDS] or fields
    chosen = data.draw(st.lists(st.one_of(st.sampled_from(sizes), st.sampled_from(fields)), max_size=3))
    changes = {field: data.draw(SIZES if field in SIZE_FIELDS else MUTATIONS) for field in chosen}
    folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    (folder / fmt.ADAPTER_WEIGHTS).write_bytes((source / fmt.ADAPTER_WEIGHTS).read_bytes())
    config["config"].update(changes)
    (folder / fmt.ADAPTER_CONFIG).write_text(json.dumps(config))
    model = _loading_model()
    before = structure(model)
    try:
        name = model.load_adapter(folder, load_as="loaded")
    except AdapterError:
        assert_unchanged(model, before)
        return
    model.delete_adapter(name)


_MODEL: list[torch.nn.Module] = []


def _loading_model() -> torch.nn.Module:
    if not _MODEL:
        _MODEL.append(fresh())
    return _MODEL[0]


# -- the trial build itself ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", method_cases())
def test_every_builtin_method_runs_the_trial_build(case, caplog):
    # A method that cannot be built on meta would be built unchecked; the built-in ones all can.
    _, config = case
    model = tiny_bert()
    adapters.init(model)
    with caplog.at_level(logging.DEBUG, logger="adapters.model.dry_run"):
        model.add_adapter("a", config)
    assert not caplog.records


def test_the_trial_build_draws_no_random_numbers(monkeypatch):
    from adapters.model import dry_run

    def build_all(model):
        torch.manual_seed(1)
        for name in ("lora", "seq_bn", "prefix_tuning", "loreft", "vera", "compacter++[reduction_factor=8]"):
            model.add_adapter(name.split("[")[0], name)
        return model.state_dict(), torch.rand(3)

    model = tiny_bert()
    adapters.init(model)
    with_trial = build_all(model)
    monkeypatch.setattr(dry_run, "trial", lambda *args, **kwargs: None)
    model = tiny_bert()
    adapters.init(model)
    without_trial = build_all(model)
    assert with_trial[0].keys() == without_trial[0].keys()
    assert all(torch.equal(v, without_trial[0][k]) for k, v in with_trial[0].items())
    assert torch.equal(with_trial[1], without_trial[1])


def test_a_method_that_cannot_run_on_meta_is_built_without_the_trial(monkeypatch, caplog):
    from adapters.model import dry_run

    class NoMeta(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            raise NotImplementedError("this method needs real tensors")

    monkeypatch.setattr(dry_run, "_OnMeta", NoMeta)
    model = tiny_bert()
    adapters.init(model)
    with caplog.at_level(logging.DEBUG, logger="adapters.model.dry_run"):
        model.add_adapter("a", "lora")
    assert "without the trial" in caplog.text
    assert all(p.device.type == "cpu" for _, p in model.adapters_state.parameters_of("a"))
