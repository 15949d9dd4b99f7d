"""Training adapters with ``transformers.Trainer``: checkpoints hold adapters and heads, not the model.

``AdapterTrainer`` and ``Seq2SeqAdapterTrainer`` are imported on first use: importing
``transformers.Trainer`` takes seconds, and ``import adapters`` must not pay for it.
"""

from __future__ import annotations

from typing import Any

from . import fusion_checkpoint as _fusion_checkpoint  # noqa: F401  (registers the "fusion" checkpoint kind)
from .checkpoint import CheckpointKind, checkpoint_items, load_checkpoint, register_checkpoint_kind, save_checkpoint
from .guard import check_adapter_training

_LAZY = ("AdapterTrainer", "Seq2SeqAdapterTrainer")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdapterTrainer",
    "CheckpointKind",
    "Seq2SeqAdapterTrainer",
    "check_adapter_training",
    "checkpoint_items",
    "load_checkpoint",
    "register_checkpoint_kind",
    "save_checkpoint",
]
