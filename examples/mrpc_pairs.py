#!/usr/bin/env python
"""MRPC paraphrase detection on sentence pairs: an adapter and a classification head, accuracy and F1.

Usage::

    python examples/mrpc_pairs.py [--data-root DIR] [--train-size N] [--epochs E] [--adapter CONFIG]

all-MiniLM-L6-v2 as ``BertAdapterModel``; both sentences go in one input
(``[CLS] s1 [SEP] s2 [SEP]``, token types 0 and 1)::

    model.add_adapter("mrpc", config="seq_bn")
    model.add_classification_head("mrpc", num_labels=2)
    model.train_adapter("mrpc")
    AdapterTrainer(model=model, ...).train()

Data: ``<data-root>/mrpc/{train,dev}.tsv`` (header ``Quality #1 ID #2 ID #1 String #2 String``,
read with quoting off: the text has unbalanced quotes). Defaults: all 3,668 training pairs, max
length 128, 3 epochs, batch 32, lr 3e-3 (linear schedule, 10% warm-up; at lr 1e-3 and 2 epochs the
adapter barely leaves the majority class). Metrics on the 408 dev pairs: accuracy and F1 of the
paraphrase class (label 1), as GLUE reports them.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any

import common
import torch

TASK = "mrpc"
COLUMNS = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]


def read_mrpc(path: Path) -> list[tuple[str, str, int]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if [h.strip() for h in header] != COLUMNS:
            raise ValueError(f"{path}: expected the header {COLUMNS}, got {header!r}")
        return [(row[3].strip(), row[4].strip(), int(row[0])) for row in reader if row]


def accuracy_and_f1(predictions: list[int], labels: list[int]) -> dict[str, float]:
    """Accuracy, and F1 with label 1 (paraphrase) as the positive class."""
    pairs = list(zip(predictions, labels, strict=True))
    tp = sum(1 for p, y in pairs if p == 1 and y == 1)
    fp = sum(1 for p, y in pairs if p == 1 and y == 0)
    fn = sum(1 for p, y in pairs if p == 0 and y == 1)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"accuracy": sum(int(p == y) for p, y in pairs) / len(pairs), "f1": f1}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.base_parser(
        __doc__, train_size=3668, max_length=128, epochs=3, batch_size=32, adapter="seq_bn", lr=3e-3
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    common.seed_everything(args.seed)
    from transformers import DataCollatorWithPadding

    folder = args.data_root / "mrpc"
    train_rows = common.subset(read_mrpc(folder / "train.tsv"), args.train_size, args.seed)
    dev_rows = common.subset(read_mrpc(folder / "dev.tsv"), args.eval_size, args.seed)
    model, tokenizer = common.load_model_and_tokenizer(args.model_dir, args.seed)
    model.add_adapter(TASK, config=args.adapter)
    model.add_classification_head(TASK, num_labels=2, id2label={0: "not_equivalent", 1: "equivalent"})
    model.train_adapter(TASK)
    params = common.count_parameters(model)
    print(f"MRPC: {len(train_rows)} training pairs, {len(dev_rows)} dev; trainable {params['trainable']:,}")

    def encode(rows: list[tuple[str, str, int]]) -> list[dict[str, Any]]:
        first, second, labels = (list(column) for column in zip(*rows, strict=True))
        return common.encode_labelled(tokenizer, first, labels, args.max_length, pairs=second)

    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
    stats = common.train(model, encode(train_rows), collator, args, common.output_dir(args, TASK))
    predictions = common.predict_classes(model, encode(dev_rows), collator)
    metrics = accuracy_and_f1(predictions, [y for _, _, y in dev_rows])
    stats |= {"train_examples": len(train_rows), "eval_examples": len(dev_rows), **params}
    stats["total_seconds"] = time.perf_counter() - t0
    return common.report("MRPC", metrics, stats, args)


if __name__ == "__main__":
    main()
    sys.exit(0)
