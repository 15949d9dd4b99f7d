"""Adapters on quantized bases: a tiny Llama loaded with bitsandbytes 4-bit (NF4 with double quantization, FP4)
and 8-bit (LLM.int8) through transformers' ``BitsAndBytesConfig``, on CPU.

Each method trains (only its parameters get gradients, the loss falls on a batch it memorises), saves
and reloads into a freshly quantized model with the same outputs, and composes. Merging into
quantized weights re-quantizes them with a warning, and ``reset_adapter`` restores the quantized
weights bit for bit.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

import adapters
from adapters.composition import BatchSplit, Stack
from adapters.testing import assert_close, randomize_adapter

pytest.importorskip("bitsandbytes")

QUANTIZATIONS = {
    "nf4": BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    ),
    "fp4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype=torch.float32),
    "int8": BitsAndBytesConfig(load_in_8bit=True),
}
METHODS = ("lora", "dora", "ia3", "vera", "seq_bn", "par_bn", "prefix_tuning", "prompt_tuning", "loreft")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random Llama saved as a checkpoint, which each test loads quantized."""
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=100,
        max_position_embeddings=64,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def quantized(checkpoint, quantization: str) -> LlamaForCausalLM:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bitsandbytes' notes about CPU kernels and float16 casts
        model = LlamaForCausalLM.from_pretrained(
            checkpoint, quantization_config=QUANTIZATIONS[quantization], device_map="cpu"
        )
    model.eval()
    adapters.init(model)
    return model


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids}


def logits(model) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(input_ids=batch()["input_ids"]).logits


def quantized_weights(model) -> dict[str, torch.Tensor]:
    """The quantized codes of every layer, and each 4-bit layer's block scales.

    Read from the parameters, not ``state_dict()``: on CPU, bitsandbytes' ``state_dict`` of a 4-bit
    layer that its kernels have repacked converts it back, which rounds its block scales again and
    moves the next outputs by about 1e-3 (bitsandbytes 0.50).
    """
    codes = {n: p.data.clone() for n, p in model.named_parameters() if not p.dtype.is_floating_point}
    for name, module in model.named_modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            codes[f"{name}.absmax"] = state.absmax.clone()
    return codes


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("quantization", sorted(QUANTIZATIONS))
def test_each_method_trains_saves_and_reloads_on_a_quantized_base(checkpoint, tmp_path, quantization, method):
    model = quantized(checkpoint, quantization)
    before = quantized_weights(model)
    model.add_adapter("task", config=method)
    model.train_adapter("task")
    model.lm_head.requires_grad_(False)  # the pre-trained LM head stays frozen: only the adapter trains
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".task." in n or "task" in n.split(".") for n in trainable), sorted(trainable)[:4]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(15):
            loss = model(**batch()).loss
            loss.backward()
            touched = {n for n, p in model.named_parameters() if p.grad is not None}
            assert touched <= trainable, f"gradients outside the adapter: {sorted(touched - trainable)[:4]}"
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    # Memorising one batch: the loss falls step after step (IA3's scaling vectors move it slowest, 0.18 nats).
    assert losses[-1] < losses[0] - 0.05, f"{method} on {quantization}: the loss did not fall {losses}"
    assert all(torch.equal(before[k], v) for k, v in quantized_weights(model).items()), "training moved the base"

    model.eval()
    model.set_active_adapters("task")
    expected = logits(model)
    model.save_adapter(tmp_path / "task", "task")
    fresh = quantized(checkpoint, quantization)
    fresh.load_adapter(tmp_path / "task", set_active=True)
    assert_close(logits(fresh), expected, msg=f"{method} on {quantization} after save and reload")


@pytest.mark.parametrize("quantization", sorted(QUANTIZATIONS))
def test_adapters_compose_on_a_quantized_base(checkpoint, quantization):
    model = quantized(checkpoint, quantization)
    for seed, (name, config) in enumerate((("a", "lora"), ("b", "lora"), ("bn", "seq_bn"))):
        model.add_adapter(name, config=config)
        randomize_adapter(model, name, seed=seed)
    ids = batch()["input_ids"]
    separate = []
    for name in ("a", "b"):
        model.set_active_adapters(name)
        separate.append(logits(model))
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 1]))
    together = logits(model)
    assert_close(together[:1], separate[0][:1], msg="BatchSplit's first example")
    assert_close(together[1:], separate[1][1:], msg="BatchSplit's second example")
    model.set_active_adapters(Stack("a", "bn"))
    stacked = logits(model)
    assert stacked.shape == (ids.shape[0], ids.shape[1], 100)
    assert not torch.allclose(stacked, separate[0], atol=1e-4), "the bottleneck in the Stack did nothing"


@pytest.mark.parametrize("config", ["lora", "dora", "ia3"])
@pytest.mark.parametrize("quantization", sorted(QUANTIZATIONS))
def test_merging_requantizes_with_a_warning_and_reset_restores_the_quantized_weights(checkpoint, quantization, config):
    model = quantized(checkpoint, quantization)
    plain = logits(model)
    before = quantized_weights(model)
    model.add_adapter("task", config=config)
    randomize_adapter(model, "task", std=0.1)
    model.set_active_adapters("task")
    unmerged = logits(model)
    with pytest.warns(UserWarning, match=r"-quantized layers re-quantizes their weights: .* exact sum by up to"):
        model.merge_adapter("task")
    merged = logits(model)
    # Re-quantization rounds the merged weights to the grid again: the outputs move by about what
    # quantizing the base moved them (a 4-bit or 8-bit step), far less than the adapter's own effect.
    assert (merged - unmerged).abs().mean() < 0.5 * (unmerged - plain).abs().mean()
    assert not all(torch.equal(before[k], v) for k, v in quantized_weights(model).items()), "nothing was merged"
    model.reset_adapter()
    assert all(torch.equal(before[k], v) for k, v in quantized_weights(model).items()), "reset changed the base"
    model.set_active_adapters(None)
    assert torch.equal(logits(model), plain), "after reset the model is not the quantized base"


@pytest.mark.parametrize("quantization", ["nf4", "fp4"])
def test_training_after_an_inference_pass_still_reaches_every_adapter(checkpoint, quantization):
    """On a CPU with AVX512-BF16, bitsandbytes repacks 4-bit weights for inference on the first eval pass, and its
    matmul on that layout has no backward; a training pass puts them back first, so every layer's LoRA gets a gradient.
    """
    model = quantized(checkpoint, quantization)
    model.add_adapter("task", config="lora")
    randomize_adapter(model, "task")
    model.set_active_adapters("task")
    logits(model)  # evaluation first (repacks where the CPU has the kernel)
    model.train_adapter("task")
    model.lm_head.requires_grad_(False)
    model(**batch()).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reached {missing[:4]}"
