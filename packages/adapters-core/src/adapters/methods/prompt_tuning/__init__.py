"""Prompt tuning: the soft-prompt module and the method that inserts it after the embeddings."""

from .layer import PromptTuning
from .method import PromptTuningMethod

__all__ = ["PromptTuning", "PromptTuningMethod"]
