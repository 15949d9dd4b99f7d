"""Adapters on quantized bases: a tiny Llama loaded with bitsandbytes 4-bit (NF4 with double quantization, FP4)
and 8-bit (LLM.int8) through transformers' ``BitsAndBytesConfig``, and with torchao's weight-only int8
(``Int8WeightOnlyConfig``) and int4 (``IntxWeightOnlyConfig`` with ``torch.int4``, groups of 32) through
``TorchAoConfig``, on CPU. torchao's ``Int4WeightOnlyConfig`` is tried too, and skipped where torchao cannot
quantize with it (torchao 0.18 on CPU: every packing format needs CUDA; the skip gives each error).

Each method trains (only its parameters get gradients, the loss falls on a batch it memorises), saves
and reloads into a freshly quantized model with the same outputs, and composes. Merging into
quantized weights re-quantizes them with a warning, and ``reset_adapter`` restores the quantized
weights bit for bit.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable

import pytest
import torch
from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM, TorchAoConfig

import adapters
from adapters.composition import BatchSplit, Stack
from adapters.testing import assert_close, randomize_adapter


def _torchao(make_config: Callable) -> Callable[[], TorchAoConfig]:
    # torchao is imported when a case runs (and skipped where it is not installed), not at collection.
    return lambda: TorchAoConfig(quant_type=make_config(importlib.import_module("torchao.quantization")))


# name: (the package it needs, the transformers quantization config)
QUANTIZATIONS: dict[str, tuple[str, Callable]] = {
    "nf4": (
        "bitsandbytes",
        lambda: BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        ),
    ),
    "fp4": (
        "bitsandbytes",
        lambda: BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype=torch.float32),
    ),
    "int8": ("bitsandbytes", lambda: BitsAndBytesConfig(load_in_8bit=True)),
    # (set_inductor_config=False: quantizing would otherwise change torch.compile's settings for the whole process.)
    "torchao-int8": ("torchao", _torchao(lambda ao: ao.Int8WeightOnlyConfig(set_inductor_config=False))),
    # torchao's int4 weight-only path on CPU: 4-bit codes (one per byte), a scale per group of 32.
    "torchao-intx4": (
        "torchao",
        _torchao(lambda ao: ao.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=ao.PerGroup(32))),
    ),
    "torchao-int4": ("torchao", _torchao(lambda ao: ao.Int4WeightOnlyConfig(32, set_inductor_config=False))),
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


@functools.cache
def int4_weight_only_on_cpu() -> str | None:
    """Why torchao's Int4WeightOnlyConfig cannot quantize a linear on CPU, per packing format (None: one can)."""
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    errors = []
    for packing in ("plain", "preshuffled", "plain_int32", "tile_packed_to_4d"):
        for dtype in (torch.float32, torch.bfloat16):
            try:
                config = Int4WeightOnlyConfig(32, int4_packing_format=packing, set_inductor_config=False)
                quantize_(torch.nn.Linear(64, 8, dtype=dtype), config)
                return None
            except Exception as error:  # whatever torchao raises is the reason reported
                errors.append(f"{packing} ({dtype}): {type(error).__name__}: {error}")
    return "; ".join(errors)


