"""Names and paths: nothing the library writes or reads leaves the folder it was given.

Each test replays one attack: a name that is a path (``"/some/dir"``, ``"a/b"``), a name read
from a downloaded file, a Hub ``revision``/``subfolder`` that climbs out of the cache, a symbolic
link inside the target, a checkpoint manifest pointing elsewhere, a name too long for a folder.
Every refusal leaves the model as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert, tiny_bert_classifier
from huggingface_hub import constants
from safetensors.torch import load_file, save_file

import adapters
from adapters import AdapterError, AdapterLoadError, AdapterNameError, AutoAdapterModel
from adapters.testing import randomize_adapter
from adapters.training import load_checkpoint, save_checkpoint

MAX = 128  # adapters.names.MAX_NAME_LENGTH, spelled out so this file imports before the fix
PATH_LIKE = [
    pytest.param("/abs/dir", id="absolute"),
    pytest.param("a/b", id="slash"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("..", id="dotdot"),
    pytest.param("C:evil", id="windows-drive"),
    pytest.param("bell\x07", id="control"),
    pytest.param("nul\x00x", id="nul"),
    pytest.param("x" * 250, id="250-chars"),
    pytest.param("x" * 300, id="300-chars"),
    pytest.param("ü" * 100, id="200-bytes"),
]


def snapshot(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    return {k: v.clone() for k, v in model.state_dict().items()}, list(model.adapters_state.configs)


def assert_unchanged(model: torch.nn.Module, before: tuple[dict[str, torch.Tensor], list[str]]) -> None:
    state, names = snapshot(model)
    assert names == before[1]
    assert state.keys() == before[0].keys()
    assert all(torch.equal(state[k], v) for k, v in before[0].items())


def all_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def saved_adapter(folder: Path, name: str = "a", config: str = "lora", seed: int = 0) -> Path:
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter(name, config)
    randomize_adapter(model, name, seed=seed)
    model.save_adapter(folder, name)
    return folder


def rename_saved(folder: Path, kind: str, new: str) -> None:
    """Rename what ``folder`` holds (config ``name`` and weight keys) as an attacker's file would."""
    config, weights = {
        "adapter": ("adapter_config.json", "adapter.safetensors"),
        "head": ("head_config.json", "model_head.safetensors"),
        "fusion": ("adapter_fusion_config.json", "model_adapter_fusion.safetensors"),
    }[kind]
    data = json.loads((folder / config).read_text())
    old, data["name"] = data["name"], new
    data.pop("integrity", None)  # a hand-made file has no manifest
    (folder / config).write_text(json.dumps(data))
    tensors = load_file(folder / weights)
    save_file({key.replace(f".{old}.", f".{new}."): value for key, value in tensors.items()}, folder / weights)


# -- names given to the API ------------------------------------------------------------------
@pytest.mark.parametrize("name", PATH_LIKE)
def test_add_adapter_refuses_names_that_are_paths_or_too_long(name):
    model = tiny_bert()
    adapters.init(model)
    before = snapshot(model)
    with pytest.raises(AdapterNameError, match="Invalid adapter name"):
        model.add_adapter(name, "lora")
    assert_unchanged(model, before)


def test_a_name_of_maximum_length_saves_and_loads(tmp_path):
    name = "n" * MAX
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter(name, "lora")
    model.save_pretrained(tmp_path / "out")
    other = tiny_bert()
    adapters.init(other)
    assert other.load_adapter(tmp_path / "out" / "adapters" / name) == name
    with pytest.raises(AdapterNameError, match=f"at most {MAX}"):
        model.add_adapter("n" * (MAX + 1), "lora")


def test_long_target_folder_names_save(tmp_path):
    # The scratch folder beside the target has a short fixed-length name of its own.
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", "lora")
    target = tmp_path / ("d" * 250)
    model.save_adapter(target, "a")
    model.save_adapter(target, "a")
    assert os.listdir(tmp_path) == ["d" * 250]


def test_save_all_adapters_never_writes_outside_the_folder(tmp_path):
    outside = tmp_path / "outside"
    model = tiny_bert()
    adapters.init(model)
    with pytest.raises(AdapterNameError):
        model.add_adapter(str(outside), "lora")
    # A name smuggled past add_adapter (state edited directly) is still caught when saving.
    model.add_adapter("a", "lora")
    model._rename_adapter("a", str(outside))
    with pytest.raises(AdapterNameError, match="outside"):
        model.save_all_adapters(tmp_path / "target")
    with pytest.raises(AdapterNameError, match="outside"):
        model.save_pretrained(tmp_path / "pretrained")
    assert not outside.exists() and not (tmp_path / "pretrained").exists()


def test_save_pretrained_with_a_name_too_long_for_a_folder_writes_nothing(tmp_path):
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", "lora")
    model._rename_adapter("a", "x" * 300)  # smuggled past add_adapter, as a name from an older release
    with pytest.raises(AdapterNameError, match="at most"):
        model.save_pretrained(tmp_path / "pretrained")
    assert not (tmp_path / "pretrained").exists()


