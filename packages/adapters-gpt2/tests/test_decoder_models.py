"""Decoder specifics: grouped-query LoRA shapes, Stack refusal, head/bare files, LoRA under rotary."""

from __future__ import annotations

import pytest
import torch
from tiny_decoders import CONFIGS, base_model, causal_lm

import adapters
from adapters import CompositionError, LoRAConfig
from adapters.composition import Stack
from adapters.testing import assert_close, randomize_adapter

# GPT-J and GPT-2 have as many k/v heads as q heads (GPT-2's fused c_attn: test_gpt2_conv1d.py).
GQA_TYPES = sorted(t for t in CONFIGS if t not in ("gptj", "gpt2"))
QKV = LoRAConfig(r=4, attn_matrices=("q", "k", "v"))


@pytest.mark.parametrize("model_type", GQA_TYPES)
def test_lora_follows_grouped_query_projection_shapes(model_type: str) -> None:
    model = base_model(model_type)
    adapters.init(model)
    model.add_adapter("a", config=QKV)
    attention = model.layers[0].self_attn
    for name, rows in (("q_proj", 4 * 8), ("k_proj", 2 * 8), ("v_proj", 2 * 8)):
        lora = getattr(attention, name).loras["a"]
        assert tuple(lora.lora_A.shape) == (4, 32)
        assert tuple(lora.lora_B.shape) == (rows, 4), name


@pytest.mark.parametrize("model_type", GQA_TYPES)
def test_stack_of_loras_on_grouped_query_projections_is_refused(model_type: str) -> None:
    model = base_model(model_type)
    adapters.init(model)
    model.add_adapter("a", config=QKV)
    model.add_adapter("b", config=QKV)
    model.set_active_adapters("a")
    with pytest.raises(CompositionError, match="non-square"):
        model.set_active_adapters(Stack("a", "b"))
    assert model.active_adapters == Stack("a"), "a refused activation must keep the previous setup"


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_adapter_saved_from_causal_lm_loads_into_bare_model(model_type: str, tmp_path) -> None:
    torch.manual_seed(0)
    lm = causal_lm(model_type).eval()
    body = {key: value.clone() for key, value in lm.base_model.state_dict().items()}
    adapters.init(lm)
    lm.add_adapter("a", config="seq_bn|lora", set_active=True)
    randomize_adapter(lm, "a")
    input_ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = lm(input_ids, output_hidden_states=True).hidden_states[-1]
    lm.save_adapter(tmp_path, "a")

    bare = base_model(model_type).eval()
    bare.load_state_dict(body)
    adapters.init(bare)
    bare.load_adapter(tmp_path, set_active=True)
    with torch.no_grad():
        got = bare(input_ids).last_hidden_state
    assert_close(got, expected)


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
@torch.no_grad()
def test_unmerged_lora_on_q_and_k_equals_merged_under_rotary_positions(model_type: str) -> None:
    # Rotary embeddings rotate q and k after the projections: an unmerged LoRA on q/k must give what
    # the same update merged into the weights gives, at every position (including a shifted start).
    torch.manual_seed(0)
    model = base_model(model_type).eval()
    adapters.init(model)
    model.add_adapter("a", config=QKV, set_active=True)
    randomize_adapter(model, "a")
    input_ids = torch.randint(3, 100, (1, 9), generator=torch.Generator().manual_seed(2))
    position_ids = torch.arange(5, 14).unsqueeze(0)
    unmerged = model(input_ids, position_ids=position_ids).last_hidden_state
    model.merge_adapter("a")
    merged = model(input_ids, position_ids=position_ids).last_hidden_state
    assert_close(merged, unmerged)
