"""How the decoder families' static head classes convert to flexible heads (``adapters_static_heads``)."""

from __future__ import annotations

from adapters.heads.conversion import QA_TWO_OUTPUTS, StaticHead, decoder_only, projection, token_head

_SCORE = StaticHead("classification", {"score": 1}, {"layers": 1, "activation_function": None, "bias": False})

STATIC_HEADS: dict[str, StaticHead] = {
    "GPT2ForSequenceClassification": _SCORE,
    "GPT2LMHeadModel": projection("causal_lm"),
    "GPT2ForTokenClassification": token_head(),
    "GPT2ForQuestionAnswering": QA_TWO_OUTPUTS,
    "GPTJForSequenceClassification": _SCORE,
    "GPTJForCausalLM": projection("causal_lm", bias=True),
    "GPTJForQuestionAnswering": QA_TWO_OUTPUTS,
    **decoder_only("Llama"),
    **decoder_only("Mistral"),
    **decoder_only("Qwen2"),
    **decoder_only("Qwen3"),
    **decoder_only("Gemma2", qa=False),
    # Gemma 3 text-only: Gemma3ForCausalLM; Gemma3ForSequenceClassification is the multimodal model's.
    "Gemma3ForCausalLM": projection("causal_lm"),
    "Gemma3TextForSequenceClassification": decoder_only("Gemma3Text")["Gemma3TextForSequenceClassification"],
}
