"""``generate`` under ``Parallel`` for encoder-decoder models: one sequence per branch and source.

Greedy decoding with the KV cache: ``Parallel("a", "b")`` on ``B`` (padded) sources returns
``2 * B`` sequences, the first ``B`` equal to generating with ``a`` alone and the next ``B`` to
generating with ``b`` alone (tokens, and the logits of every step). The sources are copied once per
branch before the encoder runs, so each branch's decoder attends to its own encoder output and
keeps its own self- and cross-attention caches.
"""

from __future__ import annotations

import pytest
import torch
from tiny_seq2seq import VOCAB, generation_model

import adapters
from adapters import AdapterSetup, AutoAdapterModel, CompositionError, LoRAConfig
from adapters.composition import Parallel, Stack
from adapters.heads.language_modeling import body_cache
from adapters.testing import assert_close, randomize_adapter

NEW_TOKENS = 4
MODEL_TYPES = ["t5", "bart"]
LORA = LoRAConfig(r=4, alpha=8, attn_matrices=("q", "k", "v"), intermediate_lora=True, output_lora=True)
CONFIGS = {
    "seq_bn": adapters.SeqBnConfig(),
    "lora": LORA,
    "prefix_tuning": adapters.PrefixTuningConfig(prefix_length=3, bottleneck_size=8),
}
OPTIONS = dict(
    max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True, output_logits=True, return_dict_in_generate=True
)


def _source() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, VOCAB, (2, 6), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -2:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _never_stop(model: torch.nn.Module) -> None:
    model.generation_config.eos_token_id = None
    model.generation_config.forced_eos_token_id = None
    model.generation_config.forced_bos_token_id = None


def _add(model: torch.nn.Module, config, names: str = "ab") -> torch.nn.Module:
    for seed, name in enumerate(names):
        model.add_adapter(name, config=config)
        randomize_adapter(model, name, std=0.3, seed=seed)
    return model


def _model(model_type: str, config) -> torch.nn.Module:
    model = generation_model(model_type)
    _never_stop(model)
    adapters.init(model)
    return _add(model, config)


def _assert_branches(parallel, alone) -> None:
    assert torch.equal(parallel.sequences, torch.cat([out.sequences for out in alone]))
    for step in range(NEW_TOKENS):
        expected = torch.cat([out.logits[step] for out in alone])
        assert_close(parallel.logits[step], expected, msg=f"step {step}")


def _alone(model: torch.nn.Module, setups, source) -> list:
    out = []
    for setup in setups:
        model.set_active_adapters(setup)
        out.append(model.generate(**source, **OPTIONS))
    return out


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("model_type", MODEL_TYPES)
@torch.no_grad()
def test_parallel_generate_equals_each_adapter_alone_stacked(model_type: str, config: str) -> None:
    model = _model(model_type, CONFIGS[config])
    source = _source()
    alone = _alone(model, "ab", source)
    assert not torch.equal(alone[0].logits[0], alone[1].logits[0]), "the branches must differ"

    model.set_active_adapters(Parallel("a", "b"))
    _assert_branches(model.generate(**source, **OPTIONS), alone)
    # Afterwards a forward pass copies the batch itself again.
    start = torch.full((2, 1), model.config.decoder_start_token_id)
    assert model(**source, decoder_input_ids=start).logits.shape[0] == 4

    model.set_active_adapters(None)
    with AdapterSetup(Parallel("a", "b")):
        _assert_branches(model.generate(**source, **OPTIONS), alone)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@torch.no_grad()
def test_parallel_generate_from_given_encoder_outputs(model_type: str) -> None:
    """``encoder_outputs`` computed beforehand (without adapters) are copied per branch like the source."""
    model = _model(model_type, LORA)
    source = _source()
    model.set_active_adapters(None)
    encoder_outputs = model.get_encoder()(**source)
    given = {"encoder_outputs": encoder_outputs, "attention_mask": source["attention_mask"]}
    alone = _alone(model, "ab", given)
    model.set_active_adapters(Parallel("a", "b"))
    _assert_branches(model.generate(**given, **OPTIONS), alone)


@torch.no_grad()
def test_parallel_generate_with_stacks_three_branches_and_no_mask() -> None:
    model = _model("t5", LORA)
    model.add_adapter("c", config="seq_bn")
    randomize_adapter(model, "c", std=0.3, seed=5)
    source = {"input_ids": _source()["input_ids"][:1]}
    alone = _alone(model, (Stack("a", "c"), "b", "c"), source)
    model.set_active_adapters(Parallel(Stack("a", "c"), "b", "c"))
    _assert_branches(model.generate(**source, **OPTIONS), alone)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@torch.no_grad()
def test_parallel_generate_with_the_adapter_model_class(model_type: str) -> None:
    torch.manual_seed(0)
    model = AutoAdapterModel.from_config(generation_model(model_type).config).eval()
    _never_stop(model)
    _add(model, LORA)
    model.add_seq2seq_lm_head("lm")
    source = _source()
    alone = _alone(model, "ab", source)
    model.set_active_adapters(Parallel("a", "b"))
    _assert_branches(model.generate(**source, **OPTIONS), alone)


@torch.no_grad()
def test_parallel_generate_refuses_a_given_cache() -> None:
    model = _model("bart", LORA)
    source = _source()
    model.set_active_adapters("a")
    start = torch.full((2, 1), model.config.decoder_start_token_id)
    cache = body_cache(model(**source, decoder_input_ids=start, use_cache=True))
    model.set_active_adapters(Parallel("a", "b"))
    with pytest.raises(CompositionError, match="past_key_values"):
        model.generate(**source, past_key_values=cache, max_new_tokens=2)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@torch.no_grad()
def test_adapter_setup_context_reaches_the_encoder_that_generate_runs(model_type: str) -> None:
    """generate() calls the encoder directly; an ``AdapterSetup`` must still apply there."""
    model = _model(model_type, LORA)
    source = _source()
    (expected,) = _alone(model, "a", source)
    model.set_active_adapters(None)
    with AdapterSetup("a"):
        got = model.generate(**source, **OPTIONS)
    _assert_branches(got, [expected])
