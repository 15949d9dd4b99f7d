"""How the encoder-decoder families' static head classes convert to flexible heads (``adapters_static_heads``)."""

from __future__ import annotations

import dataclasses

from adapters.heads.conversion import QA_TWO_OUTPUTS, StaticHead, projection, qa_head, two_layer


def _bart_like(prefix: str, qa: bool = True) -> dict[str, StaticHead]:
    heads = {
        f"{prefix}ForSequenceClassification": two_layer(
            "classification_head.dense", "classification_head.out_proj", "tanh"
        ),
        # Its final_logits_bias buffer is zero unless a vocabulary was resized with a bias.
        f"{prefix}ForConditionalGeneration": dataclasses.replace(
            projection("seq2seq_lm"), zero_buffers=frozenset({"final_logits_bias"})
        ),
    }
    if qa:
        # BART's QA classes set config.num_labels = 2; T5's project onto config.num_labels outputs.
        heads[f"{prefix}ForQuestionAnswering"] = QA_TWO_OUTPUTS if "T5" not in prefix else qa_head()
    return heads


STATIC_HEADS: dict[str, StaticHead] = {
    **_bart_like("Bart"),
    **_bart_like("MBart"),
    **_bart_like("PLBart", qa=False),
    **_bart_like("T5"),
    **_bart_like("MT5"),
    "WhisperForConditionalGeneration": projection("seq2seq_lm", module="proj_out", layers=1, bias=False),
}
