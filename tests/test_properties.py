"""Property-based tests: random names, corrupted folders and random compositions.

Each suite draws many inputs (a fixed, derandomized budget: the same examples on every run, a
few seconds in all) and checks what must hold for every one of them: the call either works, and
then does what it says, or raises an error of the library (:class:`adapters.AdapterError`); never
another exception type, and a refused call leaves the model as it was (weights, modules, adapters,
active setup, outputs).

- names: any string (separators, ``..``, control characters, very long, empty) or non-string
  given to ``add_adapter``, ``load_adapter(load_as=...)``, ``add_adapter_fusion`` and
  ``add_classification_head``; what is accepted saves into a folder strictly inside the target
  given and nowhere else, and loads back.
- folders: saved adapters of several methods, damaged at random (truncated, bytes flipped,
  files deleted, swapped or renamed, the config replaced by random JSON or a directory) and
  loaded; a load either raises AdapterLoadError/AdapterConfigError or loads what the files hold:
  the original adapter (same weights and outputs) when its weights file is intact, and never a
  weights file other than the one the config's integrity record names. (Without the record, as
  the reference library saves, changed weights that still parse load as they are: no check can
  tell them from trained ones.)
- compositions: random nested blocks over adapters of several methods (some names unknown);
  an accepted setup runs a forward pass with the expected batch size, a refused one keeps the
  previous setup and its outputs.
"""

from __future__ import annotations

import json
import operator
import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from conftest import tiny_bert
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import adapters
from adapters import (
    AdapterConfigError,
    AdapterError,
    AdapterLoadError,
    AdapterNameError,
    AutoAdapterModel,
    CompositionError,
    ConfigUnion,
    LoRAConfig,
    SeqBnConfig,
)
from adapters.composition import (
    AdapterCompositionBlock,
    Average,
    BatchSplit,
    Fuse,
    Parallel,
    Split,
    Stack,
    validate_nesting,
)
from adapters.files import format as fmt
from adapters.files import integrity
from adapters.io.adapter_io import parse_saved_config
from adapters.methods.fusion.api import fusion_names
from adapters.testing import assert_close, randomize_adapter

# Fixed budgets: the same examples on every run (derandomize), nothing stored between runs.
BUDGET = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


def structure(model: torch.nn.Module) -> tuple:
    """What a refused call must leave as it was: modules, weights, adapters, active setup, heads, fusions."""
    return (
        [n for n, _ in model.named_modules()],
        {k: v.clone() for k, v in model.state_dict().items()},
        list(model.adapters_state.configs),
        model.active_adapters,
        list(getattr(model, "heads", {})),
        getattr(model, "active_head", None),
        fusion_names(model.adapters_state),
    )


def assert_unchanged(model: torch.nn.Module, before: tuple) -> None:
    after = structure(model)
    assert after[0] == before[0]
    assert after[1].keys() == before[1].keys()
    assert all(torch.equal(after[1][k], v) for k, v in before[1].items())
    assert after[2:] == before[2:]


@pytest.fixture(scope="module")
def unsynced():
    """Saves without fsync: durability is test_atomic_saves' business, and here the syncs of a few
    hundred saves would take most of the time budget (seconds on a loaded disk)."""
    from adapters.files import atomic

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(atomic, "_sync_files", lambda folder: None)
        patch.setattr(atomic, "_sync_folder", lambda folder: None)
        yield


def all_files(root: Path) -> dict[str, bytes | None]:
    """Every path below ``root`` with its content (None for folders)."""
    return {
        p.relative_to(root).as_posix(): (None if p.is_dir() or p.is_symlink() else p.read_bytes())
        for p in root.rglob("*")
    }


