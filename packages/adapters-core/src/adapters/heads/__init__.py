"""Flexible prediction heads and the AdapterModel classes' head API.

Heads are named modules in ``model.heads`` (weight keys ``heads.<name>.<layer>.<param>``, as in the
reference library); ``head_config.json`` + ``model_head.safetensors`` store one head.
"""

from .auto import AutoAdapterModel, adapter_model_class
from .base import MultiHeadOutput, PredictionHead
from .classification import (
    ClassificationHead,
    ImageClassificationHead,
    MultiLabelClassificationHead,
    MultipleChoiceHead,
    QuestionAnsweringHead,
    TaggingHead,
)
from .conversion import StaticHead, static_head
from .decoder import DECODER_HEAD_TYPES, DecoderAdapterModelBase
from .dependency_parsing import Biaffine, BiaffineParsingHead, DependencyParsingOutput
from .language_modeling import BertStyleMaskedLMHead, CausalLMHead, MaskedLMHead, Seq2SeqLMHead
from .mixin import ModelWithFlexibleHeadsAdaptersMixin, heads_of_setup
from .model import DEFAULT_HEAD, ENCODER_HEAD_TYPES, AdapterModelBase, last_token_states
from .registry import BUILTIN_HEADS, register_head
from .seq2seq import SEQ2SEQ_HEAD_TYPES, Seq2SeqAdapterModelBase, eos_states

__all__ = [
    "BUILTIN_HEADS",
    "DECODER_HEAD_TYPES",
    "DEFAULT_HEAD",
    "ENCODER_HEAD_TYPES",
    "SEQ2SEQ_HEAD_TYPES",
    "AdapterModelBase",
    "AutoAdapterModel",
    "BertStyleMaskedLMHead",
    "Biaffine",
    "BiaffineParsingHead",
    "CausalLMHead",
    "ClassificationHead",
    "DecoderAdapterModelBase",
    "DependencyParsingOutput",
    "ImageClassificationHead",
    "MaskedLMHead",
    "ModelWithFlexibleHeadsAdaptersMixin",
    "MultiHeadOutput",
    "MultiLabelClassificationHead",
    "MultipleChoiceHead",
    "PredictionHead",
    "QuestionAnsweringHead",
    "Seq2SeqAdapterModelBase",
    "Seq2SeqLMHead",
    "StaticHead",
    "TaggingHead",
    "adapter_model_class",
    "eos_states",
    "heads_of_setup",
    "last_token_states",
    "register_head",
    "static_head",
]
