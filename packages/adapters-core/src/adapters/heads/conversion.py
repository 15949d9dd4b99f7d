"""Static transformers heads (``BertForSequenceClassification``'s ``classifier``, ...) as flexible heads.

Each :class:`StaticHead` says which flexible head reproduces a static model class and where the
static modules' weights go in it, so a static checkpoint (``from_pretrained``) or a static head
saved by the reference library (``load_head``/``load_adapter``) becomes a flexible head with
identical outputs. Each model plugin declares the classes of its families through the
``adapters_static_heads`` hook, with the builders below for the recurring layouts.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from ..plugins.manager import get_registry


@dataclasses.dataclass(frozen=True)
class StaticHead:
    """How one static head class maps onto a flexible head.

    Attributes:
        head_type: the flexible head type (``"classification"``, ``"masked_lm"``, ...).
        modules: static module path -> index of the flexible head's layer holding its weights.
        options: head config fields (``layers``, ``activation_function``, ``use_pooler``, ...).
        params: single static parameters -> ``"<index>.<param>"`` in the flexible head
            (transformers 5 keeps an LM decoder's bias as ``cls.predictions.bias``).
        zero_buffers: static buffers the flexible head has no place for and that change nothing
            while zero (BART's ``final_logits_bias``): a saved head may hold them only as zeros.
    """

    head_type: str
    modules: Mapping[str, int]
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    params: Mapping[str, str] = dataclasses.field(default_factory=dict)
    zero_buffers: frozenset[str] = frozenset()

    def head_config(self, label2id: Mapping[str, int] | None, num_labels: int | None = None) -> dict[str, Any]:
        """The flexible head's config; labels come from the static model's ``label2id``."""
        config: dict[str, Any] = {"head_type": self.head_type, **self.options}
        if self.head_type in ("causal_lm", "masked_lm", "seq2seq_lm"):
            return config
        key = "num_choices" if self.head_type == "multiple_choice" else "num_labels"
        if key in self.options:  # a size the static class fixes (decoders' QA: 2), whatever the config's labels
            num_labels, label2id = self.options[key], None
        if label2id is None:
            label2id = {f"LABEL_{i}": i for i in range(num_labels or 2)}
        label2id = {label: int(i) for label, i in label2id.items()}
        config[key] = num_labels or len(label2id)
        config["label2id"] = label2id
        return config

    def key_mapping(self, head_name: str) -> dict[str, str]:
        """Regex renames of checkpoint keys for ``from_pretrained(..., key_mapping=...)``."""
        mapping = {rf"^{re.escape(path)}\.": f"heads.{head_name}.{index}." for path, index in self.modules.items()}
        mapping.update({rf"^{re.escape(path)}$": f"heads.{head_name}.{target}" for path, target in self.params.items()})
        return mapping

    def head_key(self, key: str) -> str | None:
        """A static key as a key of the flexible head's own state dict (``classifier.weight`` -> ``1.weight``)."""
        if key in self.params:
            return self.params[key]
        for path, index in sorted(self.modules.items(), key=lambda item: -len(item[0])):
            if key.startswith(path + "."):
                return f"{index}.{key[len(path) + 1 :]}"
        return None


# -- builders for the recurring layouts --------------------------------------------------
def pooler_classifier(head_type: str = "classification", module: str = "classifier") -> StaticHead:
    """Pooler output -> dropout -> ``module`` (BERT, ALBERT, RoBERTa's multiple choice).

    Example:
        >>> pooler_classifier().modules
        {'classifier': 1}
    """
    options = {"layers": 1, "activation_function": None, "use_pooler": True}
    return StaticHead(head_type, {module: 1}, options)


def two_layer(dense: str, out: str, act: str | None, head_type: str = "classification", **extra: Any) -> StaticHead:
    """First token -> dropout -> ``dense`` -> ``act`` -> dropout -> ``out`` (RoBERTa's and BART's classifiers)."""
    return StaticHead(head_type, {dense: 1, out: 4}, {"layers": 2, "activation_function": act, **extra})


def token_head(module: str = "classifier", head_type: str = "tagging", **extra: Any) -> StaticHead:
    """One linear ``module`` on every position (token classification; ViT's classifier on [CLS])."""
    return StaticHead(head_type, {module: 1}, {"layers": 1, "activation_function": None, **extra})


def qa_head(module: str = "qa_outputs", **extra: Any) -> StaticHead:
    """Start and end logits from one linear ``module`` on every position."""
    return token_head(module, "question_answering", **extra)


# Decoder-only QA classes (Generic* and GPT-2's) have two outputs, whatever config.num_labels says.
QA_TWO_OUTPUTS = qa_head(num_labels=2)


def lm_head(
    head_type: str, dense: str, norm: str, decoder: str, bias: str | None = None, act: str = "gelu"
) -> StaticHead:
    """``dense`` -> ``act`` -> ``norm`` -> ``decoder`` (BERT-style masked and causal LM heads); ``bias``: a
    separate decoder bias parameter."""
    options = {"layers": 2, "activation_function": act, "layer_norm": True, "bias": True}
    return StaticHead(head_type, {dense: 0, norm: 2, decoder: 3}, options, {bias: "3.bias"} if bias else {})


def projection(head_type: str, module: str = "lm_head", **options: Any) -> StaticHead:
    """One projection ``module`` onto the vocabulary (decoders' and seq2seq models' LM heads)."""
    return StaticHead(head_type, {module: 0}, options)


def decoder_only(
    prefix: str, causal_bias: bool = False, token_module: str | None = "score", qa: bool = True
) -> dict[str, StaticHead]:
    """The heads transformers' ``Generic*For*`` classes give a decoder family ``prefix`` (``"Llama"``).

    Sequence classification reads the last non-padding token through ``score``.
    """
    heads = {
        f"{prefix}ForSequenceClassification": StaticHead(
            "classification", {"score": 1}, {"layers": 1, "activation_function": None, "bias": False, "dropout_prob": 0}
        ),
        f"{prefix}ForCausalLM": projection("causal_lm", **({"bias": True} if causal_bias else {})),
    }
    if qa:
        heads[f"{prefix}ForQuestionAnswering"] = QA_TWO_OUTPUTS
    if token_module:
        heads[f"{prefix}ForTokenClassification"] = token_head(token_module)
    return heads


def static_head(class_name: str) -> StaticHead | None:
    """The conversion of a static head class, as the plugin of its family provides it (``adapters_static_heads``)."""
    return get_registry().static_heads.get(class_name)
