#!/usr/bin/env python
"""Extractive question answering (SQuAD v1.1 format): an adapter and a QA head, exact match and F1.

Usage::

    python examples/squad_qa.py [--data-root DIR] [--train-size N] [--max-length L] [--doc-stride S]

all-MiniLM-L6-v2 as ``BertAdapterModel``::

    model.add_adapter("squad", config="seq_bn")
    model.add_qa_head("squad")             # a start and an end logit per token
    model.train_adapter("squad")
    AdapterTrainer(model=model, ...).train()

Data: ``<data-root>/squad/train_subset.json`` (5,165 questions of 26 SQuAD v1.1 train articles)
for training and ``xquad_en_dev.json`` (1,190 questions of the SQuAD v1.1 dev set, the English
XQuAD) for evaluation.

Each question is paired with its context (``[CLS] question [SEP] context [SEP]``); a context longer
than ``--max-length`` is cut into windows overlapping by ``--doc-stride`` tokens. The answer's
character span is mapped to tokens through the fast tokenizer's offset mapping; a window that does
not hold the whole answer is labelled with the ``[CLS]`` position. For evaluation, the
``--n-best`` best start and end tokens of every window make candidate spans (both inside the
context, end not before start, at most ``--max-answer-length`` tokens); the highest start + end
logit over all windows of a question wins, and its text is cut from the context by the offsets.
Exact match and F1 are those of the official ``evaluate-v1.1.py`` (lower case, no punctuation, no
articles, single spaces; the best over the gold answers), as fractions.

Defaults: 2,000 training questions (a seeded shuffle), max length 256, stride 96, 2 epochs, batch
16, lr 3e-3 (linear schedule, 10% warm-up), all 1,190 evaluation questions.
"""

from __future__ import annotations

import json
import re
import string
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import torch

TASK = "squad"
PUNCTUATION = frozenset(string.punctuation)


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str
    answers: tuple[str, ...]
    answer_start: int  # of the first answer, in characters


def read_squad(path: Path) -> list[Question]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)["data"]
    return [
        Question(
            id=qa["id"],
            # some SQuAD questions start with a run of spaces, which only waste window length
            question=qa["question"].lstrip(),
            context=paragraph["context"],
            answers=tuple(a["text"] for a in qa["answers"]),
            answer_start=qa["answers"][0]["answer_start"],
        )
        for article in data
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]


# ----------------------------------------------------------------------------------------------
# features
# ----------------------------------------------------------------------------------------------
def tokenize(questions: list[Question], tokenizer: Any, max_length: int, stride: int) -> Any:
    return tokenizer(
        [q.question for q in questions],
        [q.context for q in questions],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )


def train_features(questions: list[Question], tokenizer: Any, max_length: int, stride: int) -> list[dict[str, Any]]:
    """One feature per window, with the answer's token ``start_positions``/``end_positions`` (0: not in it)."""
    enc = tokenize(questions, tokenizer, max_length, stride)
    features = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        question = questions[enc["overflow_to_sample_mapping"][i]]
        sequence_ids = enc.sequence_ids(i)
        context = [j for j, s in enumerate(sequence_ids) if s == 1]
        first, last = context[0], context[-1]
        start_char = question.answer_start
        end_char = start_char + len(question.answers[0])
        if offsets[first][0] > start_char or offsets[last][1] < end_char:
            start = end = 0  # the answer is not (wholly) in this window: point at [CLS]
        else:
            start = first
            while start <= last and offsets[start][0] <= start_char:
                start += 1
            start -= 1  # the last token that begins at or before the answer
            end = last
            while end >= first and offsets[end][1] >= end_char:
                end -= 1
            end += 1  # the first token that ends at or after the answer's end
        feature = {k: enc[k][i] for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc}
        features.append({**feature, "start_positions": start, "end_positions": end})
    return features