def quantized(checkpoint, quantization: str) -> LlamaForCausalLM:
    package, make_config = QUANTIZATIONS[quantization]
    pytest.importorskip(package)
    if quantization == "torchao-int4" and (reason := int4_weight_only_on_cpu()):
        pytest.skip(f"torchao's Int4WeightOnlyConfig cannot quantize on CPU: {reason}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bitsandbytes' notes about CPU kernels and float16 casts
        model = LlamaForCausalLM.from_pretrained(checkpoint, quantization_config=make_config(), device_map="cpu")
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


def is_torchao(tensor: torch.Tensor) -> bool:
    return type(tensor).__module__.startswith("torchao.")


def torchao_parts(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """A torchao weight's tensors (codes, scales, zero points): what torchao flattens into a state dict."""
    names = (*weight.tensor_data_names, *getattr(weight, "optional_tensor_data_names", ()))
    return {name: getattr(weight, name) for name in names if getattr(weight, name, None) is not None}


def quantized_weights(model) -> dict[str, torch.Tensor]:
    """The quantized codes of every layer, each 4-bit layer's block scales, and each torchao weight's tensors.

    Read from the parameters, not ``state_dict()``: on CPU, bitsandbytes' ``state_dict`` of a 4-bit
    layer that its kernels have repacked converts it back, which rounds its block scales again and
    moves the next outputs by about 1e-3 (bitsandbytes 0.50).
    """
    codes = {n: p.data.clone() for n, p in model.named_parameters() if not p.dtype.is_floating_point}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None:
            codes[f"{name}.absmax"] = state.absmax.clone()
        if is_torchao(weight):
            codes.update({f"{name}.weight.{part}": tensor.clone() for part, tensor in torchao_parts(weight).items()})
    assert codes, "no quantized weights: the model was not quantized"
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
    weights = dict(model.named_parameters())
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
    assert all(p is weights[n] for n, p in model.named_parameters() if n in weights), "not the original parameters"
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


# -- torchao: the settings a merge re-quantizes with, and the formats it refuses -----------------


def _torchao_configs() -> dict[str, Callable]:
    """Weight-only configs (and the weight dtype) whose settings a merge must recover from the tensor alone."""
    return {
        "int8-per-row": lambda ao: (ao.Int8WeightOnlyConfig(set_inductor_config=False), torch.float32),
        "int8-per-tensor": lambda ao: (
            ao.Int8WeightOnlyConfig(granularity=ao.PerTensor(), set_inductor_config=False),
            torch.float32,
        ),
        "int8-per-group": lambda ao: (
            ao.Int8WeightOnlyConfig(granularity=ao.PerGroup(32), set_inductor_config=False),
            torch.float32,
        ),
        "int8-bf16": lambda ao: (ao.Int8WeightOnlyConfig(set_inductor_config=False), torch.bfloat16),
        "intx4-symmetric": lambda ao: (
            ao.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=ao.PerGroup(32)),
            torch.float32,
        ),
        "intx4-asymmetric": lambda ao: (
            ao.IntxWeightOnlyConfig(
                weight_dtype=torch.int4, granularity=ao.PerGroup(32), mapping_type=ao.MappingType.ASYMMETRIC
            ),
            torch.float32,
        ),
        "intx8-per-row": lambda ao: (ao.IntxWeightOnlyConfig(weight_dtype=torch.int8), torch.float32),
        "intx4-bf16-float32-scales": lambda ao: (
            ao.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=ao.PerGroup(32), scale_dtype=torch.float32),
            torch.bfloat16,
        ),
    }


@pytest.mark.parametrize("name", sorted(_torchao_configs()))
def test_a_torchao_weight_gives_back_the_config_it_was_quantized_with(name):
    """Quantizing a weight with the recovered config is the same computation as with the original: equal tensors."""
    ao = pytest.importorskip("torchao.quantization")
    from adapters.methods.lora.torchao_weights import torchao_config

    config, dtype = _torchao_configs()[name](ao)
    torch.manual_seed(0)
    original, again = torch.nn.Linear(64, 48, dtype=dtype), torch.nn.Linear(64, 48, dtype=dtype)
    again.load_state_dict(original.state_dict())
    ao.quantize_(original, config)
    ao.quantize_(again, torchao_config(original.weight))
    assert type(again.weight) is type(original.weight)
    expected, got = torchao_parts(original.weight), torchao_parts(again.weight)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[part], expected[part]) for part in expected), f"{name}: the tensors differ"


def _int8_dynamic_activation(model, ao) -> None:
    # Not weight-only (its activations are quantized too): no weight-only config reproduces it.
    ao.quantize_(model.model, ao.Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))


def _int4_tensor(model, ao) -> None:
    # torchao 0.18 cannot make an Int4Tensor on CPU (see int4_weight_only_on_cpu), but can hold one: built from
    # its parts, in the last layer LoRA adapts, so the layers before it merge first and must be put back.
    linear = model.model.layers[-1].self_attn.v_proj
    out, in_ = linear.weight.shape
    parts = torch.zeros(out, in_ // 2, dtype=torch.uint8), torch.ones(in_ // 32, out), torch.zeros(in_ // 32, out)
    linear.weight = torch.nn.Parameter(ao.Int4Tensor(*parts, [1, 32], torch.Size([out, in_])), requires_grad=False)


@pytest.mark.parametrize(
    ("make", "error"),
    [(_int8_dynamic_activation, "settings cannot be read"), (_int4_tensor, "Int4Tensor, which has no dequantize")],
    ids=["int8-dynamic-activation", "int4-tensor"],
)
def test_merging_into_torchao_weights_it_cannot_requantize_is_refused_and_changes_nothing(checkpoint, make, error):
    ao = pytest.importorskip("torchao.quantization")
    model = LlamaForCausalLM.from_pretrained(checkpoint, device_map="cpu").eval()
    make(model, ao)  # (torchao's own quantize_, without transformers)
    adapters.init(model)
    model.add_adapter("task", config="lora")
    randomize_adapter(model, "task", std=0.1)
    weights, before = dict(model.named_parameters()), quantized_weights(model)
    with pytest.raises(TypeError, match=error):
        model.merge_adapter("task")
    if make is _int4_tensor:  # DoRA reads the weight when it is added
        with pytest.raises(TypeError, match=error):
            model.add_adapter("dora", config="dora")
    assert all(p is weights[n] for n, p in model.named_parameters()), "a refused merge replaced a weight"
    assert all(torch.equal(before[k], v) for k, v in quantized_weights(model).items()), "a refused merge changed one"
