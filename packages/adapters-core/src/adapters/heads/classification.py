"""Sequence, token and span heads: classification (and regression), multi-label, multiple choice,
tagging, question answering, image classification.

Constructor arguments and ``config`` fields are those of the reference library's heads, so head
configs saved by either library rebuild the same layers here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import (
    ImageClassifierOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    Seq2SeqQuestionAnsweringModelOutput,
    Seq2SeqSequenceClassifierOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from .base import PredictionHead, is_seq2seq, label2id_of
from .language_modeling import _CACHE_FIELD, body_cache

IGNORE_INDEX = -100  # what CrossEntropyLoss skips


def _sequence_output(outputs: Any, loss: torch.Tensor | None, logits: torch.Tensor) -> Any:
    """A (seq2seq) sequence-classifier output carrying the base model's extra outputs."""
    if is_seq2seq(outputs):
        return Seq2SeqSequenceClassifierOutput(
            loss=loss,
            logits=logits,
            **{_CACHE_FIELD: body_cache(outputs)},
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )
    return SequenceClassifierOutput(
        loss=loss, logits=logits, hidden_states=outputs.get("hidden_states"), attentions=outputs.get("attentions")
    )


def single_label_loss(logits: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Mean squared error for one output (regression), cross-entropy otherwise."""
    if num_labels == 1:
        return nn.functional.mse_loss(logits.view(-1), labels.view(-1).to(logits.dtype))
    return nn.functional.cross_entropy(logits.view(-1, num_labels), labels.view(-1))


class ClassificationHead(PredictionHead):
    """Sequence classification (``num_labels=1``: regression) on the first token or the pooler output.

    Example:
        >>> model.add_classification_head("sst2", num_labels=2)  # doctest: +SKIP
    """

    head_type = "classification"
    reads_cls_output = True

    def __init__(
        self,
        model: nn.Module,
        head_name: str,
        num_labels: int = 2,
        layers: int = 2,
        activation_function: str | None = "tanh",
        id2label: dict | None = None,
        use_pooler: bool = False,
        bias: bool = True,
        dropout_prob: float | None = None,
    ) -> None:
        super().__init__(head_name)
        self.config = {
            "head_type": self.head_type,
            "num_labels": num_labels,
            "layers": layers,
            "activation_function": activation_function,
            "label2id": label2id_of(id2label),
            "use_pooler": use_pooler,
            "bias": bias,
            "dropout_prob": dropout_prob,
        }
        self.build(model)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return single_label_loss(logits, labels, self.config["num_labels"])

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        logits = super().forward(self.cls_representation(outputs, cls_output, **kwargs))
        labels = kwargs.get("labels")
        loss = self.loss(logits, labels) if labels is not None else None
        return self.finish(_sequence_output(outputs, loss, logits), return_dict)


class MultiLabelClassificationHead(ClassificationHead):
    """Independent yes/no decisions per label (binary cross-entropy); ``add_classification_head(multilabel=True)``."""

    head_type = "multilabel_classification"

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class MultipleChoiceHead(PredictionHead):
    """One score per (example, choice); inputs are ``(batch, num_choices, length)``, flattened by the model."""

    reads_cls_output = True

    def __init__(
        self,
        model: nn.Module,
        head_name: str,
        num_choices: int = 2,
        layers: int = 2,
        activation_function: str | None = "tanh",
        id2label: dict | None = None,
        use_pooler: bool = False,
        dropout_prob: float | None = None,
    ) -> None:
        super().__init__(head_name)
        self.config = {
            "head_type": "multiple_choice",
            "num_choices": num_choices,
            "layers": layers,
            "activation_function": activation_function,
            "label2id": label2id_of(id2label),
            "use_pooler": use_pooler,
            "dropout_prob": dropout_prob,
        }
        self.build(model)

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        scores = super().forward(self.cls_representation(outputs, cls_output, **kwargs))
        logits = scores.view(-1, self.config["num_choices"])
        labels = kwargs.get("labels")
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        output = MultipleChoiceModelOutput(
            loss=loss, logits=logits, hidden_states=outputs.get("hidden_states"), attentions=outputs.get("attentions")
        )
        return self.finish(output, return_dict)


class TaggingHead(PredictionHead):
    """Token classification: one prediction per token; padding (``attention_mask == 0``) has no loss."""

    def __init__(
        self,
        model: nn.Module,
        head_name: str,
        num_labels: int = 2,
        layers: int = 1,
        activation_function: str | None = "tanh",
        id2label: dict | None = None,
        dropout_prob: float | None = None,
    ) -> None:
        super().__init__(head_name)
        self.config = {
            "head_type": "tagging",
            "num_labels": num_labels,
            "layers": layers,
            "activation_function": activation_function,
            "label2id": label2id_of(id2label),
            "dropout_prob": dropout_prob,
        }
        self.build(model)

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        logits = super().forward(outputs[0])
        labels = kwargs.get("labels")
        loss = None
        if labels is not None:
            labels = labels.view(-1)
            # A prompt-tuning prompt makes the output longer than the mask; its label hook has marked
            # the prompt positions with IGNORE_INDEX already, so the mask is only used when it fits.
            if attention_mask is not None and attention_mask.shape[-1] == logits.shape[1]:
                labels = torch.where(attention_mask.reshape(-1) == 1, labels, torch.full_like(labels, IGNORE_INDEX))
            loss = nn.functional.cross_entropy(logits.view(-1, self.config["num_labels"]), labels)
        output = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.get("hidden_states"), attentions=outputs.get("attentions")
        )
        return self.finish(output, return_dict)


class QuestionAnsweringHead(PredictionHead):
    """Extractive QA: start and end logits per token; the loss averages both cross-entropies."""

    def __init__(
        self,
        model: nn.Module,
        head_name: str,
        num_labels: int = 2,
        layers: int = 1,
        activation_function: str | None = "tanh",
        id2label: dict | None = None,
        dropout_prob: float | None = None,
    ) -> None:
        super().__init__(head_name)
        self.config = {
            "head_type": "question_answering",
            "num_labels": num_labels,
            "layers": layers,
            "activation_function": activation_function,
            "label2id": label2id_of(id2label),
            "dropout_prob": dropout_prob,
        }
        self.build(model)

    def get_label_names(self) -> list[str]:
        return ["start_positions", "end_positions"]

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        logits = super().forward(outputs[0])
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        start, end = kwargs.get("start_positions"), kwargs.get("end_positions")
        loss = None
        if start is not None and end is not None:
            # Positions outside the input (truncated answers) are clamped to an ignored index.
            ignored = start_logits.size(1)
            start = start.view(-1).clamp(0, ignored)
            end = end.view(-1).clamp(0, ignored)
            loss = (
                nn.functional.cross_entropy(start_logits, start, ignore_index=ignored)
                + nn.functional.cross_entropy(end_logits, end, ignore_index=ignored)
            ) / 2
        if is_seq2seq(outputs):
            output = Seq2SeqQuestionAnsweringModelOutput(
                loss=loss,
                start_logits=start_logits,
                end_logits=end_logits,
                **{_CACHE_FIELD: body_cache(outputs)},
                decoder_hidden_states=outputs.decoder_hidden_states,
                decoder_attentions=outputs.decoder_attentions,
                cross_attentions=outputs.cross_attentions,
                encoder_last_hidden_state=outputs.encoder_last_hidden_state,
                encoder_hidden_states=outputs.encoder_hidden_states,
                encoder_attentions=outputs.encoder_attentions,
            )
        else:
            output = QuestionAnsweringModelOutput(
                loss=loss,
                start_logits=start_logits,
                end_logits=end_logits,
                hidden_states=outputs.get("hidden_states"),
                attentions=outputs.get("attentions"),
            )
        return self.finish(output, return_dict)


class ImageClassificationHead(PredictionHead):
    """Image classification on the first token or the pooler output; ``multilabel`` or regression options."""

    reads_cls_output = True

    def __init__(
        self,
        model: nn.Module,
        head_name: str,
        num_labels: int = 2,
        layers: int = 2,
        activation_function: str | None = "tanh",
        multilabel: bool = False,
        id2label: dict | None = None,
        use_pooler: bool = False,
        bias: bool = True,
        dropout_prob: float | None = None,
    ) -> None:
        super().__init__(head_name)
        self.config = {
            "head_type": "image_classification",
            "num_labels": num_labels,
            "layers": layers,
            "activation_function": activation_function,
            "multilabel": multilabel,
            "label2id": label2id_of(id2label),
            "use_pooler": use_pooler,
            "bias": bias,
            "dropout_prob": dropout_prob,
        }
        self.build(model)

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        logits = super().forward(self.cls_representation(outputs, cls_output, **kwargs))
        labels = kwargs.get("labels")
        loss = None
        if labels is not None:
            if self.config["multilabel"] and self.config["num_labels"] > 1:
                loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            else:
                loss = single_label_loss(logits, labels, self.config["num_labels"])
        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.get("hidden_states"), attentions=outputs.get("attentions")
        )
        return self.finish(output, return_dict)