def eval_features(
    questions: list[Question], tokenizer: Any, max_length: int, stride: int
) -> tuple[list[dict[str, Any]], list[tuple[int, list[tuple[int, int] | None]]]]:
    """Model inputs per window, and per window (its question's index, offsets of context tokens only)."""
    enc = tokenize(questions, tokenizer, max_length, stride)
    features, windows = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        sequence_ids = enc.sequence_ids(i)
        features.append({k: enc[k][i] for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc})
        context_offsets = [tuple(o) if s == 1 else None for o, s in zip(offsets, sequence_ids, strict=True)]
        windows.append((enc["overflow_to_sample_mapping"][i], context_offsets))
    return features, windows


# ----------------------------------------------------------------------------------------------
# answers
# ----------------------------------------------------------------------------------------------
def best_answers(
    questions: list[Question],
    windows: list[tuple[int, list[tuple[int, int] | None]]],
    outputs: list[dict[str, torch.Tensor]],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> list[str]:
    """Each question's best-scoring span (start + end logit) over all its windows, as context text."""
    best: list[tuple[float, str]] = [(float("-inf"), "") for _ in questions]
    for (index, offsets), out in zip(windows, outputs, strict=True):
        start_logits, end_logits = out["start_logits"], out["end_logits"]
        starts = start_logits.topk(min(n_best, len(offsets))).indices.tolist()
        ends = end_logits.topk(min(n_best, len(offsets))).indices.tolist()
        context = questions[index].context
        for s in starts:
            for e in ends:
                if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(start_logits[s] + end_logits[e])
                if score > best[index][0]:
                    best[index] = (score, context[offsets[s][0] : offsets[e][1]])
    return [text for _, text in best]


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lower case, punctuation and articles removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], questions: list[Question]) -> dict[str, float]:
    """Exact match and F1, each the best over a question's gold answers, averaged over questions."""
    exact = f1 = 0.0
    for prediction, question in zip(predictions, questions, strict=True):
        exact += max(float(normalize_answer(prediction) == normalize_answer(g)) for g in question.answers)
        f1 += max(token_f1(prediction, g) for g in question.answers)
    return {"exact_match": exact / len(questions), "f1": f1 / len(questions)}


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.base_parser(
        __doc__, train_size=2000, max_length=256, epochs=2, batch_size=16, adapter="seq_bn", lr=3e-3
    )
    ap.add_argument("--doc-stride", type=int, default=96, help="tokens shared by consecutive windows (default 96)")
    ap.add_argument("--n-best", type=int, default=20, help="start and end candidates per window (default 20)")
    ap.add_argument("--max-answer-length", type=int, default=30, help="longest answer in tokens (default 30)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    common.seed_everything(args.seed)
    from transformers import DataCollatorWithPadding

    folder = args.data_root / "squad"
    train_questions = common.subset(read_squad(folder / "train_subset.json"), args.train_size, args.seed)
    eval_questions = common.subset(read_squad(folder / "xquad_en_dev.json"), args.eval_size, args.seed)
    model, tokenizer = common.load_model_and_tokenizer(args.model_dir, args.seed)
    model.add_adapter(TASK, config=args.adapter)
    model.add_qa_head(TASK)
    model.train_adapter(TASK)
    params = common.count_parameters(model)

    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
    features = train_features(train_questions, tokenizer, args.max_length, args.doc_stride)
    print(
        f"SQuAD: {len(train_questions)} training questions ({len(features)} windows), {len(eval_questions)} "
        f"evaluation questions; trainable {params['trainable']:,}"
    )
    stats = common.train(model, features, collator, args, common.output_dir(args, TASK))
    inputs, windows = eval_features(eval_questions, tokenizer, args.max_length, args.doc_stride)
    outputs = common.predict(model, inputs, collator, keys=("start_logits", "end_logits"), per_token=True)
    predictions = best_answers(eval_questions, windows, outputs, args.n_best, args.max_answer_length)
    metrics = squad_scores(predictions, eval_questions)
    stats |= {"train_examples": len(train_questions), "eval_examples": len(eval_questions), **params}
    stats["total_seconds"] = time.perf_counter() - t0
    return common.report("SQuAD QA", metrics, stats, args)


if __name__ == "__main__":
    main()
    sys.exit(0)
