"""Reproducible parameter initialisation."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Seed torch's RNG for the block when ``seed`` is given, restoring the outer RNG state after."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


_VALUES_NEEDED = contextvars.ContextVar("adapters_initial_values_needed", default=True)


@contextlib.contextmanager
def initial_values_unneeded() -> Iterator[None]:
    """Adapters built in this block get their values elsewhere (a weights file) or need their shapes only.

    Methods then skip initialisations that need more than the model: ``prompt_init="from_string"``
    needs the model's tokenizer, which a saved prompt (its vectors are in the file) does not.
    """
    token = _VALUES_NEEDED.set(False)
    try:
        yield
    finally:
        _VALUES_NEEDED.reset(token)


def initial_values_needed() -> bool:
    """False inside :func:`initial_values_unneeded`: the adapter's initial values will not be used."""
    return _VALUES_NEEDED.get()
