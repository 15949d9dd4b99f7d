"""The evaluation harness behind ``nox -s evaluate`` (``benchmarks/evaluate.py``).

Modules: ``methods`` (which methods, their configs and learning-rate grids, the reference numbers),
``tasks`` (SST-2 and MRPC: reading, selecting, tokenising, batching), ``train`` (one fine-tuning
run: attach, train, evaluate, count parameters), ``report`` (tables, best learning rates, the
issue's pass/fail checks).
"""
