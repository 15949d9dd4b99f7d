"""AdapterModel classes of the encoder-decoder families: the family's bare model plus flexible heads.

Each is :class:`Seq2SeqAdapterModelBase` before the family's ``PreTrainedModel`` and transformers'
``GenerationMixin``. The body is ``self.<base_model_prefix>`` (``self.transformer`` for T5 and mT5,
``self.model`` for the BART family), as in transformers' static head classes and the reference
library's AdapterModels, so static checkpoints load (their head converted) and adapter and head
files move between the libraries.

Heads (the reference library's set): ``seq2seq_lm`` (the vocabulary projection, tied to the shared
embeddings where the config ties them), ``classification``/``multilabel_classification`` (the
decoder's state at the last ``<eos>`` of ``input_ids``, as ``XxxForSequenceClassification``) and
``question_answering`` (start/end logits per decoder position). ``generate()`` runs on the active
seq2seq LM head, also under ``Parallel`` (one sequence per branch and prompt).
"""

from __future__ import annotations

import torch
from transformers import (
    BartModel,
    BartPreTrainedModel,
    GenerationMixin,
    MBartModel,
    MBartPreTrainedModel,
    MT5Model,
    MT5PreTrainedModel,
    PLBartModel,
    PLBartPreTrainedModel,
    T5Model,
    T5PreTrainedModel,
)
from transformers.models.bart.modeling_bart import shift_tokens_right as bart_shift
from transformers.models.mbart.modeling_mbart import shift_tokens_right as mbart_shift
from transformers.models.plbart.modeling_plbart import shift_tokens_right as plbart_shift

from adapters.heads.seq2seq import Seq2SeqAdapterModelBase


class _T5Family(Seq2SeqAdapterModelBase):
    # A converted T5ForQuestionAnswering reads the unscaled decoder output (see Seq2SeqAdapterModelBase).
    unscaled_qa_architectures = ("T5ForQuestionAnswering",)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return self._shift_right(labels)

    def scales_decoder_output(self) -> bool:
        # transformers 5 keeps a saved tie_word_embeddings=False (T5 v1.1) as scale_decoder_outputs=False.
        return bool(getattr(self.config, "scale_decoder_outputs", False))


class T5AdapterModel(_T5Family, T5PreTrainedModel, GenerationMixin):
    """T5 with adapters and flexible heads.

    Where ``config.scale_decoder_outputs`` is set (original T5, tied embeddings), LM and QA heads
    read the decoder output times ``d_model ** -0.5``, as ``T5ForConditionalGeneration`` projects it.

    Example:
        >>> from adapters import AutoAdapterModel
        >>> model = AutoAdapterModel.from_pretrained("google-t5/t5-small")  # doctest: +SKIP
        >>> model.add_adapter("sum", config="seq_bn")  # doctest: +SKIP
        >>> model.add_seq2seq_lm_head("sum")  # doctest: +SKIP
    """

    base_model_class = T5Model


class MT5AdapterModel(_T5Family, MT5PreTrainedModel, GenerationMixin):
    """mT5 with adapters and flexible heads (``MT5ForConditionalGeneration`` does not rescale)."""

    base_model_class = MT5Model


class _BartFamily(Seq2SeqAdapterModelBase):
    _shift = staticmethod(bart_shift)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return self._shift(labels, self.config.pad_token_id, self.config.decoder_start_token_id)


class BartAdapterModel(_BartFamily, BartPreTrainedModel, GenerationMixin):
    """BART with adapters and flexible heads; classification reads the decoder's last ``<eos>`` state.

    Example:
        >>> from adapters import AutoAdapterModel
        >>> model = AutoAdapterModel.from_pretrained("facebook/bart-base")  # doctest: +SKIP
        >>> model.add_classification_head("mnli", num_labels=3)  # doctest: +SKIP
    """

    base_model_class = BartModel


class MBartAdapterModel(_BartFamily, MBartPreTrainedModel, GenerationMixin):
    """mBART with adapters and flexible heads (its decoder starts with the language id, as ``MBartModel``)."""

    base_model_class = MBartModel

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return mbart_shift(labels, self.config.pad_token_id)


class PLBartAdapterModel(_BartFamily, PLBartPreTrainedModel, GenerationMixin):
    """PLBART with adapters and flexible heads (see :class:`MBartAdapterModel`)."""

    base_model_class = PLBartModel

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return plbart_shift(labels, self.config.pad_token_id)


__all__ = [
    "BartAdapterModel",
    "MBartAdapterModel",
    "MT5AdapterModel",
    "PLBartAdapterModel",
    "T5AdapterModel",
]
