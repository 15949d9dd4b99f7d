"""Head types by name: the built-in ones and those registered by users or plugins."""

from __future__ import annotations

from .base import PredictionHead
from .classification import (
    ClassificationHead,
    ImageClassificationHead,
    MultiLabelClassificationHead,
    MultipleChoiceHead,
    QuestionAnsweringHead,
    TaggingHead,
)
from .dependency_parsing import BiaffineParsingHead
from .language_modeling import CausalLMHead, MaskedLMHead, Seq2SeqLMHead

# ``head_type`` (as saved in head configs) -> class; the names are the reference library's.
BUILTIN_HEADS: dict[str, type[PredictionHead]] = {
    "classification": ClassificationHead,
    "multilabel_classification": MultiLabelClassificationHead,
    "tagging": TaggingHead,
    "multiple_choice": MultipleChoiceHead,
    "question_answering": QuestionAnsweringHead,
    "dependency_parsing": BiaffineParsingHead,
    "masked_lm": MaskedLMHead,
    "causal_lm": CausalLMHead,
    "seq2seq_lm": Seq2SeqLMHead,
    "image_classification": ImageClassificationHead,
}

# Custom head types known to every model (``register_head``); models also keep their own.
CUSTOM_HEADS: dict[str, type[PredictionHead]] = {}


def register_head(head_type: str, head_class: type[PredictionHead]) -> None:
    """Make a custom head type known to every AdapterModel, so saved models and heads of that type load.

    The class is built as ``head_class(model, head_name, **config)``, where ``config`` is its
    saved ``config`` dict without ``head_type``.

    Example:
        >>> from adapters.heads import PredictionHead, register_head
        >>> class MyHead(PredictionHead): ...  # doctest: +SKIP
        >>> register_head("my_head", MyHead)  # doctest: +SKIP
    """
    if head_type in BUILTIN_HEADS:
        raise ValueError(f"{head_type!r} is a built-in head type; register the custom head under another name.")
    CUSTOM_HEADS[head_type] = head_class
