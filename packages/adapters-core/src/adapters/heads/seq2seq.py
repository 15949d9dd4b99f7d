"""``Seq2SeqAdapterModelBase``: the AdapterModel base of encoder-decoder families (T5, BART, ...).

What every encoder-decoder family shares: the decoder input when only labels or ``input_ids``
are given (the family's right shift), classification at the last ``<eos>``, and ``generate()`` on
the active seq2seq LM head (also under ``Parallel``). A plugin's class adds its right shift and
``GenerationMixin`` after the family's ``PreTrainedModel``:

    class BartAdapterModel(Seq2SeqAdapterModelBase, BartPreTrainedModel, GenerationMixin):
        base_model_class = BartModel

        def prepare_decoder_input_ids_from_labels(self, labels):
            return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import AdapterConfigError
from ..model.generation import ParallelGenerationMixin
from .model import AdapterModelBase, _base_inputs

# The reference library's head types of its encoder-decoder AdapterModels.
SEQ2SEQ_HEAD_TYPES = ("classification", "multilabel_classification", "question_answering", "seq2seq_lm")
def eos_states(hidden: torch.Tensor, eos_mask: torch.Tensor) -> torch.Tensor:
    """Each row's decoder state at the last ``<eos>`` of its input (``BartForSequenceClassification``).

    ``hidden`` is the decoder output (``rows``, length, size); ``eos_mask`` marks the ``<eos>``
    tokens of ``input_ids``, whose positions the decoder input (``input_ids`` shifted right)
    shares. Under Parallel the rows are copies of the input rows.

    Example:
        >>> eos_states(torch.arange(6.0).view(1, 3, 2), torch.tensor([[False, True, False]]))
        tensor([[2., 3.]])
    """
    if eos_mask.shape[-1] != hidden.shape[1]:
        raise AdapterConfigError(
            f"Classification heads read the decoder state at the last <eos> of input_ids, but the decoder output "
            f"has {hidden.shape[1]} positions and input_ids {eos_mask.shape[-1]}; leave decoder_input_ids out "
            "(they are then input_ids shifted right) or give them the length of input_ids."
        )
    if hidden.shape[0] != eos_mask.shape[0]:
        eos_mask = eos_mask.repeat(hidden.shape[0] // eos_mask.shape[0], 1)
    counts = eos_mask.sum(-1)
    if bool((counts != counts[0]).any()) or int(counts[0]) == 0:
        raise ValueError("All examples must have the same number of <eos> tokens (at least one).")
    return hidden[eos_mask.to(hidden.device)].view(hidden.shape[0], -1, hidden.shape[-1])[:, -1]


class Seq2SeqAdapterModelBase(AdapterModelBase, ParallelGenerationMixin):
    """Base of encoder-decoder AdapterModels: decoder inputs, ``<eos>`` pooling, ``generate()``.

    Without ``decoder_input_ids`` the decoder reads the labels shifted right (a seq2seq LM head
    with labels, as ``XxxForConditionalGeneration``) or else ``input_ids`` shifted right (as
    ``XxxForSequenceClassification``). Families set ``shift_tokens`` (their right shift).

    Example:
        >>> from adapters import AutoAdapterModel
        >>> model = AutoAdapterModel.from_pretrained("google-t5/t5-small")  # doctest: +SKIP
        >>> model.add_seq2seq_lm_head("lm")  # doctest: +SKIP
        >>> model.generate(**tokenizer("translate English to German: Hi", return_tensors="pt"))  # doctest: +SKIP
    """

    head_types = SEQ2SEQ_HEAD_TYPES
    #: Static QA classes whose head reads the unscaled decoder output (T5's): their converted head's
    #: weight is scaled by ``d_model ** 0.5`` when the family scales the output (``scales_decoder_output``).
    unscaled_qa_architectures: ClassVar[tuple[str, ...]] = ()

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """The decoder input for ``labels``: the family's right shift (as its static LM class)."""
        raise NotImplementedError(
            f"{type(self).__name__} must define prepare_decoder_input_ids_from_labels (its family's right shift of "
            "labels); pass decoder_input_ids explicitly meanwhile."
        )

    def scales_decoder_output(self) -> bool:
        """Whether heads read the decoder output times ``d_model ** -0.5`` (T5 with tied embeddings)."""
        return False

    def forward(self, *args: Any, head: Any = None, labels: Any = None, **kwargs: Any) -> Any:
        positional, _ = _base_inputs(type(self.base_model))
        if len(args) > len(positional):
            raise TypeError(f"{type(self).__name__}.forward() got {len(args)} positional inputs; pass them by name.")
        kwargs.update(zip(positional, args, strict=False))
        if kwargs.get("decoder_input_ids") is None and kwargs.get("decoder_inputs_embeds") is None:
            source = labels if labels is not None and self._uses_lm_head(head) else kwargs.get("input_ids")
            if source is not None:
                kwargs["decoder_input_ids"] = self.prepare_decoder_input_ids_from_labels(source)
        return super().forward(head=head, labels=labels, **kwargs)

    def _uses_lm_head(self, head: Any) -> bool:
        setup = self._head_setup(head)
        names = list(getattr(setup, "children", None) or setup or [])
        return any(self.heads[n].config.get("head_type") == "seq2seq_lm" for n in names)

    def head_extras(self, outputs: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        """The ``<eos>`` positions of ``input_ids``, where classification heads read the decoder."""
        extras = super().head_extras(outputs, inputs)
        input_ids = inputs.get("input_ids")
        if input_ids is not None:
            extras["eos_mask"] = input_ids.eq(self.config.eos_token_id)
        return extras

    def forward_head(self, outputs: Any, setup: Any, batch: int | None, **kwargs: Any) -> Any:
        eos_mask = kwargs.pop("eos_mask", None)
        names = list(getattr(setup, "children", None) or setup or [])
        if any(self.heads[n].reads_cls_output for n in names):
            if eos_mask is None:
                raise AdapterConfigError(
                    "Classification heads of encoder-decoder models read the decoder state at the last <eos> of "
                    "input_ids; pass input_ids."
                )
            # Sequence heads read the unscaled state, as XxxForSequenceClassification (and the reference) do.
            kwargs["cls_output"] = eos_states(outputs[0], eos_mask)
        if self.scales_decoder_output():
            scaled = outputs[0] * (self.config.d_model**-0.5)
            outputs = type(outputs)(**{**dict(outputs.items()), "last_hidden_state": scaled})
        return super().forward_head(outputs, setup, batch, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """transformers' ``generate`` with the active seq2seq LM head (or ``head=``)."""
        setup = self._head_setup(kwargs.get("head"))
        names = list(getattr(setup, "children", None) or setup or [])
        wrong = [n for n in names if self.heads[n].config.get("head_type") != "seq2seq_lm"]
        if len(names) != 1 or wrong:
            raise AdapterConfigError(
                f"generate() needs one active seq2seq LM head; the active heads are {names or 'none'}"
                f"{f' ({wrong} are not seq2seq_lm)' if wrong else ''}. Add one with add_seq2seq_lm_head(name) "
                "or pass head=<name of a seq2seq LM head>."
            )
        return super().generate(*args, **kwargs)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        model = super().from_pretrained(*args, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model
        loaded._fold_unscaled_qa_head()
        return model

    def _fold_unscaled_qa_head(self) -> None:
        # A converted T5ForQuestionAnswering read the unscaled decoder output; the flexible QA head reads
        # it scaled (as the reference's). Scaling its weight by d_model ** 0.5 keeps the logits.
        architecture = (getattr(self.config, "architectures", None) or [None])[0]
        head = self.heads["default"] if "default" in self.heads else None
        if architecture not in self.unscaled_qa_architectures or head is None or not self.scales_decoder_output():
            return
        if head.config.get("head_type") == "question_answering":
            with torch.no_grad():
                head[len(head) - 1].weight.mul_(self.config.d_model**0.5)
