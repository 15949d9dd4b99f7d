#!/usr/bin/env python
"""CoNLL-2003 named-entity recognition: an adapter and a tagging head, entity-level F1.

Usage::

    python examples/conll2003_ner.py [--data-root DIR] [--train-size N] [--eval-split valid|test]

all-MiniLM-L6-v2 as ``BertAdapterModel``::

    model.add_adapter("ner", config="seq_bn")
    model.add_tagging_head("ner", num_labels=9, id2label=...)
    model.train_adapter("ner")
    AdapterTrainer(model=model, ...).train()

Data: ``<data-root>/conll2003/{train,valid,test}.txt`` (``word POS chunk NER`` per line, blank
lines between sentences, ``-DOCSTART-`` lines skipped). The files use the original IOB1 tags
(``B-X`` only between two adjacent entities of one type); they are converted to IOB2 (``B-X``
starts every entity), whose 9 tags the head predicts. Each word is labelled on its first word
piece; the other pieces get -100 (no loss), and a word's prediction is its first piece's.

Defaults: 4,000 training sentences (a seeded shuffle of the 14,041), max length 128 word pieces
(words past it are predicted ``O``), 2 epochs, batch 32, lr 3e-3 (linear schedule, 10% warm-up).
The metric is entity-level precision, recall and F1 (micro-averaged over PER, ORG, LOC, MISC, as
conlleval counts them: an entity is right when its type, start and end all match) on the 3,250
validation sentences (``--eval-split test`` for the 3,453 test sentences).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import common
import torch

TASK = "ner"
LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
IGNORE = -100

Sentence = tuple[list[str], list[str]]  # words, IOB2 tags


def read_conll(path: Path) -> list[Sentence]:
    """Sentences of a 4-column CoNLL-2003 file, tags converted from IOB1 to IOB2."""
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if words:
                    sentences.append((words, iob1_to_iob2(tags)))
                words, tags = [], []
                continue
            words.append(fields[0])
            tags.append(fields[-1])
    if words:
        sentences.append((words, iob1_to_iob2(tags)))
    return sentences


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """IOB1 -> IOB2: an ``I-X`` that does not continue an entity of type X becomes ``B-X``.

    >>> iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-MISC"])
    ['B-PER', 'I-PER', 'O', 'B-LOC', 'B-LOC', 'B-MISC']
    """
    out: list[str] = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        previous = tag
    return out


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """The (type, first word, last word) spans of an IOB2 tag sequence.

    As conlleval reads a prediction: an ``I-X`` after ``O`` or after another type starts an entity
    too, so an ill-formed prediction still counts by its spans.

    >>> sorted(entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "B-ORG", "I-MISC"]))
    [('LOC', 3, 3), ('LOC', 4, 4), ('MISC', 6, 6), ('ORG', 5, 5), ('PER', 0, 1)]
    """
    spans: set[tuple[str, int, int]] = set()
    kind, start = None, 0
    for i, tag in enumerate([*tags, "O"]):  # the sentinel closes the last entity
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and label == kind
        if kind is not None and not continues:
            spans.add((kind, start, i - 1))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = label, i
    return spans


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 over entities (type and both boundaries must match)."""
    correct = found = expected = 0
    for g, p in zip(gold, predicted, strict=True):
        gold_spans, predicted_spans = entities(g), entities(p)
        correct += len(gold_spans & predicted_spans)
        found += len(predicted_spans)
        expected += len(gold_spans)
    precision = correct / found if found else 0.0
    recall = correct / expected if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_f1": f1, "precision": precision, "recall": recall}


def encode(sentences: list[Sentence], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """Word pieces of each sentence; ``labels`` on each word's first piece, -100 elsewhere."""
    label_ids = {tag: i for i, tag in enumerate(LABELS)}
    enc = tokenizer([words for words, _ in sentences], is_split_into_words=True, truncation=True, max_length=max_length)
    features = []
    for i, (_, tags) in enumerate(sentences):
        word_ids = enc.word_ids(i)
        labels = [
            label_ids[tags[w]] if w is not None and (j == 0 or word_ids[j - 1] != w) else IGNORE
            for j, w in enumerate(word_ids)
        ]
        features.append({**{k: enc[k][i] for k in enc}, "labels": labels, "word_ids": word_ids})
    return features


def predict_tags(
    model: Any, features: list[dict[str, Any]], sentences: list[Sentence], collator: Any
) -> list[list[str]]:
    """Each word's predicted tag (its first piece's argmax); words cut off by truncation get ``O``."""
    inputs = [{k: v for k, v in f.items() if k not in ("labels", "word_ids")} for f in features]
    predictions: list[list[str]] = []
    for out, feature, (words, _) in zip(
        common.predict(model, inputs, collator, per_token=True), features, sentences, strict=True
    ):
        best = out["logits"].argmax(-1).tolist()
        word_ids = feature["word_ids"]
        tags = ["O"] * len(words)
        for j, w in enumerate(word_ids):
            if w is not None and (j == 0 or word_ids[j - 1] != w):
                tags[w] = LABELS[best[j]]
        predictions.append(tags)
    return predictions


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.base_parser(
        __doc__, train_size=4000, max_length=128, epochs=2, batch_size=32, adapter="seq_bn", lr=3e-3
    )
    ap.add_argument("--eval-split", choices=("valid", "test"), default="valid")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    common.seed_everything(args.seed)
    from transformers import DataCollatorForTokenClassification

    folder = args.data_root / "conll2003"
    train_sentences = common.subset(read_conll(folder / "train.txt"), args.train_size, args.seed)
    eval_sentences = common.subset(read_conll(folder / f"{args.eval_split}.txt"), args.eval_size, args.seed)
    model, tokenizer = common.load_model_and_tokenizer(args.model_dir, args.seed)
    model.add_adapter(TASK, config=args.adapter)
    model.add_tagging_head(TASK, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)))
    model.train_adapter(TASK)
    params = common.count_parameters(model)
    print(
        f"CoNLL-2003: {len(train_sentences)} training sentences, {len(eval_sentences)} {args.eval_split}; "
        f"trainable {params['trainable']:,}"
    )

    collator = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=8)
    train_features = [
        {k: v for k, v in f.items() if k != "word_ids"} for f in encode(train_sentences, tokenizer, args.max_length)
    ]
    stats = common.train(model, train_features, collator, args, common.output_dir(args, TASK))
    eval_features = encode(eval_sentences, tokenizer, args.max_length)
    predicted = predict_tags(model, eval_features, eval_sentences, collator)
    metrics = entity_scores([tags for _, tags in eval_sentences], predicted)
    stats |= {"train_examples": len(train_sentences), "eval_examples": len(eval_sentences), **params}
    stats["total_seconds"] = time.perf_counter() - t0
    return common.report("CoNLL-2003 NER", metrics, stats, args)


if __name__ == "__main__":
    main()
    sys.exit(0)
