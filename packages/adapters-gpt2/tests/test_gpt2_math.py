"""GPT-2 by hand: the LoRA family on ``Conv1D`` layers (fused q/k/v ``c_attn``), prefix and prompt tuning.

GPT-2's ``Conv1D`` computes ``x @ W + b`` with ``W`` stored ``(in, out)``. Every expected value
below is computed from the definitions with plain torch ops on the layer's own tensors: LoRA
``y + scaling * x A^T B^T`` per enabled slice of ``c_attn``'s ``[q | k | v]`` output, DoRA's
``m / ||W_row + dW_row|| * (y + scaling * dW x)`` with rows = outputs (the columns of the stored
weight), (IA)^3's per-output scaling, and merged weights ``W + scaling * dW^T``.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_decoders import base_model, causal_lm
from torch import nn

import adapters
from adapters import DoRAConfig, IA3Config, LoRAConfig, PromptTuningConfig
from adapters.testing import assert_close, randomize_adapter

HIDDEN, HEADS, INNER = 32, 4, 37


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = base_model("gpt2").eval()
    adapters.init(model)
    return model


def _ids() -> dict[str, torch.Tensor]:
    input_ids = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -2:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _io(module: nn.Module, model: nn.Module, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and output of ``module`` (layer 0) in one forward pass of ``model``."""
    seen = {}
    handle = module.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    model(**inputs)
    handle.remove()
    return seen["x"], seen["y"]


@torch.no_grad()
def test_lora_on_fused_conv1d_updates_only_the_enabled_slices() -> None:
    model = _model()
    c_attn = model.h[0].attn.c_attn
    model.add_adapter("a", config=LoRAConfig(r=2, alpha=6, attn_matrices=("q", "v")), set_active=True)
    randomize_adapter(model, "a")
    lora = c_attn.loras["a"]
    assert tuple(lora.lora_A.shape) == (2 * 2, HIDDEN) and tuple(lora.lora_B.shape) == (2 * HIDDEN, 2)
    x, got = _io(c_attn, model, _ids())

    a_q, a_v = lora.lora_A[:2], lora.lora_A[2:]
    b_q, b_v = lora.lora_B[:HIDDEN], lora.lora_B[HIDDEN:]
    plain = x @ c_attn.weight + c_attn.bias  # Conv1D: weight (in, out)
    scaling = 6 / 2
    expected = plain.clone()
    expected[..., :HIDDEN] += scaling * (x @ a_q.t() @ b_q.t())
    expected[..., 2 * HIDDEN :] += scaling * (x @ a_v.t() @ b_v.t())
    assert_close(got, expected)
    assert_close(got[..., HIDDEN : 2 * HIDDEN], plain[..., HIDDEN : 2 * HIDDEN])


@torch.no_grad()
def test_merge_into_conv1d_adds_the_transposed_update_and_reset_restores_it() -> None:
    model = _model()
    c_attn, c_fc = model.h[0].attn.c_attn, model.h[0].mlp.c_fc
    config = LoRAConfig(r=2, alpha=4, attn_matrices=("k",), intermediate_lora=True)
    model.add_adapter("a", config=config, set_active=True)
    randomize_adapter(model, "a")
    before = {k: v.clone() for k, v in model.state_dict().items() if "loras" not in k}
    inputs = _ids()
    unmerged = model(**inputs).last_hidden_state

    model.merge_adapter("a")
    lora = c_attn.loras["a"]
    delta_k = 2.0 * (lora.lora_B @ lora.lora_A)  # (out slice, in)
    expected = before["h.0.attn.c_attn.weight"].clone()
    expected[:, HIDDEN : 2 * HIDDEN] += delta_k.t()  # stored (in, out): the k columns
    assert_close(c_attn.weight, expected)
    fc = c_fc.loras["a"]
    assert_close(c_fc.weight, before["h.0.mlp.c_fc.weight"] + 2.0 * (fc.lora_B @ fc.lora_A).t())
    assert_close(model(**inputs).last_hidden_state, unmerged)

    model.reset_adapter()
    for key, value in model.state_dict().items():
        if key in before:
            assert_close(value, before[key], msg=key)


