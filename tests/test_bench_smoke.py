"""Smoke test of the speed benchmark (benchmarks/bench.py) on a tiny random BERT.

The real benchmark (``nox -s bench``) needs the all-MiniLM-L6-v2 package and takes minutes; this
runs every case of the same script (builders, alternation, FLOP counts, the checks each case makes
of its own outputs, the table and the JSON) in seconds, so that the script cannot rot unnoticed.
The ratios of a tiny model mean nothing and are not checked.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert

from adapters.testing import tolerance

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


@pytest.fixture
def bench(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("adapters_bench_script", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def tiny_model():
        # make_inputs draws token ids from 1000 up; 4 layers so that Parallel's leave_out [0, 1, 2] leaves one.
        return tiny_bert(num_hidden_layers=4, vocab_size=1100, max_position_embeddings=module.SEQ_LEN)

    monkeypatch.setattr(module, "load_base_model", tiny_model)
    monkeypatch.setattr(module, "DECODER_SIZE", {"n_embd": 32, "n_layer": 2, "n_head": 4})
    monkeypatch.setattr(module, "model_dir", lambda: tmp_path)
    monkeypatch.setattr(sys, "argv", ["bench.py"])
    return module


def test_every_case_runs_and_checks_its_own_outputs(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--out", str(out), "--quick", "--no-peft", "--threads", "1", "--compile-backend", "eager"]
    assert bench.main(argv) == 0

    report = json.loads(out.read_text())
    cases = report["cases"]
    ran = {name: res for name, res in cases.items() if "skipped" not in res}
    peft_compositions = {"peft_batch_split_lora", "peft_batch_split_64_lora"}
    peft_only = set(bench.PEFT_CASES) | set(bench.PEFT_COMPILED_CASES) | peft_compositions | bench.AGAINST_PEFT
    assert set(ran) == set(bench.ALL_CASES) - peft_only
    for name, res in ran.items():
        assert "error" not in res, (name, res.get("traceback"))
        assert res["ratio"] > 0 and res["rounds"] == len(res["per_round"]["ratio"])

    # What each case checks of its own outputs (the numbers the README's claims stand on).
    assert cases["init_no_adapter"]["max_abs_diff_vs_plain"] == 0.0
    assert cases["init_no_adapter"]["flops_ratio"] == 1.0
    # Other computations of the same outputs (float32): equal up to rounding of the outputs' scale.
    for case, diff, scale in (
        ("lora_merged", "merged_vs_unmerged_max_abs_diff", "merged_vs_unmerged_scale"),
        ("batch_split_lora", "max_abs_diff_vs_each_adapter_alone", "each_adapter_alone_scale"),
        ("parallel_seq_bn", "max_abs_diff_vs_separate_passes", "separate_passes_scale"),
    ):
        assert cases[case][diff] <= tolerance(torch.tensor(cases[case][scale])), (case, cases[case])
    # Compiled (traced as one graph each: fullgraph=True) gives eager's outputs, and never recompiles
    # while timed; switching to another LoRA of the same config does not recompile either.
    for method in bench.COMPILED_METHODS:
        compiled = cases[f"compiled_{method}"]
        assert compiled["max_abs_diff_vs_eager"] <= tolerance(torch.tensor(compiled["eager_scale"])), compiled
        assert compiled["target"] == compiled["flops_ratio"] + bench.COMPILED_TARGET_MARGIN
        for name in (f"compiled_{method}", f"compiled_train_{method}"):
            assert not cases[name]["recompiled_while_timed"], name
    assert cases["compiled_lora"]["switch_recompiled"] is False
    assert cases["compiled_train_lora"]["flops_ratio"] < 1.0  # no weight gradients for the frozen base
    assert cases["par_bn"]["flops_ratio"] > cases["seq_bn"]["flops_ratio"] > 1.0
    assert cases["decoder_double_seq_bn"]["flops_ratio"] > cases["decoder_seq_bn"]["flops_ratio"] > 1.0
    # The floor trains only the embeddings' LayerNorm; adapters train fewer weights than full fine-tuning.
    assert cases["train_floor"]["trainable_params_adapted"] == 2 * 32
    for name in ("train_seq_bn", "train_lora"):
        assert 0 < cases[name]["trainable_params_adapted"] < cases[name]["trainable_params_plain"]

    table = capsys.readouterr().out
    assert "train_floor" in table and f"adapters {report['environment']['adapters']}" in table


def test_retained_bytes_counts_the_tensors_and_objects_kept_not_those_freed(bench):
    kept: list = []

    def allocate():
        kept.append(torch.zeros(1000))  # 4,000 bytes kept
        torch.zeros(50_000)  # freed at once
        kept.append(list(range(1000)))

    tensors, objects = bench.retained_bytes(allocate)
    assert tensors == 4000
    assert objects >= 1000 * 28  # a list of 1,000 ints: at least their objects


def test_the_operator_profile_runs_on_both_comparisons(bench, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("adapters_profile_ops", BENCH.parent / "profile_ops.py")
    profile_ops = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench", bench)  # the patched tiny model, not the real one
    spec.loader.exec_module(profile_ops)
    assert profile_ops.main(["prefix_tuning", "--steps", "1"]) == 0
    assert "aten::" in capsys.readouterr().out
    pytest.importorskip("peft")
    assert profile_ops.main(["train_ia3", "--against-peft", "--steps", "1", "--rows", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "PEFT ms" in lines[0] and lines[-1].startswith("total") and len(lines) == 5
