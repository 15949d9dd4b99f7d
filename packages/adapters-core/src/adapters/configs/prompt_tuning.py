"""Prompt tuning config (Lester et al., 2021)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from ..errors import AdapterConfigError
from . import checks
from .base import AdapterConfig

_INITS = ("random_uniform", "from_string")
_COMBINES = ("prefix", "prefix_after_bos")


@dataclasses.dataclass(frozen=True)
class PromptTuningConfig(AdapterConfig):
    """``prompt_length`` learned soft-prompt vectors inserted into the sequence after the embeddings.

    ``combine="prefix"`` puts them before the first token, ``"prefix_after_bos"`` after it (so a
    head reading position 0 still reads ``[CLS]``/``<s>``). The attention mask is extended so every
    position sees the prompt. The model's hidden states include the prompt positions (sequence
    length ``prompt_length + L``), as in the reference library and PEFT. ``prompt_init`` is
    ``"random_uniform"`` (in ``[-0.5, 0.5]``) or ``"from_string"``: the word embeddings of
    ``prompt_init_text`` tokenized with the model's tokenizer (``config.tokenizer_name_or_path``,
    else ``config.name_or_path``), repeated or cut to ``prompt_length``.

    Example:
        >>> from adapters import PromptTuningConfig
        >>> PromptTuningConfig(prompt_length=20, combine="prefix_after_bos").prompt_length
        20
    """

    architecture: ClassVar[str | None] = "prompt_tuning"
    # A class constant in the reference format too (not saved in adapter_config.json).
    random_uniform_scale: ClassVar[float] = 0.5

    prompt_length: int = 10
    prompt_init: str = "random_uniform"
    prompt_init_text: str | None = None
    combine: str = "prefix"
    init_weights_seed: int | None = None

    field_rules: ClassVar[Mapping[str, checks.Rule]] = {
        "prompt_length": checks.POSITIVE_INT,
        "prompt_init": checks.one_of(_INITS),
        "combine": checks.one_of(_COMBINES),
        "init_weights_seed": checks.SEED,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompt_init == "from_string" and not self.prompt_init_text:
            raise AdapterConfigError("prompt_init='from_string' needs prompt_init_text (the text to start from).")

    @property
    def insert_at(self) -> int:
        """The sequence position where the prompt goes (0, or 1 after the first token)."""
        return 0 if self.combine == "prefix" else 1