# == 1. random names ====================================================================================
# Names that were attacks or edge cases once: paths, dots, drives, controls, invisible characters,
# module attribute names, the loader's staging names, and lengths around the limit (128 bytes).
SPECIAL_NAMES = [
    *["", ".", "..", "...", "a/b", "/abs", "a\\b", "C:", "C:x", "\\\\srv\\x", "~", "~root", "$HOME", "-rf"],
    *["a b", " a", "a\t", "a\n", "\x00", "a\x7f", "\u200b", "\u202e", "\ufeff", "\u2028", "\u00a0", "\ud800"],
    *["a,b", ",", "a:b", "*", "?", "<>", "|", "%2e%2e", "\uff0e\uff0e", "con", "NUL", "aux", "COM1"],
    *["forward", "training", "heads", "adapters", "loras", "state_dict", "_modules", "__class__", "keys"],
    *["loading_0123abcd", "f1", "f2", "f1,f2"],
    *["x" * 128, "x" * 129, "\u00fc" * 64, "\u00fc" * 65, "\U0001f642" * 32, "\U0001f642" * 33],
]
NON_STRINGS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.binary(max_size=4),
    st.lists(st.text(max_size=2), max_size=2),
    st.tuples(st.text(max_size=2)),
    st.builds(Path, st.text(max_size=3)),
    st.just(object()),
)
# Printable names without '.', '/', '\\' or whitespace: most of them valid (the others too long).
PRINTABLE = st.characters(categories=["L", "M", "N", "P", "S"], exclude_characters="./\\")
NAMES = st.one_of(
    # (distinct strategies: one_of draws equal ones as one branch)
    *[st.text(PRINTABLE, min_size=1, max_size=size) for size in (8, 12, 16, 20)],
    *[st.text(PRINTABLE, min_size=size, max_size=size + 40) for size in (30, 40)],  # around 128 bytes of UTF-8
    st.text(max_size=8),  # any unicode; hypothesis favours separators, controls, surrogates' neighbours
    st.text(st.characters(codec="ascii"), min_size=1, max_size=8),
    st.text(st.characters(categories=["Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn"]), min_size=1, max_size=3),
    st.sampled_from(SPECIAL_NAMES),
    st.builds(operator.mul, st.characters(), st.integers(min_value=60, max_value=300)),  # very long
    NON_STRINGS,
)


@pytest.fixture(scope="module")
def names_model(tmp_path_factory, unsynced) -> tuple[torch.nn.Module, Path]:
    """An AdapterModel with adapters f1..f3, a fusion of f2 and f3, a head h0; and a saved adapter ``src``."""
    model = AutoAdapterModel.from_config(tiny_bert().config).eval()
    for seed, name in enumerate(("src", "f1", "f2", "f3")):
        model.add_adapter(name, "seq_bn")
        randomize_adapter(model, name, std=0.3, seed=seed)
    model.add_adapter_fusion(["f2", "f3"])
    model.add_classification_head("h0")
    source = tmp_path_factory.mktemp("names") / "src"
    model.save_adapter(source, "src")
    model.delete_adapter("src")
    return model, source


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())


def _fusions(model: torch.nn.Module) -> list[str]:
    return fusion_names(model.adapters_state)


def _saved_inside(sandbox: Path, target: Path, before: dict, saved: list[str]) -> None:
    """Only ``target/<name>/...`` for the ``saved`` names was written; nothing else below ``sandbox`` changed."""
    after = all_files(sandbox)
    prefix = target.relative_to(sandbox).as_posix() + "/"
    for path, content in before.items():
        if not (path + "/").startswith(prefix):
            assert after.get(path, "missing") == content, f"{path} changed"
    for path in set(after) - set(before):
        assert path.startswith(prefix), f"{path} was written outside {target}"
    # One folder per saved item, named as it, and nothing else (no scratch folders left over).
    assert sorted(os.listdir(target)) == sorted(saved)
    assert all(target.resolve() in (target / name).resolve().parents for name in saved)


@settings(max_examples=120, **BUDGET)
@given(
    name=NAMES,
    api=st.sampled_from(["add_adapter", "load_as", "fusion_name", "fusion_children", "head"]),
)
def test_random_names_work_or_raise_a_name_error(names_model, name, api):
    model, source = names_model
    before = structure(model)
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Path(tmp)
        # Two levels down, so that a name climbing out of the target (``..``) lands in the sandbox.
        target = sandbox / "out" / "target"
        target.mkdir(parents=True)
        (sandbox / "out" / "sibling.txt").write_text("keep")
        listing = all_files(sandbox)
        try:
            if api == "add_adapter":
                model.add_adapter(name, "seq_bn")
                added = name
            elif api == "load_as":
                added = model.load_adapter(source, load_as=name)
                # A falsy load_as means "the saved name", as in the reference library.
                assert added == (name or "src")
            elif api == "fusion_name":
                model.add_adapter_fusion(["f1", "f2"], name=name)
            elif api == "fusion_children":
                model.add_adapter_fusion(name if isinstance(name, str) else [name, "f2"])
            else:
                model.add_classification_head(name)
                added = name
        except AdapterError as error:
            event(f"{api}: {type(error).__name__}")
            if api != "fusion_children":  # unknown children may also be a CompositionError
                assert isinstance(error, AdapterNameError), error
            assert_unchanged(model, before)
            return
        if api.startswith("fusion"):
            (added,) = set(_fusions(model)) - set(before[6])
            if api == "fusion_name":
                assert added == (name or "f1,f2")  # likewise: no name means the joined adapter names
        assert isinstance(added, str)
        event(f"{api}: saved and loaded")
        try:
            _save_and_reload(model, api, added, sandbox, target, listing)
        finally:
            _remove(model, api, added)
    assert_unchanged(model, before)


