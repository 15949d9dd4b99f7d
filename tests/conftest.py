"""Shared fixtures of the cross-package tests: tiny random models built in the test."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

import adapters
from adapters.testing import randomize_adapter

TINY_BERT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    vocab_size=100,
    max_position_embeddings=64,
)


def tiny_bert(**overrides) -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(**{**TINY_BERT, **overrides})).eval()


def tiny_bert_classifier(**overrides) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**{**TINY_BERT, "num_labels": 3, **overrides})).eval()


def with_random_adapters(configs: dict[str, str], model=None):
    """``model`` (a 3-layer tiny BERT by default) with one adapter per ``name: config``, every weight random."""
    model = model if model is not None else tiny_bert(num_hidden_layers=3)
    adapters.init(model)
    for seed, (name, config) in enumerate(configs.items()):
        model.add_adapter(name, config)
        randomize_adapter(model, name, std=0.3, seed=seed)
    return model


def padded_batch(rows: int) -> dict[str, torch.Tensor]:
    """``rows`` examples of 5 tokens, the last one padded at its end (for routing tests)."""
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, 100, (rows, 5), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[-1, -2:] = 0
    return {"input_ids": input_ids, "attention_mask": mask}


def each_adapter_alone(model, names, sizes, inputs) -> torch.Tensor:
    """The outputs of each adapter alone on its slice of ``inputs`` (what a BatchSplit must equal)."""
    parts, start = [], 0
    for name, size in zip(names, sizes, strict=True):
        if size:  # (the model cannot run an empty batch)
            model.set_active_adapters(name)
            parts.append(model(**{k: v[start : start + size] for k, v in inputs.items()}).last_hidden_state)
        start += size
    return torch.cat(parts)


@pytest.fixture
def inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 100, (2, 7), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[1, -2:] = 0
    return {"input_ids": input_ids, "attention_mask": mask}


def pytest_configure(config: pytest.Config) -> None:
    # Part of the default run (CI included): the marker only lets `-m distributed` pick them out.
    config.addinivalue_line("markers", "distributed: launches torchrun (2 CPU processes, gloo); runs in CI too")
    config.addinivalue_line(
        "markers", "crash: SIGKILLs saving processes (ADAPTERS_CRASH_TRIALS, default 20: a few seconds); runs in CI too"
    )
