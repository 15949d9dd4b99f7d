#!/usr/bin/env python
"""Run the task examples and the SmolLM2 LoRA/QLoRA one, then print a summary table (``nox -s examples``).

Usage::

    python examples/run_all.py [--only sst2,mrpc,ner,squad,smollm2] [--json FILE] [OPTIONS FOR EVERY EXAMPLE]

Options it does not know (``--data-root DIR``, ``--threads 2``, ``--seed 1``, ``--out DIR``, ...)
go to every example; each example keeps its own defaults for the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import conll2003_ner
import mrpc_pairs
import smollm2_lora
import squad_qa
import sst2_classification

EXAMPLES = {
    "sst2": sst2_classification,
    "mrpc": mrpc_pairs,
    "ner": conll2003_ner,
    "squad": squad_qa,
    "smollm2": smollm2_lora,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(EXAMPLES), help=f"comma-separated subset of {','.join(EXAMPLES)}")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args, shared = ap.parse_known_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXAMPLES]
    if unknown:
        ap.error(f"unknown example(s) {unknown}; choose from {list(EXAMPLES)}")
    t0 = time.perf_counter()
    results = []
    for name in names:
        print(f"\n===== {name} =====", flush=True)
        results.append(EXAMPLES[name].main(shared))
    print("\nSummary")
    header = f"{'task':<16} {'metrics':<52} {'train ex':>8} {'steps':>6} {'train s':>8} {'total s':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        metrics = ", ".join(f"{k} {100 * v:.1f}" for k, v in r["metrics"].items())
        print(
            f"{r['task']:<16} {metrics:<52} {r['train_examples']:>8} {r['steps']:>6} "
            f"{r['train_seconds']:>8.0f} {r['total_seconds']:>8.0f}"
        )
    print(f"\nall examples: {time.perf_counter() - t0:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