def test_fusion_and_head_names_that_are_paths_are_refused(tmp_path):
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", "seq_bn")
    model.add_adapter("b", "seq_bn")
    before = snapshot(model)
    with pytest.raises(AdapterNameError, match="AdapterFusion name"):
        model.add_adapter_fusion(["a", "b"], name=str(tmp_path / "fusion"))
    assert_unchanged(model, before)
    long_a, long_b = "a" * 100, "b" * 100
    model.add_adapter(long_a, "seq_bn")
    model.add_adapter(long_b, "seq_bn")
    with pytest.raises(AdapterNameError, match="name="):
        model.add_adapter_fusion([long_a, long_b])  # "a...a,b...b" is 201 characters
    model.add_adapter_fusion([long_a, long_b], name="ab")

    heads = AutoAdapterModel.from_config(tiny_bert().config)
    with pytest.raises(AdapterNameError, match="Invalid head name"):
        heads.add_classification_head(str(tmp_path / "head"))
    assert not (tmp_path / "head").exists() and not (tmp_path / "fusion").exists()


def test_symbolic_links_inside_the_target_do_not_lead_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "adapter_config.json").write_text("precious")
    model = AutoAdapterModel.from_config(tiny_bert().config)
    model.add_adapter("a", "lora")
    model.add_classification_head("a")
    for method, folder in (("save_all_adapters", "adapters"), ("save_all_heads", "heads")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a").symlink_to(outside, target_is_directory=True)
        with pytest.raises(AdapterNameError, match="outside"):
            getattr(model, method)(tmp_path / folder)
    assert all_files(outside) == {"adapter_config.json"}
    assert (outside / "adapter_config.json").read_text() == "precious"


# -- names read from files ---------------------------------------------------------------------
def test_a_saved_name_that_is_a_path_needs_load_as(tmp_path):
    downloaded = saved_adapter(tmp_path / "downloaded")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "adapter_config.json").write_text("precious")
    rename_saved(downloaded, "adapter", str(victim))

    model = tiny_bert()
    adapters.init(model)
    before = snapshot(model)
    with pytest.raises(AdapterNameError, match="load_as="):
        model.load_adapter(downloaded)
    assert_unchanged(model, before)
    assert model.load_adapter(downloaded, load_as="safe") == "safe"
    model.save_pretrained(tmp_path / "target")
    assert (victim / "adapter_config.json").read_text() == "precious"
    assert all_files(victim) == {"adapter_config.json"}
    assert sorted(p.name for p in (tmp_path / "target" / "adapters").iterdir()) == ["safe"]


def test_saved_head_and_fusion_names_that_are_paths_need_load_as(tmp_path):
    model = AutoAdapterModel.from_config(tiny_bert().config)
    model.add_adapter("a", "seq_bn")
    model.add_adapter("b", "seq_bn")
    model.add_classification_head("a")
    model.add_adapter_fusion(["a", "b"])
    model.save_head(tmp_path / "head", "a")
    model.save_adapter_fusion(tmp_path / "fusion", "a,b")
    rename_saved(tmp_path / "head", "head", str(tmp_path / "evil-head"))
    rename_saved(tmp_path / "fusion", "fusion", str(tmp_path / "evil-fusion"))

    other = AutoAdapterModel.from_config(tiny_bert().config)
    other.add_adapter("a", "seq_bn")
    other.add_adapter("b", "seq_bn")
    before = snapshot(other)
    with pytest.raises(AdapterNameError, match="load_as="):
        other.load_head(tmp_path / "head")
    with pytest.raises(AdapterNameError, match="load_as="):
        other.load_adapter_fusion(tmp_path / "fusion")
    assert_unchanged(other, before)
    assert not list(other.heads)
    assert other.load_head(tmp_path / "head", load_as="h") == "h"
    assert other.load_adapter_fusion(tmp_path / "fusion", load_as="f") == "f"


def test_adapter_with_head_from_a_file_with_a_path_name_needs_load_as(tmp_path):
    model = AutoAdapterModel.from_config(tiny_bert().config)
    model.add_adapter("a", "lora")
    model.add_classification_head("a")
    model.save_adapter(tmp_path / "a", "a")
    rename_saved(tmp_path / "a", "adapter", "/a")
    rename_saved(tmp_path / "a", "head", "/a")
    other = AutoAdapterModel.from_config(tiny_bert().config)
    before = snapshot(other)
    with pytest.raises(AdapterNameError, match="load_as="):
        other.load_adapter(tmp_path / "a")
    assert_unchanged(other, before)
    assert not list(other.heads)
    assert other.load_adapter(tmp_path / "a", load_as="b") == "b"
    assert list(other.heads) == ["b"]


