"""Tiny random decoder configs (about 80 KB of weights each), valid for each architecture.

Hidden size 32 with 4 query heads of head_dim 8 and 2 key/value heads (grouped-query attention, so
k/v projections are half the size of q). Mistral and Gemma use a sliding window of 4, shorter than
the test sequences; Gemma has one sliding and one full attention layer, so both kinds run.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma2Model,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    Gemma3TextModel,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    GPTJConfig,
    GPTJForCausalLM,
    GPTJModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    MistralConfig,
    MistralForCausalLM,
    MistralModel,
    PretrainedConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Model,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
)

GQA = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=37,
    vocab_size=100,
    max_position_embeddings=64,
)
GEMMA = dict(
    GQA,
    query_pre_attn_scalar=8,
    sliding_window=4,
    layer_types=["sliding_attention", "full_attention"],
)


def _configs() -> dict[str, Callable[[], PretrainedConfig]]:
    return {
        "llama": lambda: LlamaConfig(**GQA),
        "mistral": lambda: MistralConfig(**GQA, sliding_window=4),
        "qwen2": lambda: Qwen2Config(**GQA),
        "qwen3": lambda: Qwen3Config(**GQA),
        "gemma2": lambda: Gemma2Config(**GEMMA),
        "gemma3_text": lambda: Gemma3TextConfig(**GEMMA),
        # rotary_dim < head_dim: GPT-J rotates only part of each head.
        "gptj": lambda: GPTJConfig(
            n_embd=32,
            n_layer=2,
            n_head=4,
            rotary_dim=4,
            n_inner=37,
            vocab_size=100,
            n_positions=64,
            bos_token_id=1,
            eos_token_id=2,
        ),
        # Fused q/k/v in one Conv1D (weight stored (in, out)); Conv1D everywhere else too.
        "gpt2": lambda: GPT2Config(
            n_embd=32, n_layer=2, n_head=4, n_inner=37, vocab_size=100, n_positions=64, bos_token_id=1, eos_token_id=2
        ),
    }


CONFIGS = _configs()

BASE_CLASSES: dict[str, type[nn.Module]] = {
    "llama": LlamaModel,
    "mistral": MistralModel,
    "qwen2": Qwen2Model,
    "qwen3": Qwen3Model,
    "gemma2": Gemma2Model,
    "gemma3_text": Gemma3TextModel,
    "gptj": GPTJModel,
    "gpt2": GPT2Model,
}
CAUSAL_LM_CLASSES: dict[str, type[nn.Module]] = {
    "llama": LlamaForCausalLM,
    "mistral": MistralForCausalLM,
    "qwen2": Qwen2ForCausalLM,
    "qwen3": Qwen3ForCausalLM,
    "gemma2": Gemma2ForCausalLM,
    "gemma3_text": Gemma3ForCausalLM,
    "gptj": GPTJForCausalLM,
    "gpt2": GPT2LMHeadModel,
}


def base_model(model_type: str) -> nn.Module:
    return BASE_CLASSES[model_type](CONFIGS[model_type]())


def causal_lm(model_type: str) -> nn.Module:
    return CAUSAL_LM_CLASSES[model_type](CONFIGS[model_type]())
