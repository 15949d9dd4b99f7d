"""adapters.supported_models(), its Markdown tables, the CLI, and the README's copy of the tables."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import adapters
from adapters.composition import Fuse, Stack
from adapters.plugins import get_registry
from adapters.support import END_MARKER, START_MARKER, render_markdown, replace_between_markers
from adapters.support_matrix import main

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"


def by_type() -> dict[str, adapters.ModelSupport]:
    return {model.model_type: model for model in adapters.supported_models()}


def test_every_registered_model_type_is_listed_with_its_plugin():
    models = by_type()
    assert set(models) == set(get_registry().model_specs)
    assert models["bert"].plugin == "adapters-bert"
    assert models["vit"].plugin == "adapters-vit"
    # Sorted by plugin, then model type.
    listed = [(m.plugin, m.model_type) for m in adapters.supported_models()]
    assert listed == sorted(listed)


def test_methods_are_the_registered_ones_minus_the_refused():
    registered = [method.name for method in get_registry().methods]
    bert = by_type()["bert"]
    assert list(bert.method_names) == registered and bert.refused == ()
    clip = by_type()["clip_text_model"]
    assert "prompt_tuning" not in clip.method_names
    assert [name for name, _ in clip.refused] == ["prompt_tuning"]
    assert "end-of-text" in dict(clip.refused)["prompt_tuning"]


def test_blocks_are_each_methods_supported_blocks():
    for method in get_registry().methods:
        support = next(s for s in by_type()["bert"].methods if s.method == method.name)
        assert set(support.blocks) == {block.__name__ for block in method.supported_blocks}
    blocks = {s.method: s.blocks for s in by_type()["bert"].methods}
    assert blocks["bottleneck"][0] == Stack.__name__ and Fuse.__name__ in blocks["bottleneck"]
    assert Fuse.__name__ not in blocks["lora"]


def test_the_example_plugin_is_found_through_its_entry_point():
    pytest.importorskip("adapters_example_plugin")
    tiny = by_type()["tiny_transformer"]
    assert tiny.plugin == "adapters-example-plugin"
    assert "prefix_tuning" not in tiny.method_names and "lora" in tiny.method_names


def test_markdown_tables():
    models = [by_type()["bert"], by_type()["clip"]]
    text = render_markdown(models)
    lines = text.splitlines()
    methods = [m.name for m in get_registry().methods]
    assert lines[0] == "| model type | plugin | " + " | ".join(f"`{m}`" for m in methods) + " |"
    assert lines[2] == "| `bert` | adapters-bert | " + " | ".join(["✓"] * len(methods)) + " |"
    assert "| `clip` | adapters-clip |" in lines[3] and "\u2013" in lines[3]  # an en dash: refused
    assert any(line.startswith("- `clip`: `prompt_tuning`, because the text tower pools") for line in lines)
    assert "| `bottleneck` | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |" in lines


def test_cli_prints_and_writes_between_the_markers(tmp_path, capsys):
    assert main(["--exclude-plugin", "adapters-vit"]) == 0
    printed = capsys.readouterr().out
    assert "| `bert` | adapters-bert |" in printed and "adapters-vit" not in printed
    target = tmp_path / "README.md"
    target.write_text(f"# title\n\n{START_MARKER}\nold table\n{END_MARKER}\n\nafter\n", encoding="utf-8")
    assert main(["--write", str(target)]) == 0
    written = target.read_text(encoding="utf-8")
    assert "old table" not in written and "| `bert` | adapters-bert |" in written
    assert written.startswith("# title\n\n") and written.endswith(f"{END_MARKER}\n\nafter\n")
    # Writing again changes nothing.
    assert replace_between_markers(written, render_markdown()) == written
    with pytest.raises(ValueError, match="support-matrix:start"):
        replace_between_markers("no markers here", "table")


def repository_packages() -> set[str]:
    """Distribution names of the packages under packages/ (what the nox tests session installs)."""
    return {
        tomllib.loads(path.read_text(encoding="utf-8"))["project"]["name"]
        for path in ROOT.glob("packages/*/pyproject.toml")
    }


def readme_tables() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start, end = text.index(START_MARKER), text.index(END_MARKER)
    return text[start + len(START_MARKER) : end].strip().splitlines()


def test_readme_matrix_is_current_for_the_installed_plugins():
    """README.md's "Supported models" tables match the installed plugins of this repository.

    Regenerate with ``python -m adapters.support_matrix --exclude-plugin adapters-example-plugin
    --write README.md``. Only model types of the repository's installed packages are compared, so a
    plugin missing from this environment does not fail the test.
    """
    readme = readme_tables()
    ours = [model for model in adapters.supported_models() if model.plugin in repository_packages()]
    generated = render_markdown(ours).splitlines()
    fix = "README.md is out of date: run python -m adapters.support_matrix --exclude-plugin adapters-example-plugin "
    fix += "--write README.md"
    assert generated[0] == readme[0], fix  # the method columns
    rows = [line for line in generated if line.startswith("| `") and line.count("|") > 3]
    missing = [line for line in rows if line not in readme]
    assert not missing, f"{fix}; rows differ: {missing[:3]}"
    refusals = [line for line in readme if line.startswith("- ")]
    for model in ours:
        for method, reason in model.refused:
            ending = f": `{method}`, because {reason.rstrip('.')}."
            assert any(
                line.endswith(ending) and f"`{model.model_type}`" in line.removesuffix(ending) for line in refusals
            ), f"{fix}; the refusal of {method} by {model.model_type} is missing"
