"""Where examples/quickstart.py gets SST-2: TSV files in --data-dir, else the Hub through `datasets`.

No network: a fake ``datasets`` module (put into ``sys.modules``) stands for the real one, either
failing as it does offline or returning rows. ``load_sst2`` itself runs unchanged.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import quickstart  # noqa: E402

TRAIN = [("hide new secretions from the parental units", 0), ("the greatest musicians", 1), ("a gem", 1)]
DEV = [("it 's a charming and often affecting journey .", 1), ("unflinchingly bleak", 0)]


class FakeSplit:
    """What ``datasets.Dataset`` offers here: columns by name, and rows as dicts when iterated."""

    def __init__(self, rows: list[tuple[str, int]]) -> None:
        self.rows = rows

    def __getitem__(self, column: str) -> list:
        return [sentence if column == "sentence" else label for sentence, label in self.rows]

    def __iter__(self):
        # The Hub copy's sentences end with a space, as in the GLUE files; it also has an idx column.
        return iter({"sentence": s + " ", "label": y, "idx": i} for i, (s, y) in enumerate(self.rows))


def fake_datasets(monkeypatch, load_dataset) -> list[tuple]:
    """Install a fake ``datasets`` module whose ``load_dataset`` is ``load_dataset``; return its calls."""
    calls: list[tuple] = []

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return load_dataset(*args, **kwargs)

    module = types.ModuleType("datasets")
    module.load_dataset = recording
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


def offline(*args, **kwargs):
    # What datasets raises with HF_HUB_OFFLINE=1 or without a network (OfflineModeIsEnabled and
    # huggingface_hub's connection errors are ConnectionError subclasses).
    raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)\nmore detail")


def hub_rows(name, config, split=None):
    splits = {"train": FakeSplit(TRAIN), "validation": FakeSplit(DEV), "test": FakeSplit([("x", -1)])}
    return splits if split is None else splits[split]


def write_tsv(path: Path, header: str, rows) -> None:
    path.write_text(header + "\n" + "".join(f"{s} \t{y}\n" for s, y in rows), encoding="utf-8")


def test_no_files_and_no_hub_gives_one_message(tmp_path, monkeypatch, capsys):
    calls = fake_datasets(monkeypatch, offline)
    with pytest.raises(SystemExit) as exc:
        quickstart.load_sst2(tmp_path)
    message = str(exc.value.code)
    assert calls == [(("nyu-mll/glue", "sst2"), {})]
    assert message.startswith(f"SST-2 not found: {tmp_path} has no train.tsv and dev.tsv")
    assert "ConnectionError: Couldn't reach 'nyu-mll/glue' on the Hub" in message
    assert "more detail" not in message  # the cause's first line only
    for part in (
        "https://gluebenchmark.com/tasks",
        "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip",
        "nyu-mll/glue, config sst2",
        "DIR/train.tsv and DIR/dev.tsv",
        "tab-separated",
        "header line `sentence<TAB>label`",
        "label 0 = negative, 1 = positive",
        "csv.QUOTE_NONE",
        "--data-dir DIR",
        "nox -s quickstart -- --data-dir DIR",
        *(f"\n    {line}\n" for line in quickstart.MAKE_TSV_SNIPPET.splitlines()),  # indented, line by line
    ):
        assert part in message, part
    assert "Traceback" not in capsys.readouterr().err


def test_without_datasets_installed_the_same_message(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(SystemExit) as exc:
        quickstart.load_sst2(tmp_path)
    message = str(exc.value.code)
    assert "(the `datasets` package is not installed)" in message
    assert all(f"\n    {line}\n" in message for line in quickstart.MAKE_TSV_SNIPPET.splitlines())


def test_hub_rows_are_returned_as_sentence_label_pairs(tmp_path, monkeypatch):
    fake_datasets(monkeypatch, hub_rows)
    train, dev, source = quickstart.load_sst2(tmp_path)
    assert train == TRAIN and dev == DEV
    assert all(isinstance(s, str) and isinstance(y, int) for s, y in train + dev)
    assert source == 'datasets.load_dataset("nyu-mll/glue", "sst2")'


def test_only_one_file_falls_back_to_the_hub(tmp_path, monkeypatch):
    write_tsv(tmp_path / "train.tsv", "sentence\tlabel", TRAIN)
    calls = fake_datasets(monkeypatch, hub_rows)
    assert quickstart.load_sst2(tmp_path)[:2] == (TRAIN, DEV)
    assert len(calls) == 1


def test_tsv_files_are_read_without_the_hub(tmp_path, monkeypatch):
    write_tsv(tmp_path / "train.tsv", "sentence\tlabel", [*TRAIN, ('he said "no"', 0)])
    write_tsv(tmp_path / "dev.tsv", "sentence\tlabel", DEV)
    calls = fake_datasets(monkeypatch, offline)
    train, dev, source = quickstart.load_sst2(tmp_path)
    assert train == [*TRAIN, ('he said "no"', 0)]  # quoting off: quote characters are text
    assert dev == DEV and source == str(tmp_path)
    assert calls == []


def test_columns_after_sentence_and_label_are_ignored(tmp_path):
    (tmp_path / "dev.tsv").write_text(
        "sentence\tlabel\tidx\n" + "".join(f"{s}\t{y}\t{i}\n" for i, (s, y) in enumerate(DEV))
    )
    assert quickstart.read_tsv(tmp_path / "dev.tsv") == DEV


@pytest.mark.parametrize(
    ("header", "rows", "expected"),
    [
        ("label\tsentence", DEV, "expected the header line 'sentence<TAB>label'"),
        ("", [], "expected the header line 'sentence<TAB>label'"),
        ("sentence\tlabel", [("good", "positive")], "line 2: expected 'sentence<TAB>label' with label 0 or 1"),
    ],
)
def test_malformed_files_give_a_clear_error(tmp_path, monkeypatch, header, rows, expected):
    write_tsv(tmp_path / "train.tsv", "sentence\tlabel", TRAIN)
    (tmp_path / "dev.tsv").write_text(
        (header + "\n" if header else "") + "".join(f"{s}\t{y}\n" for s, y in rows), encoding="utf-8"
    )
    calls = fake_datasets(monkeypatch, hub_rows)
    with pytest.raises(quickstart.DataFormatError, match=expected):
        quickstart.read_tsv(tmp_path / "dev.tsv")
    with pytest.raises(SystemExit) as exc:
        quickstart.load_sst2(tmp_path)
    assert str(exc.value.code).startswith(f"{tmp_path / 'dev.tsv'}")
    assert expected.split(":")[-1].strip() in str(exc.value.code)
    assert calls == []  # a broken local file is reported, not silently replaced by the Hub copy


def test_the_printed_snippet_writes_files_that_load(tmp_path, monkeypatch):
    calls = fake_datasets(monkeypatch, hub_rows)
    monkeypatch.chdir(tmp_path)
    exec(quickstart.MAKE_TSV_SNIPPET, {})
    assert [kwargs["split"] for _, kwargs in calls] == ["train", "validation"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.tsv", "train.tsv"]
    fake_datasets(monkeypatch, offline)
    assert quickstart.load_sst2(tmp_path) == (TRAIN, DEV, str(tmp_path))
