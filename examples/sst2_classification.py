#!/usr/bin/env python
"""SST-2 sentiment classification: a bottleneck adapter and a classification head, dev accuracy.

Usage::

    python examples/sst2_classification.py [--data-root DIR] [--train-size N] [--epochs E] [--adapter CONFIG]

all-MiniLM-L6-v2 as ``BertAdapterModel`` (``AutoAdapterModel``), then::

    model.add_adapter("sst2", config="seq_bn")
    model.add_classification_head("sst2", num_labels=2)
    model.train_adapter("sst2")          # freezes the body; adapter and head train
    AdapterTrainer(model=model, ...).train()

Data: ``<data-root>/sst2/{train,dev}.tsv`` (header ``sentence<TAB>label``, read with quoting off).
Defaults: 4,000 training sentences (a seeded shuffle of the 67,349), max length 64, 2 epochs,
batch 32, lr 1e-3 (linear schedule, 10% warm-up); the metric is accuracy on the 872 dev sentences.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any

import common
import torch

TASK = "sst2"


def read_sst2(path: Path) -> list[tuple[str, int]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if [h.strip() for h in header[:2]] != ["sentence", "label"]:
            raise ValueError(f"{path}: expected the header 'sentence<TAB>label', got {header!r}")
        return [(row[0].strip(), int(row[1])) for row in reader if row]


def accuracy(predictions: list[int], labels: list[int]) -> float:
    return sum(int(p == y) for p, y in zip(predictions, labels, strict=True)) / len(labels)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.base_parser(__doc__, train_size=4000, max_length=64, epochs=2, batch_size=32, adapter="seq_bn", lr=1e-3)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    common.seed_everything(args.seed)
    from transformers import DataCollatorWithPadding

    folder = args.data_root / "sst2"
    train_rows = common.subset(read_sst2(folder / "train.tsv"), args.train_size, args.seed)
    dev_rows = common.subset(read_sst2(folder / "dev.tsv"), args.eval_size, args.seed)
    model, tokenizer = common.load_model_and_tokenizer(args.model_dir, args.seed)
    model.add_adapter(TASK, config=args.adapter)
    model.add_classification_head(TASK, num_labels=2, id2label={0: "negative", 1: "positive"})
    model.train_adapter(TASK)
    params = common.count_parameters(model)
    print(f"SST-2: {len(train_rows)} training sentences, {len(dev_rows)} dev; trainable {params['trainable']:,}")

    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)

    def encode(rows: list[tuple[str, int]]) -> list[dict[str, Any]]:
        return common.encode_labelled(tokenizer, [s for s, _ in rows], [y for _, y in rows], args.max_length)

    stats = common.train(model, encode(train_rows), collator, args, common.output_dir(args, TASK))
    predictions = common.predict_classes(model, encode(dev_rows), collator)
    metrics = {"accuracy": accuracy(predictions, [y for _, y in dev_rows])}
    stats |= {"train_examples": len(train_rows), "eval_examples": len(dev_rows), **params}
    stats["total_seconds"] = time.perf_counter() - t0
    return common.report("SST-2", metrics, stats, args)


if __name__ == "__main__":
    main()
    sys.exit(0)
