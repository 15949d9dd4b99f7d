"""Hub ids in load_adapter (through the huggingface_hub cache, offline) and push_adapter_to_hub (spied upload)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from conftest import tiny_bert_classifier
from huggingface_hub import constants, scan_cache_dir

import adapters
from adapters import AdapterLoadError

REPO = "org/tiny-sst2"


def adapted(seed_shift: float = 0.0) -> torch.nn.Module:
    model = tiny_bert_classifier()
    model.config._name_or_path = "org/tiny-bert"
    adapters.init(model)
    model.add_adapter("sst2", config="lora[r=4]")
    with torch.no_grad():
        for _, param in model.adapters_state.parameters_of("sst2"):
            param.normal_(generator=torch.Generator().manual_seed(5)).add_(seed_shift)
    return model


def fresh_model() -> torch.nn.Module:
    model = tiny_bert_classifier()
    adapters.init(model)
    return model


def weights(model: torch.nn.Module, name: str = "sst2") -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.adapters_state.parameters_of(name)}


def cache_repo(cache: Path, repo_id: str, files_dir: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> None:
    """Put a folder in a huggingface_hub cache, laid out as the hub library does (blobs, snapshots, refs)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in files_dir.iterdir():
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    # huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE when imported: patch its constants.
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_load_adapter_by_hub_id_from_the_cache_offline(tmp_path, offline_cache):
    old, new = adapted(0.0), adapted(1.0)
    old.save_adapter(tmp_path / "v1", "sst2")
    new.save_adapter(tmp_path / "v2", "sst2")
    cache_repo(offline_cache, REPO, tmp_path / "v1", "a" * 40, refs=("v1",))
    cache_repo(offline_cache, REPO, tmp_path / "v2", "b" * 40, refs=("main",))
    assert [r.repo_id for r in scan_cache_dir(offline_cache).repos] == [REPO]  # a layout the hub library reads

    model = fresh_model()
    assert model.load_adapter(REPO, set_active=True) == "sst2"
    assert model.active_adapters.flatten() == ["sst2"]
    for key, value in weights(new).items():
        torch.testing.assert_close(weights(model)[key], value, rtol=0, atol=0)

    for revision in ({"revision": "v1"}, {"version": "v1"}, {"revision": "a" * 40}):
        model = fresh_model()
        model.load_adapter(REPO, **revision)
        for key, value in weights(old).items():
            torch.testing.assert_close(weights(model)[key], value, rtol=0, atol=0)


def test_a_local_folder_wins_over_a_hub_id(tmp_path, offline_cache, monkeypatch):
    adapted(2.0).save_adapter(tmp_path / "org" / "tiny-sst2", "sst2")
    monkeypatch.chdir(tmp_path)
    model = fresh_model()
    model.load_adapter(REPO)
    for key, value in weights(adapted(2.0)).items():
        torch.testing.assert_close(weights(model)[key], value, rtol=0, atol=0)


def test_offline_without_a_cached_copy_names_the_cause(offline_cache):
    model = fresh_model()
    with pytest.raises(AdapterLoadError, match=r"not in the Hugging Face cache.*HF_HUB_OFFLINE is set"):
        model.load_adapter("org/not-cached")
    with pytest.raises(AdapterLoadError, match="not a folder"):
        model.load_adapter("./missing/folder")
    with pytest.raises(AdapterLoadError, match="not a folder"):
        model.load_adapter(Path("org/name"))
    assert not model.adapters_state.configs


def test_hf_hub_offline_environment_variable(tmp_path):
    # The real environment variables, read by a fresh process: HF_HUB_CACHE and HF_HUB_OFFLINE.
    adapted(0.0).save_adapter(tmp_path / "saved", "sst2")
    cache_repo(tmp_path / "cache", REPO, tmp_path / "saved", "c" * 40)
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
        import adapters
        from conftest import tiny_bert_classifier
        model = tiny_bert_classifier(); adapters.init(model)
        print(model.load_adapter({REPO!r}))
        try:
            model.load_adapter("org/never-downloaded")
        except adapters.AdapterLoadError as error:
            print("offline" if "HF_HUB_OFFLINE" in str(error) else error)
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["sst2", "offline"]