def _save_and_reload(model, api: str, name: str, sandbox: Path, target: Path, listing: dict) -> None:
    with_it = _state(model)
    if api in ("add_adapter", "load_as"):
        model.save_all_adapters(target)
        _saved_inside(sandbox, target, listing, list(model.adapters_state.configs))
        model.delete_adapter(name)
        assert model.load_adapter(target / name) == name
    elif api == "head":
        model.save_all_heads(target)
        _saved_inside(sandbox, target, listing, list(model.heads))
        model.delete_head(name)
        assert model.load_head(target / name) == name
    else:
        model.save_all_adapter_fusions(target)
        _saved_inside(sandbox, target, listing, _fusions(model))
        model.delete_adapter_fusion(name)
        assert model.load_adapter_fusion(target / name) == name
    assert _same_state(_state(model), with_it)


def _remove(model, api: str, name: str) -> None:
    if api in ("add_adapter", "load_as"):
        model.delete_adapter(name)
    elif api == "head":
        model.delete_head(name)
    else:
        model.delete_adapter_fusion(name)
    model.active_head = "h0"


# == 2. random folder corruption ==========================================================================
SOURCES = {
    "seq_bn": "seq_bn",
    "lora": "lora",
    "prefix_tuning": "prefix_tuning",
    "prompt_tuning": "prompt_tuning",
    "union": ConfigUnion(LoRAConfig(r=4), SeqBnConfig(reduction_factor=8)),
}
BATCH = {
    "input_ids": torch.tensor([[2, 5, 6, 3, 9], [4, 8, 7, 3, 1]]),
    "attention_mask": torch.tensor([[1] * 5, [1] * 4 + [0]]),
}


class Sources(NamedTuple):
    folders: dict[str, Path]  # each adapter of SOURCES saved intact
    model: torch.nn.Module  # the model that loads them (with an active adapter "keep" of its own)
    expected: dict[str, tuple[dict[str, torch.Tensor], torch.Tensor]]  # weights and outputs, loaded intact
    scratch: Path


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**BATCH).last_hidden_state


@pytest.fixture(scope="module")
def sources(tmp_path_factory, unsynced) -> Sources:
    root = tmp_path_factory.mktemp("corruption")
    saver = tiny_bert()
    adapters.init(saver)
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("keep", "seq_bn", set_active=True)
    randomize_adapter(model, "keep", std=0.3, seed=9)
    folders, expected = {}, {}
    for seed, (name, config) in enumerate(SOURCES.items()):
        saver.add_adapter(name, config)
        randomize_adapter(saver, name, std=0.3, seed=seed)
        saver.save_adapter(root / name, name)
        folders[name] = root / name
        model.load_adapter(root / name, load_as="loaded", set_active=True)
        weights = {k: v.detach().clone() for k, v in model.adapters_state.parameters_of("loaded")}
        expected[name] = (weights, _outputs(model))
        model.delete_adapter("loaded")
    model.set_active_adapters("keep")
    return Sources(folders, model, expected, root)


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63),
        st.floats(),
        st.text(max_size=6),
        st.sampled_from(["lora", "bottleneck", "union", "prefix_tuning", "bert", "adapters.1.0.0", "a"]),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8,
)
CONFIG_KEYS = ["config", "hidden_size", "model_class", "model_name", "model_type", "name", "version", "integrity"]


