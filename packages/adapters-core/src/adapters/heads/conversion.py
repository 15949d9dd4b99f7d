"""Static transformers heads (``BertForSequenceClassification``'s ``classifier``, ...) as flexible heads.

Each :class:`StaticHead` says which flexible head reproduces a static model class and where the
static modules' weights go in it, so a static checkpoint (``from_pretrained``) or a static head
saved by the reference library (``load_head``/``load_adapter``) becomes a flexible head with
identical outputs. Plugins add classes of their own families through the
``adapters_static_heads`` hook.
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
def _pooler_classifier(head_type: str = "classification", module: str = "classifier") -> StaticHead:
    # pooler output -> dropout -> linear (BERT, ALBERT, RoBERTa's multiple choice)
    options = {"layers": 1, "activation_function": None, "use_pooler": True}
    return StaticHead(head_type, {module: 1}, options)


def _two_layer(dense: str, out: str, act: str | None, head_type: str = "classification", **extra: Any) -> StaticHead:
    # first token -> dropout -> dense -> act -> dropout -> out
    return StaticHead(head_type, {dense: 1, out: 4}, {"layers": 2, "activation_function": act, **extra})


def _token(module: str = "classifier", head_type: str = "tagging", **extra: Any) -> StaticHead:
    return StaticHead(head_type, {module: 1}, {"layers": 1, "activation_function": None, **extra})


def _qa(module: str = "qa_outputs", **extra: Any) -> StaticHead:
    return _token(module, "question_answering", **extra)


# Decoder-only QA classes (Generic* and GPT-2's) have two outputs, whatever config.num_labels says.
_QA2 = _qa(num_labels=2)


def _lm(head_type: str, dense: str, norm: str, decoder: str, bias: str | None = None, act: str = "gelu") -> StaticHead:
    options = {"layers": 2, "activation_function": act, "layer_norm": True, "bias": True}
    return StaticHead(head_type, {dense: 0, norm: 2, decoder: 3}, options, {bias: "3.bias"} if bias else {})


def _projection(head_type: str, module: str = "lm_head", **options: Any) -> StaticHead:
    return StaticHead(head_type, {module: 0}, options)


def _roberta_like(prefix: str) -> dict[str, StaticHead]:
    lm = ("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder", "lm_head.bias")
    return {
        f"{prefix}ForSequenceClassification": _two_layer(
            "classifier.dense", "classifier.out_proj", "tanh", use_pooler=False
        ),
        f"{prefix}ForMultipleChoice": _pooler_classifier("multiple_choice"),
        f"{prefix}ForTokenClassification": _token(),
        f"{prefix}ForQuestionAnswering": _qa(),
        f"{prefix}ForMaskedLM": _lm("masked_lm", *lm),
        f"{prefix}ForCausalLM": _lm("causal_lm", *lm),
    }


def _bart_like(prefix: str, qa: bool = True) -> dict[str, StaticHead]:
    heads = {
        f"{prefix}ForSequenceClassification": _two_layer(
            "classification_head.dense", "classification_head.out_proj", "tanh"
        ),
        # Its final_logits_bias buffer is zero unless a vocabulary was resized with a bias.
        f"{prefix}ForConditionalGeneration": dataclasses.replace(
            _projection("seq2seq_lm"), zero_buffers=frozenset({"final_logits_bias"})
        ),
    }
    if qa:
        # BART's QA classes set config.num_labels = 2; T5's project onto config.num_labels outputs.
        heads[f"{prefix}ForQuestionAnswering"] = _QA2 if "T5" not in prefix else _qa()
    return heads


def _decoder_only(
    prefix: str, causal_bias: bool = False, token_module: str | None = "score", qa: bool = True
) -> dict[str, StaticHead]:
    # transformers' Generic*For* heads; sequence classification reads the last non-padding token.
    heads = {
        f"{prefix}ForSequenceClassification": StaticHead(
            "classification", {"score": 1}, {"layers": 1, "activation_function": None, "bias": False, "dropout_prob": 0}
        ),
        f"{prefix}ForCausalLM": _projection("causal_lm", **({"bias": True} if causal_bias else {})),
    }
    if qa:
        heads[f"{prefix}ForQuestionAnswering"] = _QA2
    if token_module:
        heads[f"{prefix}ForTokenClassification"] = _token(token_module)
    return heads


_BERT_LM = ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.decoder")
_ELECTRA_LM = ("generator_predictions.dense", "generator_predictions.LayerNorm", "generator_lm_head")

STATIC_HEADS: dict[str, StaticHead] = {
    # BERT
    "BertForSequenceClassification": _pooler_classifier(),
    "BertForMultipleChoice": _pooler_classifier("multiple_choice"),
    "BertForTokenClassification": _token(),
    "BertForQuestionAnswering": _qa(),
    "BertForMaskedLM": _lm("masked_lm", *_BERT_LM, "cls.predictions.bias"),
    "BertLMHeadModel": _lm("causal_lm", *_BERT_LM, "cls.predictions.bias"),
    "BertGenerationDecoder": StaticHead(
        "causal_lm",
        {"lm_head.decoder": 0},
        {"layers": 1, "activation_function": None, "bias": True},
        {"lm_head.bias": "0.bias"},
    ),
    # RoBERTa and its copies
    **_roberta_like("Roberta"),
    **_roberta_like("XLMRoberta"),
    **_roberta_like("Xmod"),
    # ALBERT
    "AlbertForSequenceClassification": _pooler_classifier(),
    "AlbertForMultipleChoice": _pooler_classifier("multiple_choice"),
    "AlbertForTokenClassification": _token(),
    "AlbertForQuestionAnswering": _qa(),
    "AlbertForMaskedLM": _lm(
        "masked_lm", "predictions.dense", "predictions.LayerNorm", "predictions.decoder", "predictions.bias", "gelu_new"
    ),
    # DistilBERT
    "DistilBertForSequenceClassification": _two_layer("pre_classifier", "classifier", "relu"),
    "DistilBertForMultipleChoice": _two_layer("pre_classifier", "classifier", "relu", "multiple_choice"),
    "DistilBertForTokenClassification": _token(),
    "DistilBertForQuestionAnswering": _qa(),
    "DistilBertForMaskedLM": _lm("masked_lm", "vocab_transform", "vocab_layer_norm", "vocab_projector"),
    # ELECTRA
    "ElectraForSequenceClassification": _two_layer("classifier.dense", "classifier.out_proj", "gelu", bias=True),
    "ElectraForMultipleChoice": _two_layer(
        "sequence_summary.summary", "classifier", "gelu", "multiple_choice", use_pooler=False
    ),
    "ElectraForTokenClassification": _token(),
    "ElectraForQuestionAnswering": _qa(),
    "ElectraForMaskedLM": _lm("masked_lm", *_ELECTRA_LM),
    "ElectraForCausalLM": _lm("causal_lm", *_ELECTRA_LM),
    # DeBERTa (v1, v2): the ContextPooler's dense is the first layer
    **{
        f"{prefix}For{task}": _two_layer("pooler.dense", "classifier", "gelu", head_type, use_pooler=False)
        for prefix in ("Deberta", "DebertaV2")
        for task, head_type in (("SequenceClassification", "classification"), ("MultipleChoice", "multiple_choice"))
    },
    **{f"{prefix}ForTokenClassification": _token() for prefix in ("Deberta", "DebertaV2")},
    **{f"{prefix}ForQuestionAnswering": _qa() for prefix in ("Deberta", "DebertaV2")},
    **{
        f"{prefix}ForMaskedLM": _lm("masked_lm", *_BERT_LM, "cls.predictions.bias")
        for prefix in ("Deberta", "DebertaV2")
    },
    # encoder-decoder models
    **_bart_like("Bart"),
    **_bart_like("MBart"),
    **_bart_like("PLBart", qa=False),
    **_bart_like("T5"),
    **_bart_like("MT5"),
    "WhisperForConditionalGeneration": _projection("seq2seq_lm", module="proj_out", layers=1, bias=False),
    # decoder-only models
    "GPT2ForSequenceClassification": StaticHead(
        "classification", {"score": 1}, {"layers": 1, "activation_function": None, "bias": False}
    ),
    "GPT2LMHeadModel": _projection("causal_lm"),
    "GPT2ForTokenClassification": _token(),
    "GPT2ForQuestionAnswering": _QA2,
    "GPTJForSequenceClassification": StaticHead(
        "classification", {"score": 1}, {"layers": 1, "activation_function": None, "bias": False}
    ),
    "GPTJForCausalLM": _projection("causal_lm", bias=True),
    "GPTJForQuestionAnswering": _QA2,
    **_decoder_only("Llama"),
    **_decoder_only("Mistral"),
    **_decoder_only("Qwen2"),
    **_decoder_only("Qwen3"),
    **_decoder_only("Gemma2", qa=False),
    # Gemma 3 text-only: Gemma3ForCausalLM; Gemma3ForSequenceClassification is the multimodal model's.
    "Gemma3ForCausalLM": _projection("causal_lm"),
    "Gemma3TextForSequenceClassification": _decoder_only("Gemma3Text")["Gemma3TextForSequenceClassification"],
    # vision
    "ViTForImageClassification": _token("classifier", "image_classification"),
    "BeitForImageClassification": _pooler_classifier("image_classification"),
    # DINOv2's classifier reads [CLS] joined with the mean patch state (the AdapterModel's cls_output)
    "Dinov2ForImageClassification": _token("classifier", "image_classification"),
    "Dinov2WithRegistersForImageClassification": _token("classifier", "image_classification"),
}


def static_head(class_name: str) -> StaticHead | None:
    """The conversion of a static head class: from a plugin (``adapters_static_heads``) or the built-in table."""
    registered = getattr(get_registry(), "static_heads", {})
    return registered.get(class_name) or STATIC_HEADS.get(class_name)
