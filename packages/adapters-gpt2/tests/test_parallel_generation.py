"""``generate`` under ``Parallel``: one sequence per branch, each what its adapter generates alone.

Greedy decoding with the KV cache: ``Parallel("a", "b")`` on a batch of ``B`` left-padded prompts
returns ``2 * B`` sequences, the first ``B`` equal to generating with ``a`` alone and the next
``B`` to generating with ``b`` alone (tokens, and the logits of every step).
"""

from __future__ import annotations

import pytest
import torch
from tiny_decoders import causal_lm

import adapters
from adapters import AdapterSetup, CompositionError, LoRAConfig
from adapters.composition import Parallel, Stack
from adapters.heads.language_modeling import body_cache
from adapters.testing import assert_close, randomize_adapter

NEW_TOKENS = 4
MODEL_TYPES = ["llama", "gptj", "mistral"]
LORA = LoRAConfig(r=4, alpha=8, attn_matrices=("q", "k", "v"), intermediate_lora=True, output_lora=True)
CONFIGS = {
    # leave_out: the first adapted layer is layer 1, so layer 0's cache is also per branch.
    "seq_bn": adapters.SeqBnConfig(leave_out=[0]),
    "lora": LORA,
    "prefix_tuning": adapters.PrefixTuningConfig(prefix_length=3, bottleneck_size=8),
}
OPTIONS = dict(
    max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True, output_logits=True, return_dict_in_generate=True
)


def _prompt() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, 100, (2, 6), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :2] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _model(model_type: str, config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = causal_lm(model_type).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    adapters.init(model)
    for seed, name in enumerate("ab"):
        model.add_adapter(name, config=config)
        randomize_adapter(model, name, std=0.3, seed=seed)
    return model


def _assert_branches(parallel, alone) -> None:
    assert torch.equal(parallel.sequences, torch.cat([out.sequences for out in alone]))
    for step in range(NEW_TOKENS):
        expected = torch.cat([out.logits[step] for out in alone])
        assert_close(parallel.logits[step], expected, msg=f"step {step}")


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("model_type", MODEL_TYPES)
@torch.no_grad()
def test_parallel_generate_equals_each_adapter_alone_stacked(model_type: str, config: str) -> None:
    model = _model(model_type, CONFIGS[config])
    prompt = _prompt()
    alone = []
    for name in "ab":
        model.set_active_adapters(name)
        alone.append(model.generate(**prompt, **OPTIONS))
    assert not torch.equal(alone[0].logits[0], alone[1].logits[0]), "the branches must differ"

    model.set_active_adapters(Parallel("a", "b"))
    _assert_branches(model.generate(**prompt, **OPTIONS), alone)
    # Afterwards a forward pass copies the batch itself again.
    assert model(**prompt).logits.shape[0] == 4

    model.set_active_adapters(None)
    with AdapterSetup(Parallel("a", "b")):
        _assert_branches(model.generate(**prompt, **OPTIONS), alone)


@torch.no_grad()
def test_parallel_generate_with_stacks_and_without_a_mask() -> None:
    """Branches that are Stacks, three branches, one unpadded prompt (no attention mask at all)."""
    model = _model("llama", LORA)
    model.add_adapter("c", config="seq_bn")
    randomize_adapter(model, "c", std=0.3, seed=5)
    prompt = {"input_ids": _prompt()["input_ids"][:1]}
    alone = []
    for setup in (Stack("a", "c"), "b", "c"):
        model.set_active_adapters(setup)
        alone.append(model.generate(**prompt, **OPTIONS))
    model.set_active_adapters(Parallel(Stack("a", "c"), "b", "c"))
    _assert_branches(model.generate(**prompt, **OPTIONS), alone)


@torch.no_grad()
def test_parallel_generate_refuses_a_given_cache() -> None:
    model = _model("llama", LORA)
    prompt = _prompt()
    model.set_active_adapters("a")
    cache = body_cache(model(**prompt, use_cache=True))
    model.set_active_adapters(Parallel("a", "b"))
    with pytest.raises(CompositionError, match="past_key_values"):
        model.generate(**prompt, past_key_values=cache, max_new_tokens=2)
