"""``DecoderAdapterModelBase``: the AdapterModel base of decoder-only families (Llama, GPT-2, ...).

A causal model's only state that has seen the whole sequence is its last token's, so sequence-level
heads read the last non-padding token (as transformers' ``XxxForSequenceClassification`` do) and
``generate()`` runs on the active causal LM head. A plugin's class adds ``GenerationMixin`` after
the family's ``PreTrainedModel``, as transformers' own LM classes do:

    class LlamaAdapterModel(DecoderAdapterModelBase, LlamaPreTrainedModel, GenerationMixin):
        base_model_class = LlamaModel
"""

from __future__ import annotations

from typing import Any

from ..errors import AdapterConfigError
from .model import AdapterModelBase, last_token_states

# The reference library's head types of its decoder-only AdapterModels.
DECODER_HEAD_TYPES = ("classification", "multilabel_classification", "tagging", "question_answering", "causal_lm")


class DecoderAdapterModelBase(AdapterModelBase):
    """Base of decoder-only AdapterModels: classification heads read the last non-padding token.

    The last token is the rightmost one that is not ``config.pad_token_id`` (left or right padding);
    without a pad id, the rightmost position the attention mask keeps, else the last position.

    Example:
        >>> from adapters import AutoAdapterModel
        >>> model = AutoAdapterModel.from_pretrained("meta-llama/Llama-3.2-1B")  # doctest: +SKIP
        >>> model.add_causal_lm_head("lm")  # doctest: +SKIP
        >>> model.generate(**tokenizer("Hello", return_tensors="pt"), max_new_tokens=5)  # doctest: +SKIP
    """

    head_types = DECODER_HEAD_TYPES

    def head_extras(self, outputs: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        """The last token's state as the sequence representation (``cls_output``) of the heads."""
        extras = super().head_extras(outputs, inputs)
        pad_token_id = getattr(self.config, "pad_token_id", None)
        extras["cls_output"] = last_token_states(
            outputs[0], inputs.get("attention_mask"), inputs.get("input_ids"), pad_token_id
        )
        return extras

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """transformers' ``generate`` with the active causal LM head (or ``head=``)."""
        setup = self._head_setup(kwargs.get("head"))
        names = list(getattr(setup, "children", None) or setup or [])
        wrong = [n for n in names if self.heads[n].config.get("head_type") != "causal_lm"]
        if not names or wrong:
            raise AdapterConfigError(
                f"generate() needs an active causal LM head; the active heads are {names or 'none'}"
                f"{f' ({wrong} are not causal_lm)' if wrong else ''}. Add one with add_causal_lm_head(name) "
                "or pass head=<name of a causal LM head>."
            )
        return super().generate(*args, **kwargs)
