"""Smoke test of the evaluation harness (benchmarks/evaluate.py) on a tiny random model.

The real evaluation (``nox -s evaluate``) needs the all-MiniLM-L6-v2 package and takes hours on
a CPU; this runs the same code path (selection, batching, attaching, training, evaluating,
counting, tables, checks) in a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from adapter_eval import report  # noqa: E402
from adapter_eval.methods import METHODS, resolve_method, split_top_level  # noqa: E402
from adapter_eval.tasks import Example, prepare, read_mrpc, read_sst2, select_training  # noqa: E402
from adapter_eval.train import TrainSetup  # noqa: E402

WORDS = ["good", "great", "fine", "bad", "awful", "dull", "a", "movie", "film", "plot", "very"]


def _load_script():
    # Loaded under a private name: "evaluate" is also the name of a pip package.
    spec = importlib.util.spec_from_file_location("adapters_evaluate_script", BENCHMARKS / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _load_script()


@pytest.fixture(scope="module")
def tokenizer():
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    return BertTokenizer(vocab=vocab)


def tiny_factory(seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        vocab_size=len(WORDS) + 5,
        max_position_embeddings=64,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def sentiment(n: int) -> list[Example]:
    positive, negative = ["good", "great", "fine"], ["bad", "awful", "dull"]
    return [Example(f"a {(positive if i % 2 else negative)[i % 3]} movie", None, i % 2) for i in range(n)]


def test_selection_is_seeded_and_stable():
    rows = sentiment(50)
    first = select_training(rows, 20, data_seed=7)
    assert first == select_training(rows, 20, data_seed=7)
    assert first != select_training(rows, 20, data_seed=8)
    assert len(select_training(rows, 500, data_seed=7)) == 50


def test_method_table_and_parsing():
    assert split_top_level("lora[r=4,alpha=16],seq_bn") == ["lora[r=4,alpha=16]", "seq_bn"]
    for method in METHODS.values():
        assert 1 <= len(method.grid) <= 3 and method.default_lr in method.grid
    custom = resolve_method("lora[r=16]")
    assert custom.config == "lora[r=16]" and custom.grid == METHODS["lora"].grid
    assert custom.reference_accuracy is None


def test_parse_lrs(script):
    methods = [METHODS["full"], METHODS["lora"]]
    assert script.parse_lrs([], methods, grid=False) == {"full": [5e-5], "lora": [1e-3]}
    assert script.parse_lrs([], methods, grid=True)["lora"] == [1e-3, 3e-3, 1e-2]
    assert script.parse_lrs(["1e-3", "lora=2e-3,4e-3"], methods, grid=False) == {
        "full": [1e-3],
        "lora": [2e-3, 4e-3],
    }


def test_readers(tmp_path):
    sst = tmp_path / "sst.tsv"
    sst.write_text("sentence\tlabel\nit 's \"fine \t1\nbad \t0\n", encoding="utf-8")
    assert read_sst2(sst) == [Example("it 's \"fine", None, 1), Example("bad", None, 0)]
    mrpc = tmp_path / "mrpc.tsv"
    mrpc.write_text('Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA "b.\tA b.\n', encoding="utf-8")
    assert read_mrpc(mrpc) == [Example('A "b.', "A b.", 1)]


def test_evaluate_task_end_to_end(script, tokenizer):
    device = torch.device("cpu")
    task = prepare(
        "sst2",
        sentiment(24),
        sentiment(10),
        tokenizer,
        max_length=16,
        epochs=2,
        batch_size=8,
        data_seed=3,
        device=device,
    )
    assert len(task.train_epochs) == 2 and len(task.train_epochs[0]) == 3
    assert task.train_epochs[0][0]["input_ids"].shape[1] % 8 == 0
    methods = [resolve_method(n) for n in ("full", "seq_bn", "lora", "no_such_method")]
    lrs = script.parse_lrs(["full=1e-3", "seq_bn=1e-2,3e-2"], methods, grid=False)
    setup = TrainSetup(seed=0, device=device)
    rows = script.evaluate_task(task, methods, lrs, tiny_factory, setup)

    by = {(r["method"], r["lr"]): r for r in rows}
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "ok", "not available"]
    total = by[("full", 1e-3)]["model_params"]
    assert by[("full", 1e-3)]["trainable"] == total - (32 * 2 + 2)  # everything but the head
    assert by[("full", 1e-3)]["trainable_with_head"] == total
    lora = by[("lora", 1e-3)]
    assert lora["trainable"] == 2 * 2 * (32 * 8 + 8 * 32)  # q and v in 2 layers, r = 8
    assert lora["trainable_with_head"] == lora["trainable"] + 66
    assert lora["percent"] == pytest.approx(100 * lora["trainable"] / total)
    for r in rows[:4]:
        assert 0.0 <= r["dev_accuracy"] <= 1.0 and r["steps"] == 6 and len(r["epoch_losses"]) == 2
    assert "AdapterConfigError" in by[("no_such_method", 1e-3)]["message"]

    table = report.runs_table(rows)
    assert "| no_such_method | 0.001 |" in table and "not available" in table
    best = report.best_per_method(rows)
    assert best["no_such_method"]["status"] == "not available" and best["seq_bn"]["status"] == "ok"
    assert "| seq_bn | 0.01, 0.03 |" in report.best_table(rows, METHODS)
    checks = {c["check"].split(" at lr")[0].split(" within")[0]: c for c in report.checks(rows, METHODS)}
    # full and seq_bn have reference numbers but ran at other lrs; lora ran at its reference lr
    assert checks["full"]["status"] == checks["seq_bn"]["status"] == "SKIP"
    assert checks["lora"]["status"] == ("PASS" if 100 * lora["dev_accuracy"] >= 78.9 else "FAIL")
    assert checks["best adapter"]["status"] in ("PASS", "FAIL")


def test_pairs_report_f1(script, tokenizer):
    device = torch.device("cpu")
    pairs = [Example("a good movie", "a great film", 1), Example("a bad plot", "a fine film", 0)] * 4
    task = prepare(
        "mrpc",
        pairs,
        pairs,
        tokenizer,
        max_length=16,
        epochs=1,
        batch_size=4,
        data_seed=0,
        device=device,
        report_f1=True,
    )
    assert int(task.train_epochs[0][0]["token_type_ids"].max()) == 1  # the second sentence is segment 1
    rows = script.evaluate_task(task, [METHODS["lora"]], {"lora": [1e-2]}, tiny_factory, TrainSetup(0, device))
    assert rows[0]["status"] == "ok" and 0.0 <= rows[0]["dev_f1"] <= 1.0
    assert "dev F1" in report.runs_table(rows)


def test_issue_setup_detection():
    assert report.is_issue_setup(dict(report.ISSUE_SETUP))
    assert not report.is_issue_setup({**report.ISSUE_SETUP, "train_size": 64})


def test_main_writes_json_and_markdown(script, tokenizer, tmp_path):
    model_dir = tmp_path / "model"
    tiny_factory(0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "data" / "sst2"
    data.mkdir(parents=True)
    for split, n in (("train", 40), ("dev", 8)):
        lines = ["sentence\tlabel", *(f"{ex.text_a} \t{ex.label}" for ex in sentiment(n))]
        (data / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--model-dir", str(model_dir), "--data-root", str(tmp_path / "data"), "--out", str(out)]
    argv += ["--train-size", "16", "--epochs", "1", "--device", "cpu", "--methods", "full,lora,no_such_method"]
    assert script.main(argv) == 0  # informational checks only: not the issue's setup

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [r["status"] for r in results["runs"]] == ["ok", "ok", "not available"]
    assert results["setup"]["data_seed"] == 42 and results["setup"]["tasks"]["sst2"]["n_train"] == 16
    assert results["checks"]["sst2"]["binding"] is False
    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert "| lora | 0.001 |" in markdown and "Best learning rate per method" in markdown