@st.composite
def corruptions(draw: st.DrawFn) -> list[tuple]:
    """One to three damages, each a tuple ``(kind, file, arguments...)``."""
    # The weights file twice as often: damage to the config mostly stops at the JSON parser.
    files = st.sampled_from([fmt.ADAPTER_CONFIG, fmt.ADAPTER_WEIGHTS, fmt.ADAPTER_WEIGHTS])
    flips = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4)
    one = st.one_of(
        st.tuples(st.just("truncate"), files, st.floats(min_value=0, max_value=1, exclude_max=True)),
        st.tuples(st.just("flip"), files, flips),
        # in the safetensors header (names, dtypes, shapes, offsets) or in the tensors' bytes
        st.tuples(st.sampled_from(["flip_header", "flip_data"]), st.just(fmt.ADAPTER_WEIGHTS), flips),
        st.tuples(st.sampled_from(["delete", "empty", "directory"]), files),
        st.tuples(st.just("json"), st.just(fmt.ADAPTER_CONFIG), JSON_VALUES),
        st.tuples(st.just("json_field"), st.just(fmt.ADAPTER_CONFIG), st.sampled_from(CONFIG_KEYS), JSON_VALUES),
        st.tuples(st.just("swap"), files, st.sampled_from(sorted(SOURCES))),  # the file of another adapter
        st.tuples(st.just("legacy_name"), st.just(fmt.ADAPTER_WEIGHTS)),
        st.tuples(
            st.just("extra"),
            st.text(st.characters(codec="ascii", exclude_characters="/\x00"), min_size=1, max_size=8),
            st.binary(max_size=64),
        ),
        st.tuples(st.just("drop_integrity"), st.just(fmt.ADAPTER_CONFIG)),
    )
    return draw(st.lists(one, min_size=1, max_size=3))


def _header_end(data: bytes) -> int:
    """Where the tensors' bytes start in a safetensors file (8 bytes of header length, the JSON header)."""
    return min(len(data), 8 + int.from_bytes(data[:8], "little")) if len(data) >= 8 else len(data)


def _apply(folder: Path, corruption: tuple, folders: dict[str, Path]) -> None:
    kind, name, *args = corruption
    path = folder / name
    if kind == "extra":
        if name in (".", "..") or os.path.lexists(path):
            return
        path.write_bytes(args[0])
    elif not path.is_file():  # an earlier damage deleted the file or made it a folder
        return
    elif kind == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * args[0])])
    elif kind in ("flip", "flip_header", "flip_data"):
        data = bytearray(path.read_bytes())
        start, end = {
            "flip": (0, len(data)),
            "flip_header": (0, _header_end(data)),
            "flip_data": (_header_end(data), len(data)),
        }[kind]
        for where, xor in args[0]:
            if end > start:
                data[start + int((end - start) * where)] ^= xor
        path.write_bytes(bytes(data))
    elif kind == "delete":
        path.unlink()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.unlink()
        path.mkdir()
        (path / "x").write_text("{}")
    elif kind == "json":
        path.write_text(json.dumps(args[0]))
    elif kind in ("json_field", "drop_integrity"):
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            return
        if not isinstance(data, dict):
            return
        if kind == "json_field":
            data[args[0]] = args[1]
        else:
            data.pop("integrity", None)
        path.write_text(json.dumps(data))
    elif kind == "swap":
        path.write_bytes((folders[args[0]] / name).read_bytes())
    elif kind == "legacy_name":
        path.rename(folder / fmt.ADAPTER_WEIGHTS_LEGACY)


def _changes_meaning(original: dict, loaded: dict, folder: Path) -> bool:
    """Whether a config file that loaded gives another config than the original's.

    Such an edit (``"alpha": 8`` made ``9`` by a flipped byte) is a valid config of other outputs:
    the integrity record covers the weights file, not the config file, so no load can refuse it.
    """
    return parse_saved_config(loaded, folder).to_dict() != parse_saved_config(original, folder).to_dict()


@settings(max_examples=150, **BUDGET)
@given(kind=st.sampled_from(sorted(SOURCES)), unrecorded=st.booleans(), damages=corruptions())
def test_corrupted_folders_load_the_original_or_raise_a_load_error(sources, kind, unrecorded, damages):
    source, model = sources.folders[kind], sources.model
    weights, outputs = sources.expected[kind]
    with tempfile.TemporaryDirectory(dir=sources.scratch) as tmp:
        folder = Path(tmp) / kind
        shutil.copytree(source, folder)
        if unrecorded:  # as the reference library saves: no integrity record, so damaged weights get parsed
            damages = [("drop_integrity", fmt.ADAPTER_CONFIG), *damages]
        for damage in damages:
            _apply(folder, damage, sources.folders)
        _load_damaged(model, source, folder, weights, outputs, damages)


