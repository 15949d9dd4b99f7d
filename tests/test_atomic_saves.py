"""Saves replace a folder as a whole: a crash leaves the old adapter or the new one, never a mix.

Two kinds of crash tests: deterministic ones stop the world at each file-system step of a save
(every later step fails too, as after SIGKILL), and random ones SIGKILL a process that re-saves
two adapters in turn. ``ADAPTERS_CRASH_TRIALS=500`` runs the random test longer (default 20).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert

import adapters
from adapters import AdapterLoadError, AutoAdapterModel
from adapters.files import format as fmt
from adapters.methods.fusion import FusionRegistry
from adapters.testing import randomize_adapter

CONFIG_A, CONFIG_B = "lora[r=4,alpha=8]", "lora[r=4,alpha=16]"  # same shapes: only the config tells them apart
MUTATIONS = ("rename", "replace", "link", "unlink", "rmdir", "mkdir", "symlink")


def adapted(config: str, seed: int, **overrides) -> torch.nn.Module:
    model = tiny_bert(**overrides)
    adapters.init(model)
    model.add_adapter("x", config)
    randomize_adapter(model, "x", seed=seed)
    return model


def expected(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    state = model.adapters_state
    return {n: p.detach().clone() for n, p in state.parameters_of("x")}, state.configs["x"].to_dict()


def which(folder: Path, states: dict[str, tuple[dict[str, torch.Tensor], dict]], model=None) -> str | None:
    """Load ``folder`` and name the state it equals exactly (bit-identical weights, same config); None if absent."""
    if model is None:
        model = tiny_bert()
        adapters.init(model)
    try:
        model.load_adapter(folder, load_as="x", overwrite_ok=True)
    except AdapterLoadError as error:
        if "is not a folder" in str(error):
            return None
        raise
    got_weights, got_config = expected(model)
    for label, (weights, config) in states.items():
        same = got_weights.keys() == weights.keys() and all(torch.equal(got_weights[k], v) for k, v in weights.items())
        if same and got_config == config:
            return label
    raise AssertionError(f"{folder} holds neither adapter: config {got_config}")


def siblings(target: Path) -> list[str]:
    """Everything beside ``target`` in its parent (scratch and backup folders would show here)."""
    return sorted(p.name for p in target.parent.iterdir() if p.name != target.name)


class SimulatedCrash(BaseException):
    """Raised by every file-system change from the crash on: the process is as good as killed."""


@contextlib.contextmanager
def crash_at(step: int) -> Iterator[list[str]]:
    """Let ``step`` file-system changes happen, then fail that one and every later one."""
    calls: list[str] = []
    originals = {name: getattr(os, name) for name in MUTATIONS}

    def wrap(name):
        def mutation(*args, **kwargs):
            calls.append(name)
            if len(calls) > step:
                raise SimulatedCrash(name)
            return originals[name](*args, **kwargs)

        return mutation

    for name in MUTATIONS:
        setattr(os, name, wrap(name))
    try:
        yield calls
    except SimulatedCrash:
        pass
    finally:
        for name, original in originals.items():
            setattr(os, name, original)


# -- formats and manifests -----------------------------------------------------------------------
@pytest.mark.parametrize("first", [True, False], ids=["safetensors-then-bin", "bin-then-safetensors"])
def test_resaving_in_the_other_format_leaves_one_weights_file(tmp_path, first):
    old, new = adapted(CONFIG_A, 0), adapted(CONFIG_A, 1)
    old.save_adapter(tmp_path / "x", "x", use_safetensors=first)
    new.save_adapter(tmp_path / "x", "x", use_safetensors=not first)
    weights = fmt.ADAPTER_WEIGHTS_LEGACY if first else fmt.ADAPTER_WEIGHTS
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == sorted([fmt.ADAPTER_CONFIG, weights])
    assert which(tmp_path / "x", {"old": expected(old), "new": expected(new)}) == "new"


def test_a_stale_weights_file_of_the_other_format_is_not_read(tmp_path):
    # A folder written before this fix (or by hand): both files, the config belongs to the .bin.
    old, new = adapted(CONFIG_A, 0), adapted(CONFIG_A, 1)
    old.save_adapter(tmp_path / "old", "x")
    new.save_adapter(tmp_path / "x", "x", use_safetensors=False)
    shutil.copy(tmp_path / "old" / fmt.ADAPTER_WEIGHTS, tmp_path / "x" / fmt.ADAPTER_WEIGHTS)
    assert which(tmp_path / "x", {"old": expected(old), "new": expected(new)}) == "new"
    model = tiny_bert()
    adapters.init(model)
    with pytest.raises(AdapterLoadError, match="use_safetensors=False"):
        model.load_adapter(tmp_path / "x", use_safetensors=True)


@pytest.mark.parametrize("stale", [fmt.ADAPTER_CONFIG, fmt.ADAPTER_WEIGHTS], ids=["old-config", "old-weights"])
def test_config_and_weights_of_different_saves_are_refused(tmp_path, stale):
    old, new = adapted(CONFIG_A, 0), adapted(CONFIG_A, 1)
    old.save_adapter(tmp_path / "old", "x")
    new.save_adapter(tmp_path / "x", "x")
    shutil.copy(tmp_path / "old" / stale, tmp_path / "x" / stale)
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("keep", "lora")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterLoadError, match=r"(?s)torn.*re-save") as error:
        model.load_adapter(tmp_path / "x")
    assert str(tmp_path / "x") in str(error.value)
    assert list(model.adapters_state.configs) == ["keep"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_a_folder_without_a_manifest_loads_as_before(tmp_path):
    # Folders of the reference library carry no manifest.
    model = adapted(CONFIG_A, 0)
    model.save_adapter(tmp_path / "x", "x")
    path = tmp_path / "x" / fmt.ADAPTER_CONFIG
    data = json.loads(path.read_text())
    assert "integrity" in data
    del data["integrity"]
    path.write_text(json.dumps(data))
    assert which(tmp_path / "x", {"same": expected(model)}) == "same"


def test_foreign_files_in_the_target_survive_a_resave(tmp_path):
    model = adapted(CONFIG_A, 0)
    target = tmp_path / "x"
    model.save_adapter(target, "x")
    (target / "README.md").write_text("card")
    (target / "notes").mkdir()
    (target / "notes" / "a.txt").write_text("kept")
    adapted(CONFIG_B, 1).save_adapter(target, "x")
    assert (target / "README.md").read_text() == "card"
    assert (target / "notes" / "a.txt").read_text() == "kept"
    assert siblings(target) == []


def test_head_and_fusion_files_of_different_saves_are_refused(tmp_path):
    def model_with(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = AutoAdapterModel.from_config(tiny_bert().config)
        for name in ("a", "b"):
            model.add_adapter(name, "seq_bn")
        model.add_classification_head("a")
        model.add_adapter_fusion(["a", "b"])
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(seed)))
        return model

    for seed, folder in ((0, "old"), (1, "new")):
        model_with(seed).save_head(tmp_path / folder / "head", "a")
        model_with(seed).save_adapter_fusion(tmp_path / folder / "fusion", "a,b")
    shutil.copy(tmp_path / "old" / "head" / fmt.HEAD_WEIGHTS, tmp_path / "new" / "head" / fmt.HEAD_WEIGHTS)
    shutil.copy(tmp_path / "old" / "fusion" / fmt.FUSION_CONFIG, tmp_path / "new" / "fusion" / fmt.FUSION_CONFIG)
    other = model_with(2)
    other.delete_adapter_fusion("a,b")
    with pytest.raises(AdapterLoadError, match="torn"):
        other.load_head(tmp_path / "new" / "head", load_as="h")
    with pytest.raises(AdapterLoadError, match="torn"):
        other.load_adapter_fusion(tmp_path / "new" / "fusion")
    assert "h" not in other.heads and not FusionRegistry.of(other.adapters_state).fusions


def test_a_save_into_the_working_directory_replaces_files_in_place(tmp_path, monkeypatch):
    # The working directory cannot be renamed away: files are replaced one by one, configs first.
    old, new = adapted(CONFIG_A, 0), adapted(CONFIG_B, 1)
    states = {"old": expected(old), "new": expected(new)}
    target = tmp_path / "cwd"
    target.mkdir()
    monkeypatch.chdir(target)
    (target / "notes.txt").write_text("kept")
    old.save_adapter(".", "x")
    new.save_adapter(".", "x", use_safetensors=False)
    assert sorted(os.listdir(target)) == sorted(["notes.txt", fmt.ADAPTER_CONFIG, fmt.ADAPTER_WEIGHTS_LEGACY])
    assert which(Path("."), states) == "new"
    outcomes = Counter()
    for step in range(100):
        old.save_adapter(".", "x")
        with crash_at(step) as calls:
            new.save_adapter(".", "x")
        try:
            outcomes[which(target, states)] += 1
        except AdapterLoadError as error:  # refused, never loaded as a mix
            assert "torn" in str(error)
            outcomes["torn"] += 1
        assert sorted(os.listdir(target)) == sorted(["notes.txt", fmt.ADAPTER_CONFIG, fmt.ADAPTER_WEIGHTS])
        if len(calls) <= step:
            break
    assert outcomes["old"] and outcomes["new"] and outcomes["torn"], outcomes


def test_an_adapter_and_its_head_are_replaced_together(tmp_path):
    def with_head(seed: int, config: str) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = AutoAdapterModel.from_config(tiny_bert().config)
        model.add_adapter("x", config)
        model.add_classification_head("x")
        randomize_adapter(model, "x", seed=seed)
        return model

    def pair(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in model.state_dict().items() if ".x." in k or k.startswith("heads.x.")}

    old, new = with_head(0, CONFIG_A), with_head(1, CONFIG_B)
    target = tmp_path / "x"
    for step in range(100):
        shutil.rmtree(target, ignore_errors=True)
        old.save_adapter(target, "x")
        with crash_at(step) as calls:
            new.save_adapter(target, "x")
        fresh = with_head(2, CONFIG_A)
        fresh.delete_adapter("x")
        fresh.delete_head("x")
        fresh.load_adapter(target)
        got = pair(fresh)
        assert any(all(torch.equal(got[k], v) for k, v in pair(m).items()) for m in (old, new)), step
        assert got.keys() == pair(old).keys()
        if len(calls) <= step:
            break
    assert siblings(target) == []


# -- scratch folders -------------------------------------------------------------------------------
def test_stale_scratch_folders_are_removed_by_the_next_save_and_load(tmp_path):
    model = adapted(CONFIG_A, 0)
    target = tmp_path / "x"
    foreign = [tmp_path / ".x.tmp-keep", tmp_path / ".y.tmp-ab12cd_3", tmp_path / "x.tmp-ab12cd_3"]
    for action in ("save", "load"):
        model.save_adapter(target, "x")
        for step in range(1, 50):  # until a crash leaves a scratch folder of the current scheme behind
            with crash_at(step):
                model.save_adapter(target, "x")
            if siblings(target):
                break
        legacy = tmp_path / ".x.tmp-ab12cd_3"  # what tempfile.mkdtemp left before this fix
        legacy.mkdir()
        (legacy / fmt.ADAPTER_WEIGHTS).write_bytes(b"\0" * 1000)
        for path in foreign:
            path.mkdir()
        assert len(siblings(target)) == 2 + len(foreign)
        if action == "save":
            model.save_adapter(target, "x")
        else:
            which(target, {"a": expected(model)})
        assert siblings(target) == sorted(p.name for p in foreign), action
        for path in foreign:
            path.rmdir()


# -- deterministic crashes -----------------------------------------------------------------------
@pytest.mark.parametrize("case", ["resave", "other-format", "first-save"])
def test_a_crash_at_every_step_leaves_the_old_or_the_new_adapter(tmp_path, case):
    old, new = adapted(CONFIG_A, 0), adapted(CONFIG_B, 1)
    states = {"old": expected(old), "new": expected(new)}
    target = tmp_path / "run" / "x"
    outcomes = Counter()
    for step in range(200):
        shutil.rmtree(tmp_path / "run", ignore_errors=True)
        target.parent.mkdir()
        if case != "first-save":
            old.save_adapter(target, "x")
        with crash_at(step) as calls:
            new.save_adapter(target, "x", use_safetensors=case != "other-format")
        crashed = len(calls) > step
        missing = not target.exists()
        outcome = which(target, states)
        assert outcome in ({None, "new"} if case == "first-save" else {"old", "new"}), (step, calls)
        if not crashed:
            assert outcome == "new"
        outcomes[(outcome, "target missing" if missing else "target present")] += 1
        assert siblings(target) == [], f"step {step}: the load left {siblings(target)}"
        if outcome is not None:
            new.save_adapter(target, "x")
            assert siblings(target) == [] and which(target, states) == "new"
        if not crashed:
            break
    else:
        raise AssertionError("the save never finished")
    assert step >= 3, calls
    assert outcomes[("new", "target present")] >= 1
    if case != "first-save":
        assert outcomes[("old", "target present")] >= 1
        # The moment between moving the old folder aside and the new one in: the documented rule
        # restores the old folder on the next load or save.
        assert outcomes[("old", "target missing")] >= 1, outcomes


def test_the_old_folder_is_restored_when_a_crash_left_no_target(tmp_path):
    # The documented rule: a crash between moving the old folder aside and the new one in leaves
    # no target; the next load or save of that target moves the old folder back.
    old, new = adapted(CONFIG_A, 0), adapted(CONFIG_B, 1)
    states = {"old": expected(old), "new": expected(new)}
    target = tmp_path / "x"

    def crash_without_target() -> int:
        for step in range(50):
            shutil.rmtree(target, ignore_errors=True)
            old.save_adapter(target, "x")
            (target / "README.md").write_text("card")
            with crash_at(step):
                new.save_adapter(target, "x")
            if not target.exists():
                return step
        raise AssertionError("no step left the target missing")

    crash_without_target()
    assert siblings(target) != []
    assert which(target, states) == "old" and siblings(target) == []
    assert (target / "README.md").read_text() == "card"
    crash_without_target()
    new.save_adapter(target, "x")
    assert which(target, states) == "new" and siblings(target) == []
    assert (target / "README.md").read_text() == "card"


# -- random SIGKILLs -------------------------------------------------------------------------------
BIG = dict(hidden_size=256, num_attention_heads=4, intermediate_size=64, num_hidden_layers=4)
BIG_A, BIG_B = "lora[r=64,alpha=8]", "lora[r=64,alpha=16]"
SAVER = textwrap.dedent(
    """
    import os, random, sys, time
    sys.path.insert(0, {tests!r})
    import adapters
    from conftest import tiny_bert
    from adapters.testing import randomize_adapter

    target, ref_a, ref_b, timing = sys.argv[1:5]
    def adapted(config, seed):
        model = tiny_bert(**{big!r})
        adapters.init(model)
        model.add_adapter("x", config)
        randomize_adapter(model, "x", seed=seed)
        return model
    a, b = adapted({a!r}, 0), adapted({b!r}, 1)
    a.save_adapter(ref_a, "x")
    b.save_adapter(ref_b, "x")
    a.save_adapter(target, "x")
    # A little random delay before each step, so kills land between steps more often.
    rng = random.Random(0)
    for name in {mutations!r}:
        def slow(*args, _real=getattr(os, name), **kwargs):
            time.sleep(rng.random() * 0.002)
            return _real(*args, **kwargs)
        setattr(os, name, slow)
    started = time.perf_counter()
    for model in (a, b, a, b):
        model.save_adapter(timing, "x")
    print("ready", (time.perf_counter() - started) / 4, flush=True)
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            rng.seed(int(line))
            models = [a, b] if rng.random() < 0.5 else [b, a]
            for i in range(10**9):
                models[i % 2].save_adapter(target, "x", use_safetensors=rng.random() < 0.8)
        print(pid, flush=True)
        os.waitpid(pid, 0)
        print("reaped", flush=True)
    """
)


@pytest.mark.crash
def test_sigkill_during_saves_leaves_one_of_the_two_adapters(tmp_path):
    trials = int(os.environ.get("ADAPTERS_CRASH_TRIALS", "20"))
    target, refs = tmp_path / "run" / "x", tmp_path / "refs"
    target.parent.mkdir()
    code = SAVER.format(tests=str(Path(__file__).parent), big=BIG, a=BIG_A, b=BIG_B, mutations=MUTATIONS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "saver.log", "w") as log:
        saver = subprocess.Popen(
            [sys.executable, "-c", code, str(target), str(refs / "a"), str(refs / "b"), str(refs / "timing")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
        )  # fmt: skip
    try:
        ready, save_time = [*saver.stdout.readline().split(), "", ""][:2]
        assert ready == "ready", (tmp_path / "saver.log").read_text()
        save_time = float(save_time)  # one save in the saver, with its delays
        model = tiny_bert(**BIG)
        adapters.init(model)
        states = {}
        for label in ("a", "b"):
            model.load_adapter(refs / label, load_as="x", overwrite_ok=True)
            states[label] = expected(model)
        started = time.perf_counter()
        rng = random.Random(0)
        seen, outcomes = Counter(), Counter()
        for trial in range(trials):
            saver.stdin.write(f"{trial}\n")
            saver.stdin.flush()
            pid = int(saver.stdout.readline())
            time.sleep(rng.uniform(0, 4 * save_time))
            os.kill(pid, signal.SIGKILL)
            assert saver.stdout.readline().strip() == "reaped"
            seen["stale scratch or backup"] += bool(siblings(target))
            seen["target missing"] += not target.exists()
            outcome = which(target, states, model)
            assert outcome in ("a", "b"), trial
            outcomes[outcome] += 1
            assert siblings(target) == [], f"trial {trial}: the load left {siblings(target)}"
            model.save_adapter(target, "x")
            assert which(target, states, model) == outcome and siblings(target) == []
        elapsed = time.perf_counter() - started
        # Both adapters were seen: the saver really saved (a hung saver would pass vacuously).
        assert trials < 10 or len(outcomes) == 2, outcomes
    finally:
        saver.kill()
        saver.wait()
    print(
        f"\n{trials} SIGKILL trials in {elapsed:.1f}s ({1000 * elapsed / trials:.0f} ms each; one save takes "
        f"{1000 * save_time:.1f} ms): outcomes {dict(outcomes)}, before loading {dict(seen)}"
    )
