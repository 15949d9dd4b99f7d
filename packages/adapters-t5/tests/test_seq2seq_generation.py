"""``generate()`` with the KV cache equals a cache-free greedy decode, with adapters active.

``generate`` runs the encoder once, then the decoder one token per step against the self-attention
cache and the cached cross-attention keys/values of the encoder output. Recomputing every step as
a full forward (encoder and decoder, no cache) must give the same logits and the same tokens. Prefix
tuning adds keys/values to the encoder, decoder and cross-attention, never to the caches; prompt
tuning lengthens the encoder output, which the cross-attention (and its cached keys) then covers.
"""

from __future__ import annotations

import pytest
import torch
from tiny_seq2seq import EXTRA, VOCAB, audio_inputs, generation_model

import adapters
from adapters import BnConfig, LoRAConfig, PromptTuningConfig
from adapters.testing import assert_close, randomize_adapter

NEW_TOKENS = 5
LORA = LoRAConfig(r=4, alpha=8, attn_matrices=("q", "k", "v"), intermediate_lora=True, output_lora=True)
SETUPS = {
    "seq_bn": [("bn", "seq_bn")],
    # Bottlenecks after all three sub-blocks of the decoder layers.
    "double_seq_bn_cross": [
        (
            "bn",
            BnConfig(
                mh_adapter=True, output_adapter=True, cross_adapter=True, reduction_factor=4, non_linearity="relu"
            ),
        )
    ],
    # On k and v of the cross-attention, LoRA's output goes into the cross-attention cache.
    "lora": [("lora", LORA)],
    "prefix_tuning": [("prefix", "prefix_tuning")],
    "prompt_tuning": [("prompt", "prompt_tuning")],
    "prompt_tuning_after_bos": [("prompt", PromptTuningConfig(prompt_length=3, combine="prefix_after_bos"))],
    "prompt_tuning+lora": [("prompt", "prompt_tuning"), ("lora", LORA)],
}
# Whisper and EncoderDecoderModel take no prompt; a BERT decoder's cross-attention takes the
# mh_adapter bottlenecks (as in the reference), a GPT-2 decoder's only prefixes.
_NO_PROMPT = ("seq_bn", "double_seq_bn", "lora", "prefix_tuning")
SETUPS["double_seq_bn"] = [("bn", "double_seq_bn")]
EXTRA_CASES = {
    "whisper": (*_NO_PROMPT, "double_seq_bn_cross"),
    "encoder-decoder": _NO_PROMPT,
    "encoder-decoder-gpt2": _NO_PROMPT,
}
CASES = [(t, s) for t in ("t5", "bart", "mbart") for s in sorted(SETUPS) if s != "double_seq_bn"] + [
    (label, setup) for label, setups in EXTRA_CASES.items() for setup in setups
]


def _source(model_type: str = "t5") -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    if model_type == "whisper":
        features = audio_inputs(2, 1, generator)["input_features"]
        return {"input_features": features}
    input_ids = torch.randint(3, VOCAB, (2, 6), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -2:] = 0  # the second source is padded
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _adapted_model(model_type: str, setup: str) -> torch.nn.Module:
    model = EXTRA[model_type][1]() if model_type in EXTRA else generation_model(model_type)
    model.generation_config.decoder_start_token_id = model.config.decoder_start_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id
    # Never stop early, so that both decodes run NEW_TOKENS steps.
    model.generation_config.eos_token_id = None
    model.generation_config.forced_eos_token_id = None
    model.generation_config.forced_bos_token_id = None
    adapters.init(model)
    for seed, (name, config) in enumerate(SETUPS[setup]):
        model.add_adapter(name, config=config)
        randomize_adapter(model, name, seed=seed)
    return model


@pytest.mark.parametrize(("model_type", "setup"), CASES)
@torch.no_grad()
def test_cached_generation_matches_cache_free_greedy_decode(model_type: str, setup: str) -> None:
    model = _adapted_model(model_type, setup)
    source = _source(model_type)
    start = torch.full((2, 1), model.config.decoder_start_token_id)
    plain_first = model(**source, decoder_input_ids=start).logits[:, -1]
    model.set_active_adapters([name for name, _ in SETUPS[setup]])

    out = model.generate(
        **source,
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        output_logits=True,
        return_dict_in_generate=True,
    )

    decoder_input_ids = start
    for step in range(NEW_TOKENS):
        logits = model(**source, decoder_input_ids=decoder_input_ids, use_cache=False).logits[:, -1]
        assert_close(out.logits[step], logits, msg=f"logits of step {step}")
        decoder_input_ids = torch.cat([decoder_input_ids, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.sequences, decoder_input_ids), (
        "cached generate and cache-free greedy decode chose other tokens"
    )
    assert not torch.allclose(out.logits[0], plain_first, atol=1e-3), "the adapters did not act during generate"