def _load_damaged(model, source: Path, folder: Path, weights: dict, outputs: torch.Tensor, damages: list) -> None:
    before = structure(model)
    kept = _outputs(model)
    try:
        name = model.load_adapter(folder, load_as="loaded")
    except AdapterError as error:
        event(f"refused: {type(error).__name__} {str(error).replace(str(folder), '<folder>')[:50]}")
        assert isinstance(error, (AdapterLoadError, AdapterConfigError)), error
        assert_unchanged(model, before)
        assert torch.equal(_outputs(model), kept)
        return
    try:
        loaded = {k: v.detach().clone() for k, v in model.adapters_state.parameters_of(name)}
        model.set_active_adapters(name)
        got = _outputs(model)
    finally:
        model.set_active_adapters("keep")
        model.delete_adapter(name)
    assert_unchanged(model, before)
    # What loaded is what the weights file holds, and the file the config's integrity record names
    # if it has one: without a record (as the reference library saves) no check can tell a flipped
    # bit in a weight from a trained one, or a config and weights swapped in together from another save.
    data = json.loads((folder / fmt.ADAPTER_CONFIG).read_text())
    weights_file = folder / fmt.ADAPTER_WEIGHTS
    if data.get("integrity") is not None:
        assert data["integrity"] == {fmt.ADAPTER_WEIGHTS: integrity.record(weights_file.read_bytes())}
    saved = data.get("name") or folder.name
    assert _same_state(loaded, {k.replace(f".{saved}.", ".loaded."): v for k, v in load_file(weights_file).items()})
    original = json.loads((source / fmt.ADAPTER_CONFIG).read_text())
    if weights_file.read_bytes() != (source / fmt.ADAPTER_WEIGHTS).read_bytes():
        event("loaded other weights: a folder without integrity record, or both files of another save")
    elif _changes_meaning(original, data, folder):
        event("loaded another valid config (edited, not corrupt)")
    else:
        event(f"loaded the original: {sorted({d[0] for d in damages})}")
        assert _same_state(loaded, weights)
        assert torch.equal(got, outputs)


# == 3. random compositions ===============================================================================
COMPOSED = {
    "s1": "seq_bn",
    "s2": "seq_bn",
    "d": "double_seq_bn",
    "d2": "double_seq_bn",
    "l": "lora",
    "i": "ia3",
    "p": "prefix_tuning",
    "pt": "prompt_tuning",
    "r": "loreft",
}
ROWS = 4


@pytest.fixture(scope="module")
def composed() -> torch.nn.Module:
    """A model with an adapter of each method in COMPOSED and the fusions s1,s2 and d,d2."""
    model = tiny_bert()
    adapters.init(model)
    for seed, (name, config) in enumerate(COMPOSED.items()):
        model.add_adapter(name, config)
        randomize_adapter(model, name, std=0.3, seed=seed)
    model.add_adapter_fusion(["s1", "s2"])
    model.add_adapter_fusion(["d", "d2"])
    return model


COMPOSED_INPUTS = {
    "input_ids": torch.randint(3, 100, (ROWS, 6), generator=torch.Generator().manual_seed(5)),
    "attention_mask": torch.ones(ROWS, 6, dtype=torch.long),
}
COMPOSED_INPUTS["attention_mask"][-1, -2:] = 0

KINDS = ["Stack", "Parallel", "Fuse", "Split", "BatchSplit", "Average"]
# What each block may hold (adapters.composition.rules.ALLOWED_NESTINGS) and which blocks each
# method supports: followed but for one in FAULT draws, so that most setups get past the rules to
# the methods and the forward pass, and the refusals come one at a time.
NESTABLE = {
    None: KINDS,
    "Stack": ["Fuse", "Split", "Parallel", "BatchSplit", "Average"],
    "Fuse": ["Stack"],
    "Split": ["Split", "Stack", "BatchSplit", "Average"],
    "Parallel": ["Stack", "BatchSplit", "Average"],
    "BatchSplit": ["Stack", "Split", "BatchSplit", "Average"],
    "Average": ["Stack", "Split", "BatchSplit"],
}
SUPPORTED = {
    "seq_bn": set(KINDS),
    "double_seq_bn": set(KINDS),
    "lora": {"Stack", "Split", "BatchSplit", "Parallel", "Average"},
    "ia3": {"Stack", "Split", "BatchSplit", "Parallel", "Average"},
    "prefix_tuning": {"Stack", "BatchSplit", "Parallel", "Average"},
    "prompt_tuning": {"Stack", "BatchSplit", "Parallel"},
    "loreft": {"Stack", "BatchSplit", "Parallel", "Average"},
}
# Two seq_bn and two LoRA-family adapters compose with each other most often (bottlenecks of other
# placements, and LoRA with (IA)^3 on one layer, are refused by rule): drawn more often.
LEAF_WEIGHTS = ["s1", "s2", "s1", "s2", "s1", "s2", "l", "l", "i", "d", "d2", "p", "pt", "r"]
FAULT = 12  # one draw in FAULT breaks a rule: a block where it may not be, a name that is unknown or unsupported
UNKNOWN = ["unknown", "", "S1"]
FUSIONS = [["s1", "s2"], ["d", "d2"], ["s2", "s1"], ["s1", "d"]]  # the last two have no fusion layer
JUNK = st.sampled_from([None, "2", "x", 1.5, True, {}, b"1", object()])
SIZES = st.one_of(
    st.integers(min_value=-1, max_value=ROWS + 1),
    st.lists(st.integers(min_value=-1, max_value=ROWS + 1), min_size=1, max_size=4),
    st.lists(st.one_of(st.integers(0, ROWS), JUNK), min_size=1, max_size=3),
    JUNK,
)
WEIGHTS = st.one_of(
    st.none(),
    st.none(),
    st.lists(st.floats(-2, 2), min_size=1, max_size=4),
    st.lists(st.sampled_from([0.0, 1.0, -1.0, 0.5, float("nan"), float("inf")]), min_size=1, max_size=3),
    st.lists(st.one_of(st.floats(-2, 2), JUNK), min_size=1, max_size=3),
    JUNK,
)