class UploadSpy:
    """Stands in for the Hub: records create_repo and copies what upload_folder would send."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, api, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, api, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", {"repo_id": repo_id, **kwargs}))
        shutil.copytree(folder_path, self.store)
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{'d' * 40}",
            commit_message=kwargs.get("commit_message"),
            commit_description="",
            oid="d" * 40,
        )


@pytest.fixture
def upload_spy(tmp_path, monkeypatch) -> UploadSpy:
    spy = UploadSpy(tmp_path / "uploaded")
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_repo", lambda api, repo_id, **kw: spy.create_repo(api, repo_id, **kw)
    )
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda api, **kw: spy.upload_folder(api, **kw))
    return spy


def card_metadata(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_push_adapter_to_hub_uploads_the_folder_and_a_card(upload_spy, offline_cache):
    model = adapted(0.5)
    url = model.push_adapter_to_hub(
        REPO,
        "sst2",
        datasets_tag="glue",
        private=True,
        adapter_card_kwargs={"tags": ["sentiment"], "metrics": {"accuracy": 0.91}, "license": "apache-2.0"},
    )
    assert url == f"https://huggingface.co/{REPO}/commit/{'d' * 40}"
    (_, create), (_, upload) = upload_spy.calls
    assert create == {"repo_id": REPO, "private": True, "exist_ok": True, "repo_type": "model"}
    assert upload["repo_id"] == REPO and upload["commit_message"] == "Upload adapter sst2"
    # The save_adapter folder, with the model's static head (classifier) as the reference library uploads it.
    assert sorted(p.name for p in upload_spy.store.iterdir()) == [
        "README.md",
        "adapter.safetensors",
        "adapter_config.json",
        "head_config.json",
        "model_head.safetensors",
    ]

    card = (upload_spy.store / "README.md").read_text()
    meta = card_metadata(card)
    assert meta["library_name"] == "adapters"
    assert meta["base_model"] == "org/tiny-bert"
    assert meta["datasets"] == ["glue"]
    assert meta["metrics"] == ["accuracy"]
    assert meta["license"] == "apache-2.0"
    assert {"adapters", "adapter-transformers", "bert", "lora", "sentiment"} <= set(meta["tags"])
    assert '"r": 4' in card and "LoRAConfig" in card  # method and config
    assert "| accuracy | 0.91 |" in card
    assert f'model.load_adapter("{REPO}", set_active=True)' in card
    assert "from transformers import BertForSequenceClassification" in card

    # What was uploaded loads back by hub id (the cache standing in for a download).
    cache_repo(offline_cache, REPO, upload_spy.store, "e" * 40)
    other = fresh_model()
    other.load_adapter(REPO)
    for key, value in weights(model).items():
        torch.testing.assert_close(weights(other)[key], value, rtol=0, atol=0)


def test_push_keeps_an_existing_card_unless_asked(tmp_path, upload_spy):
    local = tmp_path / "work"
    local.mkdir()
    (local / "README.md").write_text("my own card\n")
    model = adapted()
    model.push_adapter_to_hub(REPO, "sst2", local_path=local)
    assert (upload_spy.store / "README.md").read_text() == "my own card\n"
    assert (local / "adapter.safetensors").is_file()  # local_path keeps the uploaded folder


def test_push_overwrites_the_card_when_asked_and_skips_local_base_models(tmp_path, upload_spy):
    local = tmp_path / "work"
    local.mkdir()
    (local / "README.md").write_text("old\n")
    model = adapted()
    model.config._name_or_path = str(tmp_path)  # a local checkpoint is no Hub base_model
    model.push_adapter_to_hub(REPO, "sst2", local_path=local, overwrite_adapter_card=True)
    meta = card_metadata((upload_spy.store / "README.md").read_text())
    assert "base_model" not in meta and meta["library_name"] == "adapters"


def test_push_an_unknown_adapter_fails_before_any_request(upload_spy):
    with pytest.raises(adapters.AdapterNameError):
        adapted().push_adapter_to_hub(REPO, "nope")
    assert upload_spy.calls == []