# -- checkpoints -------------------------------------------------------------------------------
def test_a_checkpoint_manifest_cannot_point_outside_the_checkpoint(tmp_path):
    saved_adapter(tmp_path / "elsewhere" / "task", name="task", seed=3)
    model = tiny_bert_classifier()
    adapters.init(model)
    model.add_adapter("task", "lora")
    model.train_adapter("task")
    save_checkpoint(model, tmp_path / "ckpt")
    manifest = json.loads((tmp_path / "ckpt" / "adapters_checkpoint.json").read_text())
    manifest["items"][0]["folder"] = "../elsewhere/task"
    (tmp_path / "ckpt" / "adapters_checkpoint.json").write_text(json.dumps(manifest))
    fresh = tiny_bert_classifier()
    adapters.init(fresh)
    before = snapshot(fresh)
    with pytest.raises(AdapterLoadError, match="outside"):
        load_checkpoint(fresh, tmp_path / "ckpt")
    assert_unchanged(fresh, before)

    manifest["items"][0]["folder"], manifest["items"][0]["name"] = "task", "/abs"
    (tmp_path / "ckpt" / "adapters_checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(AdapterNameError):
        load_checkpoint(fresh, tmp_path / "ckpt")
    assert_unchanged(fresh, before)


# -- the Hub: revision, subfolder, repo id -----------------------------------------------------
REPO = "org/tiny"


def cache_repo(cache: Path, files_dir: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    repo = cache / f"models--{REPO.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot_dir = repo / "snapshots" / commit
    for path in files_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = snapshot_dir / path.relative_to(files_dir)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return repo


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_a_revision_that_climbs_out_of_the_cache_is_refused(tmp_path, offline_cache):
    saved_adapter(tmp_path / "good")
    cache_repo(offline_cache, tmp_path / "good", "a" * 40)
    # The attacker's files outside the cache: a refs file and the adapter it points to.
    saved_adapter(tmp_path / "evil", seed=9)
    (tmp_path / "evil-ref").write_text("../../../evil")
    model = tiny_bert()
    adapters.init(model)
    before = snapshot(model)
    for revision in ("../../../evil-ref", "../../..", "/etc", "refs/../../x", "..\\..\\x", "main\x00"):
        with pytest.raises(AdapterLoadError, match="revision"):
            model.load_adapter(REPO, revision=revision)
        with pytest.raises(AdapterLoadError, match="revision"):
            model.load_adapter(REPO, version=revision)
    assert_unchanged(model, before)
    assert model.load_adapter(REPO) == "a"


def test_a_refs_file_that_points_outside_the_cache_is_refused(tmp_path, offline_cache):
    saved_adapter(tmp_path / "evil", seed=9)
    repo = cache_repo(offline_cache, saved_adapter(tmp_path / "good"), "b" * 40)
    (repo / "refs" / "main").write_text("../../../evil")  # a tampered cache
    model = tiny_bert()
    adapters.init(model)
    with pytest.raises(AdapterLoadError, match="outside"):
        model.load_adapter(REPO)
    assert not model.adapters_state.configs


def test_a_subfolder_of_a_hub_repository(tmp_path, offline_cache):
    saved_adapter(tmp_path / "repo" / "sst2")
    saved_adapter(tmp_path / "outside", seed=4)
    cache_repo(offline_cache, tmp_path / "repo", "c" * 40)
    model = tiny_bert()
    adapters.init(model)
    before = snapshot(model)
    for subfolder in ("../../../../outside", "/abs", "sst2/../..", "..", "a\\..\\.."):
        with pytest.raises(AdapterLoadError, match="subfolder"):
            model.load_adapter(REPO, subfolder=subfolder)
    assert_unchanged(model, before)
    assert model.load_adapter(REPO, subfolder="sst2") == "a"


def test_invalid_repo_ids_never_reach_the_hub(tmp_path, offline_cache, monkeypatch):
    import adapters.io.hub as hub

    def never(*args, **kwargs):
        raise AssertionError("looked up")

    monkeypatch.setattr(hub, "_download", never)
    model = tiny_bert()
    adapters.init(model)
    for repo_id in ("org/../x", "org/x--y", "org//x", "a" * 100 + "/x"):
        with pytest.raises(AdapterLoadError):
            model.load_adapter(repo_id)


@pytest.mark.parametrize("name", [[1], {}, {"a": 1}], ids=["list", "empty-dict", "dict"])
def test_unhashable_names_get_a_library_error_not_a_type_error(tmp_path, name):
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", config="seq_bn")
    for call in (
        lambda: model.save_adapter(tmp_path / "x", name),
        lambda: model.delete_adapter(name),
        lambda: model.merge_adapter(name),
    ):
        with pytest.raises(AdapterNameError):
            call()
    with pytest.raises(AdapterError):  # a list is a setup of names: CompositionError or AdapterNameError
        model.set_active_adapters(name)
    assert list(model.adapters_state.configs) == ["a"] and not (tmp_path / "x").exists()


def test_deleting_a_head_of_an_unhashable_name_deletes_nothing():
    model = AutoAdapterModel.from_config(tiny_bert().config)
    model.add_classification_head("a", num_labels=2)
    model.delete_head({"a": 1})  # as for an unknown name (the reference's behaviour): nothing happens
    assert list(model.heads) == ["a"]