def _fitting(draw: st.DrawFn, n: int, total: int) -> list[int]:
    """``n`` non-negative sizes adding up to ``total``."""
    cuts = sorted(draw(st.lists(st.integers(0, total), min_size=n - 1, max_size=n - 1)))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]


def _fault(draw: st.DrawFn) -> bool:
    # (not integers(): hypothesis draws their bounds far more often than one in FAULT)
    return draw(st.sampled_from([False] * (FAULT - 1) + [True]))


def _sizes(draw: st.DrawFn, n: int, total: int):
    """Sizes that fit the input (``total`` rows or tokens) but for one in FAULT draws."""
    return draw(SIZES) if _fault(draw) else _fitting(draw, n, total)


def _block(kind: str, children: list, draw: st.DrawFn):
    if kind == "Split":
        return Split(*children, splits=_sizes(draw, len(children), COMPOSED_INPUTS["input_ids"].shape[1]))
    if kind == "BatchSplit":
        return BatchSplit(*children, batch_sizes=_sizes(draw, len(children), ROWS))
    if kind == "Average":
        return Average(*children, weights=draw(WEIGHTS))
    return {"Stack": Stack, "Parallel": Parallel, "Fuse": Fuse}[kind](*children)


@st.composite
def setups(draw: st.DrawFn, enclosing: tuple[str, ...] = ()):
    """A random setup: a name or a nested block, breaking the rules now and then (see FAULT)."""
    depth = len(enclosing)
    if enclosing and (depth >= 4 or draw(st.sampled_from([True] * depth + [False] * 2))):
        if _fault(draw):
            return draw(st.sampled_from([*UNKNOWN, *COMPOSED]))
        fits = [n for n in LEAF_WEIGHTS if set(enclosing) <= SUPPORTED[COMPOSED[n]]]
        return draw(st.sampled_from(fits)) if fits else "s1"
    parent = enclosing[-1] if enclosing else None
    kind = draw(st.sampled_from(KINDS if _fault(draw) else NESTABLE[parent]))
    if kind == "Fuse":
        children = draw(st.sampled_from(FUSIONS))
        if draw(st.booleans()):  # a child in a Stack of its own (with an adapter before it)
            children = [children[0], Stack(*draw(st.sampled_from([[], ["s1"], ["l"]])), children[1])]
    else:
        children = draw(st.lists(setups((*enclosing, kind)), min_size=1, max_size=3))
    try:
        return _block(kind, children, draw)
    except AdapterError:
        # A block refusing its own arguments (sizes of the wrong length, weights summing to 0) is
        # right to; a name takes its place.
        return draw(st.sampled_from(sorted(COMPOSED)))


@st.composite
def top_setups(draw: st.DrawFn):
    """Mostly blocks; now and then a plain name (a Stack of one), an unknown name or None (no adapters)."""
    if draw(st.sampled_from([False] * 5 + [True])):
        return draw(st.sampled_from([*COMPOSED, *UNKNOWN, None]))
    return draw(setups())


def _rows_out(setup) -> int:
    return ROWS * (setup.parallel_channels if hasattr(setup, "parallel_channels") else 1)


def _sized(setup) -> bool:
    """Whether ``setup`` has sizes that only a forward pass can check (a Split's or BatchSplit's)."""
    if isinstance(setup, (Split, BatchSplit)):
        return True
    return isinstance(setup, Stack | Parallel | Fuse | Average) and any(_sized(c) for c in setup)


