#!/usr/bin/env python
"""Where an adapter's time goes: per-operator CPU time of two models side by side (``torch.profiler``).

Usage::

    python benchmarks/profile_ops.py prefix_tuning [--compiled] [--steps 10]
    python benchmarks/profile_ops.py train_ia3 --against-peft [--steps 4]

The first form profiles the plain model and the adapted one of a ``bench.py`` case (an inference
case, or a ``train_*`` case's training step); ``--against-peft`` profiles our training step against
PEFT's on the same layers (``train_ia3`` or ``train_lora``). Both after warm-up, the same inputs as
``bench.py``; the table lists each operator's self time per call of the model (ms) and how often it
ran, largest difference first. It explains a ratio (which kernels the extra time is in); the ratios
themselves come from ``bench.py``, which alternates the models.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench


def per_operator(run, steps: int) -> dict[str, tuple[float, float]]:
    """{operator: (self CPU ms per step, calls per step)} over ``steps`` runs of ``run``."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    return {e.key: (e.self_cpu_time_total / steps / 1000, e.count / steps) for e in prof.key_averages()}


def runner(model, training: bool, inputs, labels):
    if training:
        model.train()
        return bench._StepRunner(model, model.config.hidden_size, inputs, labels)
    model.eval()

    def forward():
        with torch.inference_mode():
            model(**inputs)

    return forward


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case", help="a bench.py case of this library: seq_bn, lora, prefix_tuning, train_ia3, ...")
    ap.add_argument("--compiled", action="store_true", help="torch.compile both models (inductor) first")
    ap.add_argument("--against-peft", action="store_true", help="compare with PEFT's same method instead of plain")
    ap.add_argument("--steps", type=int, default=10, help="profiled calls per model (after 3 warm-up calls)")
    ap.add_argument("--rows", type=int, default=20)
    args = ap.parse_args(argv)

    torch.manual_seed(bench.SEED)
    base = bench.load_base_model()
    inputs, labels = bench.make_inputs(base.config.vocab_size)
    training = args.case.startswith("train_")
    if args.against_peft:
        _, first, _ = bench.build_peft_case(base, f"peft_{args.case}")
        _, second, _ = bench.build_adapters_case(base, args.case)
        names = ("PEFT", "ours")
    else:
        first, second, _ = bench.build_adapters_case(base, args.case)
        names = ("plain", "adapted")
        if training:
            for p in first.parameters():
                p.requires_grad_(True)
    results = []
    for model in (first, second):
        model = torch.compile(model) if args.compiled else model
        run = runner(model, training, inputs, labels)
        for _ in range(3):
            run()
        results.append(per_operator(run, args.steps))

    a, b = results
    keys = sorted(set(a) | set(b), key=lambda k: -abs(b.get(k, (0, 0))[0] - a.get(k, (0, 0))[0]))
    print(f"{'operator':<60} {names[0] + ' ms':>10} {names[1] + ' ms':>10} {'calls':>14}")
    for key in keys[: args.rows]:
        (ta, na), (tb, nb) = a.get(key, (0.0, 0)), b.get(key, (0.0, 0))
        print(f"{key[:60]:<60} {ta:>10.2f} {tb:>10.2f} {na:>6.0f} / {nb:<6.0f}")
    total_a, total_b = (sum(t for t, _ in r.values()) for r in results)
    print(f"{'total':<60} {total_a:>10.2f} {total_b:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