@torch.no_grad()
def test_dora_norms_the_outputs_of_a_conv1d_weight() -> None:
    model = _model()
    c_fc, c_attn = model.h[0].mlp.c_fc, model.h[0].attn.c_attn
    config = DoRAConfig(r=2, alpha=4, attn_matrices=("q", "v"), intermediate_lora=True)
    # DoRA's magnitude starts at the norm of each output's weights: the columns of the stored (in, out) weight.
    model.add_adapter("fresh", config=config)
    assert_close(c_fc.loras["fresh"].m.weight.view(-1), c_fc.weight.norm(dim=0))
    m = c_attn.loras["fresh"].m.weight.view(-1)
    columns = c_attn.weight.norm(dim=0)
    assert_close(m, torch.cat([columns[:HIDDEN], columns[2 * HIDDEN :]]))
    model.delete_adapter("fresh")

    model.add_adapter("a", config=config, set_active=True)
    randomize_adapter(model, "a")
    inputs = _ids()
    x, got = _io(c_fc, model, inputs)
    dora = c_fc.loras["a"]
    w = c_fc.weight.t()  # (out, in)
    delta = dora.lora_B @ dora.lora_A
    scale = dora.m.weight.view(-1) / (w + delta).norm(dim=1)
    expected = (x @ c_fc.weight + c_fc.bias + 2.0 * (x @ delta.t())) * scale
    assert_close(got, expected)

    # Fused c_attn: the k slice (no DoRA pair) keeps its outputs unscaled.
    x, got = _io(c_attn, model, inputs)
    dora = c_attn.loras["a"]
    w = c_attn.weight.t()
    expected = x @ c_attn.weight + c_attn.bias
    for g, rows in enumerate((slice(0, HIDDEN), slice(2 * HIDDEN, 3 * HIDDEN))):
        delta = dora.lora_B[g * HIDDEN : (g + 1) * HIDDEN] @ dora.lora_A[g * 2 : (g + 1) * 2]
        m = dora.m.weight.view(-1)[g * HIDDEN : (g + 1) * HIDDEN]
        expected[..., rows] = (expected[..., rows] + 2.0 * (x @ delta.t())) * (m / (w[rows] + delta).norm(dim=1))
    assert_close(got, expected)

    unmerged = model(**inputs).last_hidden_state
    before = {k: v.clone() for k, v in model.state_dict().items() if "loras" not in k}
    model.merge_adapter("a")
    assert_close(model(**inputs).last_hidden_state, unmerged)
    model.reset_adapter()
    for key, value in model.state_dict().items():
        if key in before:
            assert_close(value, before[key], msg=key)


@torch.no_grad()
def test_ia3_scales_the_k_and_v_outputs_of_the_fused_conv1d() -> None:
    model = _model()
    c_attn = model.h[0].attn.c_attn
    model.add_adapter("a", config=IA3Config(), set_active=True)  # k, v and the FFN input
    randomize_adapter(model, "a")
    x, got = _io(c_attn, model, _ids())
    vector = c_attn.loras["a"].lora_B.view(-1)
    assert vector.numel() == 2 * HIDDEN
    expected = (x @ c_attn.weight + c_attn.bias) * torch.cat([torch.ones(HIDDEN), vector])
    assert_close(got, expected)