def _names(setup) -> list[str]:
    return setup.flatten() if isinstance(setup, AdapterCompositionBlock) else [setup]


def _kinds(setup) -> str:
    """The block types in ``setup`` and its depth (for the statistics hypothesis reports)."""

    def walk(block, depth):
        if not isinstance(block, AdapterCompositionBlock):
            return set(), depth
        found = [walk(c, depth + 1) for c in block]
        return {type(block).__name__}.union(*(f for f, _ in found)), max(d for _, d in found)

    kinds, depth = walk(setup, 0)
    return f"depth {depth}, {len(kinds)} kinds" if kinds else "none"


def _run(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**COMPOSED_INPUTS).last_hidden_state


@settings(max_examples=200, **BUDGET)
@given(sequence=st.lists(top_setups(), min_size=1, max_size=3))
def test_random_compositions_run_or_are_refused_keeping_the_previous_setup(composed, sequence):
    model = composed
    model.set_active_adapters(Stack("s1", "l"))
    previous, previous_output = model.active_adapters, _run(model)
    # No setup, accepted or refused, changes a weight or a module (checked once per example: cheaper).
    before = structure(model)
    for setup in sequence:
        try:
            model.set_active_adapters(setup)
        except AdapterError as error:
            event(f"refused: {type(error).__name__}")
            assert model.active_adapters == previous
            assert torch.equal(_run(model), previous_output)
            continue
        try:
            output = _run(model)
        except AdapterError as error:
            event(f"forward refused: {type(error).__name__}")
            # Only sizes that must fit the input (checked when it comes) may refuse a forward pass;
            # the model then runs on under another setup as before.
            assert _sized(model.active_adapters)
            model.set_active_adapters(previous)
            assert torch.equal(_run(model), previous_output)
            continue
        assert output.shape[0] == _rows_out(model.active_adapters)
        assert torch.isfinite(output).all()
        event(f"ran: {_kinds(model.active_adapters)}")
        previous, previous_output = model.active_adapters, output
    model.set_active_adapters(before[3])
    assert_unchanged(model, before)


# -- what the suites found -----------------------------------------------------------------------------
@pytest.mark.parametrize("weights", [[float("nan")], [float("inf"), 1.0], [1.0, float("-inf")]])
def test_average_refuses_weights_that_are_not_finite(weights):
    # Found by the composition suite: Average['d', weights=[nan]] was activated and every output was NaN.
    children = ["a", "b"][: len(weights)]
    for normalize in (True, False):
        with pytest.raises(CompositionError, match="finite"):
            Average(*children, weights=weights, normalize_weights=normalize)


def test_average_refuses_weights_whose_sum_overflows():
    with pytest.raises(CompositionError, match="finite"):
        Average("a", "b", weights=[1e308, 1e308])  # the sum is inf: normalized, both weights would be 0
    assert Average("a", "b", weights=[1e308, 1e308], normalize_weights=False).weights == [1e308, 1e308]


@pytest.mark.parametrize("sizes", [None, object(), "2", 1.5, True, [True, 1], [1.5, 1], ["1", "1"], [None, 1], {1: 2}])
@pytest.mark.parametrize("block", [Split, BatchSplit])
def test_sizes_that_are_not_lists_of_ints_give_composition_errors(block, sizes):
    # Found by the composition suite: Split("a", "b", splits=None) raised TypeError from list(None).
    keyword = "splits" if block is Split else "batch_sizes"
    with pytest.raises(CompositionError, match=keyword):
        block("a", "b", **{keyword: sizes})


@pytest.mark.parametrize("weights", [3, object(), "12", b"1", [None, 1], ["x", 1], ["1", "1"], [True, False]])
def test_weights_that_are_not_lists_of_numbers_give_composition_errors(weights):
    # Found by the composition suite: Average("a", "b", weights=3) raised TypeError, weights=["x", 1] ValueError.
    with pytest.raises(CompositionError, match="weights"):
        Average("a", "b", weights=weights)


