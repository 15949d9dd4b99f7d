"""AdapterModel classes of the BERT family: the family's base model plus flexible heads.

Each is the core's ``AdapterModelBase`` before the family's ``PreTrainedModel``; the body is
``self.<base_model_prefix>`` as in transformers' own head classes, so static checkpoints load
(their head converted) and adapter weight keys match the reference library's AdapterModels.
"""

from __future__ import annotations

from transformers import (
    AlbertModel,
    AlbertPreTrainedModel,
    BertGenerationEncoder,
    BertGenerationPreTrainedModel,
    BertModel,
    BertPreTrainedModel,
    DebertaModel,
    DebertaPreTrainedModel,
    DebertaV2Model,
    DebertaV2PreTrainedModel,
    DistilBertModel,
    DistilBertPreTrainedModel,
    ElectraModel,
    ElectraPreTrainedModel,
    RobertaModel,
    RobertaPreTrainedModel,
    XLMRobertaModel,
    XLMRobertaPreTrainedModel,
    XmodModel,
    XmodPreTrainedModel,
)

from adapters.heads import ENCODER_HEAD_TYPES, AdapterModelBase

# Bidirectional encoders without a decoder mode: no causal LM head.
_BIDIRECTIONAL_HEAD_TYPES = tuple(t for t in ENCODER_HEAD_TYPES if t != "causal_lm")


class BertAdapterModel(AdapterModelBase, BertPreTrainedModel):
    """BERT with adapters and flexible heads.

    Example:
        >>> from adapters import AutoAdapterModel
        >>> model = AutoAdapterModel.from_pretrained("bert-base-uncased")  # doctest: +SKIP
        >>> model.add_tagging_head("ner", num_labels=9)  # doctest: +SKIP
    """

    base_model_class = BertModel
    head_types = ENCODER_HEAD_TYPES


class RobertaAdapterModel(AdapterModelBase, RobertaPreTrainedModel):
    """RoBERTa with adapters and flexible heads (see :class:`BertAdapterModel`)."""

    base_model_class = RobertaModel
    head_types = ENCODER_HEAD_TYPES


class XLMRobertaAdapterModel(AdapterModelBase, XLMRobertaPreTrainedModel):
    """XLM-RoBERTa with adapters and flexible heads (see :class:`BertAdapterModel`)."""

    base_model_class = XLMRobertaModel
    head_types = ENCODER_HEAD_TYPES


class XmodAdapterModel(AdapterModelBase, XmodPreTrainedModel):
    """X-MOD with adapters and flexible heads; ``lang_ids`` go to the body as usual."""

    base_model_class = XmodModel
    head_types = ENCODER_HEAD_TYPES


class ElectraAdapterModel(AdapterModelBase, ElectraPreTrainedModel):
    """ELECTRA (discriminator or generator body) with adapters and flexible heads."""

    base_model_class = ElectraModel
    head_types = ENCODER_HEAD_TYPES


class DistilBertAdapterModel(AdapterModelBase, DistilBertPreTrainedModel):
    """DistilBERT with adapters and flexible heads; it has no pooler (``use_pooler`` heads are refused)."""

    base_model_class = DistilBertModel
    head_types = ENCODER_HEAD_TYPES


class AlbertAdapterModel(AdapterModelBase, AlbertPreTrainedModel):
    """ALBERT with adapters and flexible heads (LM heads project from ``embedding_size``)."""

    base_model_class = AlbertModel
    head_types = _BIDIRECTIONAL_HEAD_TYPES


class DebertaAdapterModel(AdapterModelBase, DebertaPreTrainedModel):
    """DeBERTa with adapters and flexible heads; no pooler in the body."""

    base_model_class = DebertaModel
    head_types = _BIDIRECTIONAL_HEAD_TYPES


class DebertaV2AdapterModel(AdapterModelBase, DebertaV2PreTrainedModel):
    """DeBERTa-v2/v3 with adapters and flexible heads; no pooler in the body."""

    base_model_class = DebertaV2Model
    head_types = _BIDIRECTIONAL_HEAD_TYPES


class BertGenerationAdapterModel(AdapterModelBase, BertGenerationPreTrainedModel):
    """BertGeneration (encoder, or decoder with ``is_decoder``) with adapters and LM heads."""

    base_model_class = BertGenerationEncoder
    head_types = ("masked_lm", "causal_lm")


