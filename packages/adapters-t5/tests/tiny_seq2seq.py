"""Tiny random encoder-decoder models (a few hundred KB) for the tests of this plugin."""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BartModel,
    BertConfig,
    EncoderDecoderConfig,
    EncoderDecoderModel,
    GPT2Config,
    MBartConfig,
    MBartForConditionalGeneration,
    MBartModel,
    MT5Config,
    MT5ForConditionalGeneration,
    MT5Model,
    PLBartConfig,
    PLBartForConditionalGeneration,
    PLBartModel,
    T5Config,
    T5ForConditionalGeneration,
    T5Model,
    WhisperConfig,
    WhisperForConditionalGeneration,
    WhisperModel,
)

VOCAB = 99
_T5 = dict(
    vocab_size=VOCAB,
    d_model=32,
    d_kv=8,
    d_ff=37,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)
_BART = dict(
    vocab_size=VOCAB,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=37,
    decoder_ffn_dim=37,
    max_position_embeddings=64,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    decoder_start_token_id=2,
    forced_eos_token_id=None,
)

# model_type: (config class, config kwargs, bare class, conditional-generation class)
CONFIGS = {
    "t5": (T5Config, _T5, T5Model, T5ForConditionalGeneration),
    "mt5": (MT5Config, {**_T5, "feed_forward_proj": "gated-gelu"}, MT5Model, MT5ForConditionalGeneration),
    "bart": (BartConfig, _BART, BartModel, BartForConditionalGeneration),
    "mbart": (MBartConfig, _BART, MBartModel, MBartForConditionalGeneration),
    "plbart": (PLBartConfig, _BART, PLBartModel, PLBartForConditionalGeneration),
}


def config(model_type: str):
    config_class, kwargs, _, _ = CONFIGS[model_type]
    return config_class(**kwargs, attn_implementation="sdpa")


def base_model(model_type: str) -> nn.Module:
    torch.manual_seed(0)
    return CONFIGS[model_type][2](config(model_type)).eval()


def generation_model(model_type: str) -> nn.Module:
    torch.manual_seed(0)
    return CONFIGS[model_type][3](config(model_type)).eval()


# Models outside CONFIGS (no T5/BART-style config of their own): label to (bare factory,
# conditional-generation factory, inputs). EncoderDecoderModel is one class with an LM head.
_WHISPER = dict(
    vocab_size=VOCAB,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=37,
    decoder_ffn_dim=37,
    num_mel_bins=8,
    max_source_positions=6,  # 12 log-mel frames, halved by the second convolution
    max_target_positions=32,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    decoder_start_token_id=3,
    # No token suppression or forced ids: generate() then decodes greedily like a plain forward.
    suppress_tokens=None,
    begin_suppress_tokens=None,
)
_BERT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
_GPT2 = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=2)


def whisper_config() -> WhisperConfig:
    return WhisperConfig(**_WHISPER, attn_implementation="sdpa")


def encoder_decoder_config(decoder: str) -> EncoderDecoderConfig:
    """A BERT encoder with a BERT (``"bert"``) or GPT-2 (``"gpt2"``) decoder that attends to it."""
    encoder = BertConfig(**_BERT)
    if decoder == "bert":
        decoder_config = BertConfig(**_BERT, is_decoder=True, add_cross_attention=True)
    else:
        decoder_config = GPT2Config(**_GPT2, add_cross_attention=True)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder_config)
    config.decoder_start_token_id, config.pad_token_id = 0, 1
    return config


def _encoder_decoder(decoder: str) -> nn.Module:
    torch.manual_seed(0)
    return EncoderDecoderModel(encoder_decoder_config(decoder)).eval()


def _whisper(model_class: type) -> nn.Module:
    torch.manual_seed(0)
    return model_class(whisper_config()).eval()


def audio_inputs(batch: int, tgt_len: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Log-mel features of the fixed length Whisper expects, and decoder token ids."""
    features = torch.randn(batch, _WHISPER["num_mel_bins"], 2 * _WHISPER["max_source_positions"], generator=generator)
    decoder_input_ids = torch.randint(4, VOCAB, (batch, tgt_len), generator=generator)
    return {"input_features": features, "decoder_input_ids": decoder_input_ids}


def _t5_gated(model_class: type) -> nn.Module:
    # T5 v1.1 / Flan-T5: model type "t5" with a gated FFN (wi_0, wi_1).
    torch.manual_seed(0)
    return model_class(T5Config(**_T5, feed_forward_proj="gated-gelu", attn_implementation="sdpa")).eval()


EXTRA = {
    "t5-gated": (
        lambda: _t5_gated(T5Model),
        lambda: _t5_gated(T5ForConditionalGeneration),
        lambda *args: seq2seq_inputs(*args),
    ),
    "whisper": (
        lambda: _whisper(WhisperModel),
        lambda: _whisper(WhisperForConditionalGeneration),
        lambda batch, src, tgt, generator: audio_inputs(batch, tgt, generator),
    ),
    "encoder-decoder": (None, lambda: _encoder_decoder("bert"), lambda *args: seq2seq_inputs(*args)),
    "encoder-decoder-gpt2": (None, lambda: _encoder_decoder("gpt2"), lambda *args: seq2seq_inputs(*args)),
}


def model_inputs(label: str, batch: int, src_len: int, tgt_len: int, generator: torch.Generator) -> dict:
    """Inputs of one forward pass for a model of CONFIGS or EXTRA."""
    if label in EXTRA:
        return EXTRA[label][2](batch, src_len, tgt_len, generator)
    return seq2seq_inputs(batch, src_len, tgt_len, generator)


def seq2seq_inputs(batch: int, src_len: int, tgt_len: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Token ids (from 3: no special tokens) with padding in the last example's source."""
    input_ids = torch.randint(3, VOCAB, (batch, src_len), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, -2:] = 0
    decoder_input_ids = torch.randint(3, VOCAB, (batch, tgt_len), generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "decoder_input_ids": decoder_input_ids}