@pytest.mark.parametrize("saved", [True, 5, ["a"], {"a": 1}])
def test_a_saved_name_that_is_not_a_string_is_a_load_error(tmp_path, saved):
    # Found by the folder suite: {"name": true} in adapter_config.json, loaded with load_as=, raised
    # "TypeError: can only concatenate str (not "bool") to str" from the key mapping.
    model = tiny_bert()
    adapters.init(model)
    for name in ("a", "b"):
        model.add_adapter(name, "seq_bn")
    model.add_adapter_fusion(["a", "b"])
    model.save_adapter(tmp_path / "adapter", "a")
    model.save_adapter_fusion(tmp_path / "fusion", ["a", "b"])
    for folder, config in (("adapter", fmt.ADAPTER_CONFIG), ("fusion", fmt.FUSION_CONFIG)):
        path = tmp_path / folder / config
        path.write_text(json.dumps({**json.loads(path.read_text()), "name": saved}))
    before = structure(model)
    for load_as in (None, "loaded"):
        with pytest.raises(AdapterError, match="name"):
            model.load_adapter(tmp_path / "adapter", load_as=load_as)
        with pytest.raises(AdapterError, match="name"):
            model.load_adapter_fusion(tmp_path / "fusion", load_as=load_as)
        assert_unchanged(model, before)


# -- found by the composition suite, outside the composition rules ------------------------------------
@pytest.mark.parametrize(
    ("setup", "same_as"),
    [
        (Average("p"), "p"),
        (Stack("s1", Average("p")), Stack("s1", "p")),
        (Average("p", "l"), None),
        (Average("s1", "p"), None),
    ],
    ids=["alone", "alone-in-stack", "with-lora", "with-seq_bn"],
)
def test_average_over_prefix_tuning_with_a_child_adding_no_prefix(composed, setup, same_as):
    # Found: each of these was activated and the forward pass raised "max() arg is an empty sequence"
    # (ComposedPrefixes.average took a child's own prefix to be what its siblings did not share).
    model = composed
    model.set_active_adapters("p")
    alone = _run(model)
    if same_as is None:
        # Average sums prefixes position by position: a child adding none has nothing to sum (None: refused).
        with pytest.raises(CompositionError, match="adds no prefix"):
            model.set_active_adapters(setup)
        assert model.active_adapters == Stack("p")
        assert torch.equal(_run(model), alone)
        return
    model.set_active_adapters(setup)
    output = _run(model)
    model.set_active_adapters(same_as)
    assert_close(output, _run(model))  # the average of one child (its weight normalized to 1) is that child


@pytest.mark.parametrize(
    "setup",
    [Parallel("s1", "p"), Parallel("p", "s2"), Parallel(Stack("s1", "p"), "s2")],
    ids=["seq_bn-prefix", "prefix-seq_bn", "stack-in-branch"],
)
def test_parallel_of_seq_bn_and_prefix_tuning(composed, setup):
    model = composed
    model.set_active_adapters(setup)
    output = _run(model)
    for branch, child in enumerate(setup):
        model.set_active_adapters(child)
        assert_close(output[branch * ROWS : (branch + 1) * ROWS], _run(model))


@pytest.mark.parametrize(
    "setup",
    [
        Split(Stack(Parallel("s1", "s1")), splits=[6]),  # found: RuntimeError, tensor sizes 8 and 4
        Split(Stack(Parallel("l", "l")), "s1", splits=[3, 3]),  # found: ran, "s1" acting on both copies
        BatchSplit(Stack(Parallel("s1", "s2")), batch_sizes=[4]),  # found: RuntimeError
        Average(Stack(Parallel("s1", "s2")), "s1"),  # found: RuntimeError from torch.stack
        Fuse(Stack("s1", Parallel("s1", "s1")), "s2"),  # found: RuntimeError from torch.stack
        BatchSplit(Stack(Split(Stack(Parallel("s1", "s2")), splits=[6])), batch_sizes=[4]),
    ],
    ids=["split", "split-lora", "batchsplit", "average", "fuse", "deep"],
)
def test_a_parallel_inside_a_block_other_than_stack_is_refused(composed, setup):
    # Found by the composition suite: the rules allowed a Parallel below a Split, BatchSplit, Average
    # or Fuse (through a Stack), but the copies of the batch are made once for all of it, so the
    # siblings of the Parallel saw one copy and its branches two: torch errors, or outputs of
    # adapters outside the Parallel run on every copy.
    with pytest.raises(CompositionError, match="Parallel"):
        validate_nesting(setup)
    model = composed
    model.set_active_adapters("s1")
    before = structure(model)
    with pytest.raises(CompositionError, match="inside Stacks only"):
        model.set_active_adapters(setup)
    assert_unchanged(model, before)
    for allowed in (Parallel("s1", "s2"), Stack("s1", Parallel("s2", "l")), Stack(Parallel("s1", Stack("l", "s2")))):
        validate_nesting(allowed)