def _attention_by_hand(attn: nn.Module, h: torch.Tensor, mask: torch.Tensor, keys, values) -> torch.Tensor:
    """GPT-2 self-attention of ``h`` with ``n`` prefix keys/values (heads, n, dim) every query sees."""
    batch, length, _ = h.shape
    head_dim = HIDDEN // HEADS
    q, k, v = (h @ attn.c_attn.weight + attn.c_attn.bias).split(HIDDEN, dim=-1)
    q, k, v = (t.view(batch, length, HEADS, head_dim).transpose(1, 2) for t in (q, k, v))
    k = torch.cat([keys.expand(batch, -1, -1, -1), k], dim=2)
    v = torch.cat([values.expand(batch, -1, -1, -1), v], dim=2)
    n = keys.shape[1]
    causal = torch.ones(length, length).tril().bool()
    visible = torch.cat([torch.ones(length, n, dtype=torch.bool), causal], dim=1)[None, None]
    visible = visible & torch.cat([torch.ones(batch, n), mask], dim=1).bool()[:, None, None, :]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
    weights = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    out = (weights @ v).transpose(1, 2).reshape(batch, length, HIDDEN)
    return out @ attn.c_proj.weight + attn.c_proj.bias


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@torch.no_grad()
def test_prefix_tuning_attention_matches_hand_computation(implementation: str) -> None:
    torch.manual_seed(0)
    model = base_model("gpt2").eval()
    model.set_attn_implementation(implementation)
    adapters.init(model)
    model.add_adapter("p", config=adapters.PrefixTuningConfig(prefix_length=3, bottleneck_size=8), set_active=True)
    randomize_adapter(model, "p", std=0.3)
    attn = model.h[0].attn
    inputs = _ids()
    h, got = _io(attn, model, inputs)
    keys, values = model.prefix_tuning.prefix_tunings["p"]["self_prefix"].layer_key_values(0)
    assert tuple(keys.shape) == (HEADS, 3, HIDDEN // HEADS)
    expected = _attention_by_hand(attn, h, inputs["attention_mask"], keys, values)
    valid = inputs["attention_mask"].bool()  # padded positions' outputs are not defined by the mask
    assert_close(got[0][valid], expected[valid])
    model.set_active_adapters(None)
    _, plain = _io(attn, model, inputs)
    assert not torch.allclose(plain[0][valid], got[0][valid], atol=1e-3), "the prefix had no effect"


@pytest.mark.parametrize("combine", ["prefix", "prefix_after_bos"])
@torch.no_grad()
def test_prompt_tuning_equals_the_model_run_on_the_prompted_embeddings(combine: str) -> None:
    """The prompt takes positions like tokens: GPT-2 on ``[prompt; wte(ids)]`` with the mask extended."""
    model = _model()
    config = PromptTuningConfig(prompt_length=3, combine=combine)
    model.add_adapter("p", config=config)
    randomize_adapter(model, "p")
    inputs = _ids()
    at = config.insert_at
    prompt = model.prompt_tuning.prompt_tunings["p"].prompt_embedding.weight
    embeds = model.wte(inputs["input_ids"])
    embeds = torch.cat([embeds[:, :at], prompt.expand(2, -1, -1), embeds[:, at:]], dim=1)
    mask = inputs["attention_mask"]
    mask = torch.cat([mask[:, :at], torch.ones(2, 3, dtype=mask.dtype), mask[:, at:]], dim=1)
    expected = model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state

    model.set_active_adapters("p")
    got = model(**inputs).last_hidden_state
    assert got.shape == (2, 6 + 3, HIDDEN)
    assert_close(got, expected)
    # Explicit positions (a left-padded batch numbers a row from its first token) get the prompt's inserted.
    positions = torch.arange(6).expand(2, -1)
    got = model(**inputs, position_ids=positions).last_hidden_state
    assert_close(got, expected)
    # inputs_embeds instead of input_ids: the prompt is inserted into them.
    got = model(inputs_embeds=model.wte(inputs["input_ids"]), attention_mask=inputs["attention_mask"])
    assert_close(got.last_hidden_state, expected)
    # Activated by AdapterSetup (resolved during the forward pass) instead.
    model.set_active_adapters(None)
    with adapters.AdapterSetup("p"):
        got = model(**inputs).last_hidden_state
    assert_close(got, expected)
    # Token types: the prompt positions have none.
    model.set_active_adapters("p")
    with pytest.raises(adapters.AdapterError, match="token_type_ids"):
        model(**inputs, token_type_ids=torch.zeros_like(inputs["input_ids"]))


def test_prompt_tuning_trains_through_the_lm_head_loss() -> None:
    torch.manual_seed(0)
    model = causal_lm("gpt2")
    adapters.init(model)
    model.add_adapter("p", config="prompt_tuning")
    model.train_adapter("p")
    inputs = _ids()
    out = model(**inputs, labels=inputs["input_ids"])
    assert out.logits.shape[1] == 6 + 10 and torch.isfinite(out.loss)
    out.loss.backward()
    grad = model.transformer.prompt_tuning.prompt_tunings["p"].prompt_embedding.weight.grad
    assert grad is not None and grad.abs().sum() > 0
