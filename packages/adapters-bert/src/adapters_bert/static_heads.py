"""How the BERT family's static head classes convert to flexible heads (``adapters_static_heads``).

``from_pretrained`` of ``BertForSequenceClassification`` & co. into an AdapterModel, and a static
head the reference saved beside an adapter, become the flexible head with identical logits.
"""

from __future__ import annotations

from adapters.heads.conversion import (
    StaticHead,
    lm_head,
    pooler_classifier,
    qa_head,
    token_head,
    two_layer,
)

_BERT_LM = ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.decoder")
_ELECTRA_LM = ("generator_predictions.dense", "generator_predictions.LayerNorm", "generator_lm_head")


def _roberta_like(prefix: str) -> dict[str, StaticHead]:
    lm = ("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder", "lm_head.bias")
    return {
        f"{prefix}ForSequenceClassification": two_layer(
            "classifier.dense", "classifier.out_proj", "tanh", use_pooler=False
        ),
        f"{prefix}ForMultipleChoice": pooler_classifier("multiple_choice"),
        f"{prefix}ForTokenClassification": token_head(),
        f"{prefix}ForQuestionAnswering": qa_head(),
        f"{prefix}ForMaskedLM": lm_head("masked_lm", *lm),
        f"{prefix}ForCausalLM": lm_head("causal_lm", *lm),
    }


STATIC_HEADS: dict[str, StaticHead] = {
    # BERT
    "BertForSequenceClassification": pooler_classifier(),
    "BertForMultipleChoice": pooler_classifier("multiple_choice"),
    "BertForTokenClassification": token_head(),
    "BertForQuestionAnswering": qa_head(),
    "BertForMaskedLM": lm_head("masked_lm", *_BERT_LM, "cls.predictions.bias"),
    "BertLMHeadModel": lm_head("causal_lm", *_BERT_LM, "cls.predictions.bias"),
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
    "AlbertForSequenceClassification": pooler_classifier(),
    "AlbertForMultipleChoice": pooler_classifier("multiple_choice"),
    "AlbertForTokenClassification": token_head(),
    "AlbertForQuestionAnswering": qa_head(),
    "AlbertForMaskedLM": lm_head(
        "masked_lm", "predictions.dense", "predictions.LayerNorm", "predictions.decoder", "predictions.bias", "gelu_new"
    ),
    # DistilBERT
    "DistilBertForSequenceClassification": two_layer("pre_classifier", "classifier", "relu"),
    "DistilBertForMultipleChoice": two_layer("pre_classifier", "classifier", "relu", "multiple_choice"),
    "DistilBertForTokenClassification": token_head(),
    "DistilBertForQuestionAnswering": qa_head(),
    "DistilBertForMaskedLM": lm_head("masked_lm", "vocab_transform", "vocab_layer_norm", "vocab_projector"),
    # ELECTRA
    "ElectraForSequenceClassification": two_layer("classifier.dense", "classifier.out_proj", "gelu", bias=True),
    "ElectraForMultipleChoice": two_layer(
        "sequence_summary.summary", "classifier", "gelu", "multiple_choice", use_pooler=False
    ),
    "ElectraForTokenClassification": token_head(),
    "ElectraForQuestionAnswering": qa_head(),
    "ElectraForMaskedLM": lm_head("masked_lm", *_ELECTRA_LM),
    "ElectraForCausalLM": lm_head("causal_lm", *_ELECTRA_LM),
    # DeBERTa (v1, v2): the ContextPooler's dense is the first layer
    **{
        f"{prefix}For{task}": two_layer("pooler.dense", "classifier", "gelu", head_type, use_pooler=False)
        for prefix in ("Deberta", "DebertaV2")
        for task, head_type in (("SequenceClassification", "classification"), ("MultipleChoice", "multiple_choice"))
    },
    **{f"{prefix}ForTokenClassification": token_head() for prefix in ("Deberta", "DebertaV2")},
    **{f"{prefix}ForQuestionAnswering": qa_head() for prefix in ("Deberta", "DebertaV2")},
    **{
        f"{prefix}ForMaskedLM": lm_head("masked_lm", *_BERT_LM, "cls.predictions.bias")
        for prefix in ("Deberta", "DebertaV2")
    },
}
