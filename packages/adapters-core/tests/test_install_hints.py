"""The unsupported-model error names a pip command that works for how adapters-core was installed.

The plugins are on no package index, so the hint follows adapters-core's PEP 610
``direct_url.json``: a local folder, a VCS URL, or neither (a pointer to the README).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from adapters import UnsupportedModelError
from adapters.plugins import manager
from adapters.plugins.manager import Registry, create_plugin_manager

README = Path(__file__).resolve().parents[3] / "README.md"  # the repository root


def hint_with(monkeypatch, direct_url: dict | None, package: str = "adapters-gpt2") -> str:
    monkeypatch.setattr(manager, "core_direct_url", lambda: direct_url)
    return manager.plugin_install_hint(package)


def checkout(tmp_path: Path, *packages: str) -> Path:
    """A folder laid out like the repository: packages/<name>/pyproject.toml for each name."""
    for name in packages:
        (tmp_path / "packages" / name).mkdir(parents=True)
        (tmp_path / "packages" / name / "pyproject.toml").write_text("[project]\n")
    return tmp_path / "packages"


@pytest.mark.parametrize("dir_info", [{"editable": True}, {}])
def test_local_folder_install_names_the_sibling_folder(tmp_path, monkeypatch, dir_info):
    packages = checkout(tmp_path / "my clone", "adapters-core", "adapters-gpt2")
    url = (packages / "adapters-core").as_uri()  # file:///.../my%20clone/packages/adapters-core
    hint = hint_with(monkeypatch, {"url": url, "dir_info": dir_info})
    expected = f"pip install -e {shlex.quote(str(packages / 'adapters-gpt2'))}"
    assert hint == f"Install the plugin package `adapters-gpt2`: {expected}"


def test_local_folder_without_the_plugin_points_to_the_readme(tmp_path, monkeypatch):
    packages = checkout(tmp_path, "adapters-core")
    hint = hint_with(monkeypatch, {"url": (packages / "adapters-core").as_uri(), "dir_info": {}})
    assert manager.plugin_install_command("adapters-gpt2") is None
    assert 'README\'s section "Install"' in hint


def test_vcs_install_names_the_same_repository_commit_and_subdirectory(monkeypatch):
    direct_url = {
        "url": "https://example.org/me/adapters.git",
        "vcs_info": {"vcs": "git", "commit_id": "0123abcd" * 5, "requested_revision": "main"},
        "subdirectory": "packages/adapters-core",
    }
    hint = hint_with(monkeypatch, direct_url)
    command = (
        'pip install "adapters-gpt2 @ git+https://example.org/me/adapters.git@'
        + "0123abcd" * 5
        + '#subdirectory=packages/adapters-gpt2"'
    )
    assert hint == f"Install the plugin package `adapters-gpt2`: {command}"


@pytest.mark.parametrize(
    "direct_url",
    [
        None,  # from a package index (or no direct_url.json)
        {"url": "file:///tmp/adapters_core-0.1.0-py3-none-any.whl", "archive_info": {}},
        {"url": "https://example.org/adapters_core-0.1.0.tar.gz", "archive_info": {"hashes": {}}},
    ],
)
def test_other_installs_point_to_the_readme_never_to_an_index(monkeypatch, direct_url):
    hint = hint_with(monkeypatch, direct_url)
    assert manager.plugin_install_command("adapters-gpt2") is None
    assert "not on a package index" in hint
    assert 'README\'s section "Install"' in hint
    assert "pip install -e packages/adapters-gpt2" in hint
    assert not re.search(r"pip install adapters-gpt2\b", hint)


def test_the_readme_has_the_install_section_the_hint_names():
    assert re.search(r"^## Install$", README.read_text(encoding="utf-8"), flags=re.MULTILINE)


def test_unsupported_model_error_carries_the_hint(monkeypatch):
    monkeypatch.setattr(manager, "_is_installed", lambda distribution: False)
    monkeypatch.setattr(manager, "core_direct_url", lambda: None)
    registry = Registry(create_plugin_manager(load_entry_points=False))
    with pytest.raises(UnsupportedModelError) as exc:
        registry.spec_for("llama")
    message = str(exc.value)
    assert "model_type 'llama'" in message
    assert manager.plugin_install_hint("adapters-gpt2") in message
    assert not re.search(r"pip install adapters-gpt2\b", message)


def test_the_real_install_gives_a_command_for_an_existing_folder():
    origin = manager.core_direct_url()
    if not origin or "dir_info" not in origin:
        pytest.skip(f"adapters-core is not installed from a local folder here ({origin})")
    command = manager.plugin_install_command("adapters-gpt2")
    assert command is not None and command.startswith("pip install -e ")
    folder = Path(shlex.split(command)[-1])
    assert folder.name == "adapters-gpt2"
    assert (folder / "pyproject.toml").is_file()
    assert (folder.parent / "adapters-core" / "src" / "adapters" / "__init__.py").is_file()
