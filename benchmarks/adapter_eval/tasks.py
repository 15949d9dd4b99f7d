"""The evaluation tasks: read, select the training subset, tokenise once, batch once.

Everything a run needs is built once per task and shared by every run, so all methods see
exactly the same sentences in exactly the same order, and a training step does no tokenising,
padding or host-to-device copying.
"""

from __future__ import annotations

import csv
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

DATA_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data"


@dataclass(frozen=True)
class Example:
    """One labelled example; ``text_b`` is the second sentence of a pair task.

    Example:
        >>> Example("a fine film", None, 1).label
        1
    """

    text_a: str
    text_b: str | None
    label: int


@dataclass(frozen=True)
class TaskSpec:
    """A task's defaults.

    Example:
        >>> TASKS["sst2"].max_length
        64
    """

    name: str
    folder: str
    max_length: int
    epochs: int
    num_labels: int = 2
    report_f1: bool = False  # MRPC is also reported with F1 of the paraphrase class, as in GLUE


TASKS: dict[str, TaskSpec] = {
    # The setup.
    "sst2": TaskSpec("sst2", "sst2", max_length=64, epochs=2),
    # Sentence pairs: 64 tokens would cut a third of the pairs, 128 cuts none. 3 epochs: with
    # 3,668 pairs 2 epochs are only 230 steps, and the majority class alone gives 68.4%.
    "mrpc": TaskSpec("mrpc", "mrpc", max_length=128, epochs=3, report_f1=True),
}


def _read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    # QUOTE_NONE: both files contain unbalanced quote characters.
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.strip() for h in next(reader)]
        return header, [row for row in reader if row]


def read_sst2(path: Path) -> list[Example]:
    header, rows = _read_tsv(path)
    if header[:2] != ["sentence", "label"]:
        raise ValueError(f"{path}: expected header 'sentence<TAB>label', got {header!r}")
    return [Example(row[0].strip(), None, int(row[1])) for row in rows]


def read_mrpc(path: Path) -> list[Example]:
    header, rows = _read_tsv(path)
    if header[:1] != ["Quality"] or len(header) != 5:
        raise ValueError(f"{path}: expected the GLUE MRPC header 'Quality<TAB>#1 ID<TAB>...', got {header!r}")
    return [Example(row[3].strip(), row[4].strip(), int(row[0])) for row in rows]


READERS = {"sst2": read_sst2, "mrpc": read_mrpc}


def load_task(spec: TaskSpec, data_root: Path = DATA_ROOT) -> tuple[list[Example], list[Example]]:
    """(train, dev) examples of a task from ``data_root/<folder>/{train,dev}.tsv``."""
    folder = data_root / spec.folder
    if not (folder / "train.tsv").is_file() or not (folder / "dev.tsv").is_file():
        raise SystemExit(f"{spec.name}: no train.tsv/dev.tsv under {folder}; pass --data-root DIR")
    read = READERS[spec.name]
    return read(folder / "train.tsv"), read(folder / "dev.tsv")


def select_training(train: Sequence[Example], size: int, data_seed: int) -> list[Example]:
    """The first ``size`` examples after a seeded shuffle: the same subset for every run."""
    rows = list(train)
    random.Random(data_seed).shuffle(rows)
    return rows[:size]


def fingerprint(examples: Sequence[Example]) -> str:
    """sha256 of the examples in order, recorded so two result files can be checked to share data."""
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(f"{ex.text_a}\t{ex.text_b or ''}\t{ex.label}\n".encode())
    return digest.hexdigest()


@dataclass
class Encoded:
    """Token ids of every example, unpadded."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: list[int]


def encode(examples: Sequence[Example], tokenizer, max_length: int) -> Encoded:
    texts_a = [ex.text_a for ex in examples]
    pairs = examples and examples[0].text_b is not None
    texts_b = [ex.text_b for ex in examples] if pairs else None
    enc = tokenizer(texts_a, texts_b, truncation=True, max_length=max_length)
    token_types = enc.get("token_type_ids") or [[0] * len(ids) for ids in enc["input_ids"]]
    return Encoded(enc["input_ids"], token_types, [ex.label for ex in examples])


def collate(encoded: Encoded, indices: Sequence[int], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """One padded batch (to the longest member, rounded up to a multiple of 8) on ``device``."""
    longest = max(len(encoded.input_ids[i]) for i in indices)
    width = -(-longest // 8) * 8
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(indices), width), dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(encoded.input_ids[i])
        ids[row, :n] = torch.tensor(encoded.input_ids[i])
        types[row, :n] = torch.tensor(encoded.token_type_ids[i])
        mask[row, :n] = 1
    labels = torch.tensor([encoded.labels[i] for i in indices])
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": labels}
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@dataclass
class PreparedTask:
    """Batches of one task, built once: ``train_epochs[e]`` is epoch ``e``'s batch list."""

    name: str
    train_epochs: list[list[dict[str, torch.Tensor]]]
    dev_batches: list[dict[str, torch.Tensor]]
    dev_labels: torch.Tensor
    num_labels: int
    report_f1: bool
    n_train: int
    info: dict = field(default_factory=dict)


def prepare(
    name: str,
    train: Sequence[Example],
    dev: Sequence[Example],
    tokenizer,
    *,
    max_length: int,
    epochs: int,
    batch_size: int,
    data_seed: int,
    device: torch.device,
    eval_batch_size: int = 128,
    num_labels: int = 2,
    report_f1: bool = False,
) -> PreparedTask:
    """Tokenise and batch a task; epoch ``e`` visits the training set in a seeded order of its own."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    enc_train = encode(train, tokenizer, max_length)
    enc_dev = encode(dev, tokenizer, max_length)
    epochs_batches = []
    for epoch in range(epochs):
        order = list(range(len(train)))
        random.Random(data_seed * 1000 + epoch + 1).shuffle(order)
        epochs_batches.append(
            [collate(enc_train, order[i : i + batch_size], pad_id, device) for i in range(0, len(order), batch_size)]
        )
    dev_order = range(len(dev))
    dev_batches = [
        collate(enc_dev, dev_order[i : i + eval_batch_size], pad_id, device)
        for i in range(0, len(dev), eval_batch_size)
    ]
    truncated = sum(len(ids) >= max_length for ids in enc_train.input_ids)
    return PreparedTask(
        name=name,
        train_epochs=epochs_batches,
        dev_batches=dev_batches,
        dev_labels=torch.tensor(enc_dev.labels),
        num_labels=num_labels,
        report_f1=report_f1,
        n_train=len(train),
        info={
            "n_train": len(train),
            "n_dev": len(dev),
            "train_fingerprint": fingerprint(train),
            "train_truncated_at_max_length": truncated,
        },
    )
