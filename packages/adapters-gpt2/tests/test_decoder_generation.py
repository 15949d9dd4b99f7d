"""Generation with the KV cache equals a cache-free greedy decode, with adapters active.

Prompt tuning is covered on GPT-2, whose plugin inserts the prompt through placeholder tokens
(``ModelSpec.prompt_token_slots``): the prompt enters the cache with the first step, later steps
insert nothing and their positions move past the prompt. (The other decoders insert the prompt
into the embeddings' output at every step, so ``generate`` does not support it there yet.)

``generate`` runs the prompt once and then one token per step against the cache, so an adapter hook
sees sequences of length 1 with the earlier positions' keys and values cached. Recomputing every
step as a full forward over the growing sequence must give the same logits and the same tokens.
"""

from __future__ import annotations

import pytest
import torch
from tiny_decoders import CONFIGS, causal_lm

import adapters
from adapters import LoRAConfig, PromptTuningConfig
from adapters.testing import assert_close, randomize_adapter

NEW_TOKENS = 5
# LoRA on every projection: on k and v (grouped-query attention: half the size of q) its output
# goes into the cache.
LORA = LoRAConfig(r=4, alpha=8, attn_matrices=("q", "k", "v"), intermediate_lora=True, output_lora=True)
SETUPS = {
    "seq_bn": [("bn", "seq_bn")],
    "lora": [("lora", LORA)],
    "seq_bn+lora": [("bn", "seq_bn"), ("lora", LORA)],
    # Prefix keys and values join the cached ones at every step, never enter the cache.
    "prefix_tuning": [("prefix", "prefix_tuning")],
}
PROMPT_SETUPS = {
    "prompt_tuning": [("prompt", "prompt_tuning")],
    "prompt_tuning_after_bos": [("prompt", PromptTuningConfig(prompt_length=3, combine="prefix_after_bos"))],
    "prompt_tuning+lora": [("prompt", "prompt_tuning"), ("lora", LORA)],
}
PROMPT_TYPES = tuple(sorted(CONFIGS))
ALL_SETUPS = {**SETUPS, **PROMPT_SETUPS}
CASES = [(t, s) for t in sorted(CONFIGS) for s in sorted(SETUPS)] + [
    (t, s) for t in PROMPT_TYPES for s in sorted(PROMPT_SETUPS)
]


def _prompt() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, 100, (2, 6), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :2] = 0  # the second prompt is left-padded, as for batched generation
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _adapted_model(model_type: str, setup: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = causal_lm(model_type).eval()
    # Never stop early, so that both decodes run NEW_TOKENS steps.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    adapters.init(model)
    for seed, (name, config) in enumerate(ALL_SETUPS[setup]):
        model.add_adapter(name, config=config)
        randomize_adapter(model, name, seed=seed)
    return model


@pytest.mark.parametrize(("model_type", "setup"), CASES)
@torch.no_grad()
def test_cached_generation_matches_cache_free_greedy_decode(model_type: str, setup: str) -> None:
    model = _adapted_model(model_type, setup)
    prompt = _prompt()
    plain_first = model(**prompt).logits[:, -1]
    model.set_active_adapters([name for name, _ in ALL_SETUPS[setup]])

    out = model.generate(
        **prompt,
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        use_cache=True,
        output_logits=True,
        return_dict_in_generate=True,
    )

    input_ids, attention_mask = prompt["input_ids"], prompt["attention_mask"]
    for step in range(NEW_TOKENS):
        # generate numbers the positions of a left-padded row from its first token; so does this.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).logits[:, -1]
        assert_close(out.logits[step], logits, msg=f"logits of step {step}")
        next_token = logits.argmax(-1, keepdim=True)
        input_ids = torch.cat([input_ids, next_token], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(next_token)], dim=1)
    assert torch.equal(out.sequences, input_ids), "cached generate and cache-free greedy decode chose other tokens"
    assert not torch.allclose(out.logits[0], plain_first, atol=1e-3), "the adapters did not act during generate"


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
@torch.no_grad()
def test_batch_split_prefixes_generate_each_row_as_alone(model_type: str) -> None:
    """BatchSplit of two prefixes of different lengths: each row generates what it generates alone.

    The shorter prefix is padded with positions its row never sees, at every step against the cache.
    """
    torch.manual_seed(0)
    model = causal_lm(model_type).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    adapters.init(model)
    for seed, (name, length) in enumerate((("a", 2), ("b", 5))):
        model.add_adapter(name, config=adapters.PrefixTuningConfig(prefix_length=length, bottleneck_size=8))
        randomize_adapter(model, name, std=0.3, seed=seed)
    prompt = _prompt()
    options = dict(max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True, return_dict_in_generate=True)

    model.set_active_adapters(adapters.BatchSplit("a", "b", batch_sizes=[1, 1]))
    split = model.generate(**prompt, **options)
    for row, name in enumerate("ab"):
        model.set_active_adapters(name)
        alone = model.generate(**{k: v[row : row + 1] for k, v in prompt.items()}, **options)
        assert torch.equal(split.sequences[row], alone.sequences[0]), f"row {row} ({name}) chose other tokens"
        for step in range(NEW_TOKENS):
            assert_close(split.logits[step][row], alone.logits[step][0])
