"""Every method the reference library saves, on 16 architectures: its files give its outputs here.

Three of them (ModernBERT, Phi, StableLM) the reference adapts through an AdapterModelInterface.

The fixtures (``tests/fixtures/reference/dropin/``, written by ``make_dropin.py`` there with
``adapters`` 1.3.0 on transformers 4.57) hold, per model type, a tiny random base checkpoint,
right-padded inputs and, per case, what the reference's ``save_adapter`` wrote with every adapter
parameter noised (as training moves them) and the outputs it computed in eval mode with its default
attention. Each case here loads the files into the transformers 5 model with this library and
compares every output.

Where the reference computes something provably wrong, this library keeps the right math; each such
difference is one row of the README's "Differences from the reference" table and one entry of
:data:`DIFFERENCES`, and its test shows that the difference is exactly the documented one: the
reference's own computation without the defect (kept in ``<case>.evidence.safetensors``) gives our
outputs, and its output with the defect does not. ``nox -s reference_roundtrip`` checks the other
direction (``export_dropin.py`` here, ``check_dropin.py`` in the reference's venv).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import adapters
from adapters.composition import Average, BatchSplit, Fuse, Parallel, Split, Stack
from adapters.testing import CROSS_LIBRARY_ULPS, assert_close, tolerance

FIXTURES = Path(__file__).parent / "fixtures" / "reference" / "dropin"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["models"]

# (model type, case) -> the documented difference (README, "Differences from the reference"), with
# what each kind means and its evidence; read by the reverse check in the reference's venv too.
DIFFERENCE_TABLE = json.loads((FIXTURES / "differences.json").read_text())
DIFFERENCES: dict[tuple[str, str], str] = {
    (model_type, case): kind for model_type, cases in DIFFERENCE_TABLE["cases"].items() for case, kind in cases.items()
}
TRIMMED_ROWS = {
    (model_type, case): rows
    for model_type, cases in DIFFERENCE_TABLE["trimmed_rows"].items()
    for case, rows in cases.items()
}


# Model types the reference adapted through a user's AdapterModelInterface (given to init here too, in place of
# any plugin's spec).
INTERFACE_ONLY = ("stablelm",)


def _setup(model_type: str, case: str, names: list[str]):
    a, b = names
    return {
        "stack_prefix": Stack(a, b),
        "stack_bn": Stack(a, b),
        "parallel_bn": Parallel(a, b),
        "batchsplit_bn": BatchSplit(a, b, batch_sizes=[1, 1]),
        "batchsplit_lora": BatchSplit(a, b, batch_sizes=[1, 1]),
        "split_bn": Split(a, b, splits=[8, 9] if model_type == "vit" else [3, 4]),
        "fuse_bn": Fuse(a, b),
        "average_bn": Average(a, b, weights=[0.7, 0.3]),
        "average_lora": Average(a, b, weights=[0.7, 0.3]),
    }[case]


CASES = [
    (model_type, case)
    for model_type, entry in sorted(MANIFEST.items())
    for case in [*entry["cases"], *entry["compositions"]]
]


def _load(model_type: str, case: str) -> torch.nn.Module:
    """The base model (transformers 5) with the reference's files of ``case`` loaded and active."""
    entry = MANIFEST[model_type]
    model = getattr(transformers, entry["base_class"]).from_pretrained(FIXTURES / model_type / "base").eval()
    first = FIXTURES / model_type / case
    if case not in entry["cases"]:
        first = first / entry["compositions"][case]["adapters"][0]
    if model_type in INTERFACE_ONLY:
        # No plugin names this type: the interface the reference saved beside the adapter places it.
        adapters.init(model, interface=adapters.AdapterModelInterface.load(first))
    else:
        adapters.init(model)
    if case in entry["cases"]:
        model.load_adapter(str(FIXTURES / model_type / case), set_active=True)
        return model
    names = entry["compositions"][case]["adapters"]
    for name in names:
        model.load_adapter(str(FIXTURES / model_type / case / name))
    if case.startswith("fuse"):
        model.load_adapter_fusion(str(FIXTURES / model_type / case / "fusion"))
    model.set_active_adapters(_setup(model_type, case, names))
    return model


@torch.no_grad()
def _outputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = model(**batch)
    result = {"last_hidden_state": out.last_hidden_state}
    if getattr(out, "encoder_last_hidden_state", None) is not None:
        result["encoder_last_hidden_state"] = out.encoder_last_hidden_state
    return result


def _evidence(model_type: str, case: str, kind: str) -> dict[str, torch.Tensor]:
    tensors = load_file(FIXTURES / model_type / f"{case}.evidence.safetensors")
    return {k[len(kind) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{kind}.")}


def _differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape != b.shape or (a - b).abs().max().item() > tolerance(b, ulps=10 * CROSS_LIBRARY_ULPS)


@pytest.mark.parametrize(("model_type", "case"), CASES, ids=[f"{m}-{c}" for m, c in CASES])
def test_reference_file_gives_reference_outputs(model_type: str, case: str) -> None:
    batch = load_file(FIXTURES / model_type / "inputs.safetensors")
    model = _load(model_type, case)
    got = _outputs(model, batch)
    expected = load_file(FIXTURES / model_type / f"{case}.expected.safetensors")
    assert got.keys() == expected.keys()
    kinds = DIFFERENCES.get((model_type, case), "").split("+")
    if "fused_bias" in kinds:
        # The reference's init gave a bias-free fused projection a random bias of its own (saved
        # nowhere); with it zeroed, the reference computes what the adapters compute here.
        unbiased = _evidence(model_type, case, "unbiased")
        assert any(_differs(expected[key], unbiased[key]) for key in got), "the reference's added bias had no effect"
        expected = unbiased
        kinds.remove("fused_bias")
    kind = next(filter(None, kinds), None)
    if kind is None:
        for key, value in got.items():
            assert_close(value, expected[key], ulps=CROSS_LIBRARY_ULPS, msg=f"{model_type}/{case}: {key}")
    elif kind == "padding":
        # Each row equals the reference's output for that row alone, without padding; the
        # reference's padded batch differs from it (the defect) in at least one row.
        trimmed = _evidence(model_type, case, "trimmed")
        defect_seen = False
        for row in TRIMMED_ROWS.get((model_type, case), range(batch["input_ids"].shape[0])):
            for key, value in got.items():
                alone = trimmed[f"row{row}.{key}"][0]
                length = alone.shape[0]
                assert_close(value[row, :length], alone, ulps=CROSS_LIBRARY_ULPS, msg=f"row {row} {key}")
                defect_seen |= _differs(expected[key][row, :length], alone)
        assert defect_seen, "the reference's padded output has no defect here: remove the DIFFERENCES entry"
    elif kind == "sdpa_prefix":
        eager = _evidence(model_type, case, "eager")
        for key, value in got.items():
            assert_close(value, eager[key], ulps=CROSS_LIBRARY_ULPS, msg=key)
        assert any(_differs(expected[key], eager[key]) for key in got), "SDPA and eager agree in the reference"
    elif kind == "t5_bias":
        nobias = _evidence(model_type, case, "nobias")
        assert any(_differs(value, expected[key]) for key, value in got.items())
        with torch.no_grad():
            for module in model.modules():
                if hasattr(module, "relative_attention_bias"):
                    module.relative_attention_bias.weight.zero_()
        for key, value in _outputs(model, batch).items():
            assert_close(value, nobias[key], ulps=CROSS_LIBRARY_ULPS, msg=key)
    elif kind == "average":
        for key, value in got.items():
            assert _differs(value, expected[key]), key
        block = model.active_adapters
        halved = [w / len(block.children) for w in block.weights]
        model.set_active_adapters(Average(*block.children, weights=halved, normalize_weights=False))
        for key, value in _outputs(model, batch).items():
            assert_close(value, expected[key], ulps=CROSS_LIBRARY_ULPS, msg=key)
    else:  # pragma: no cover - a typo in DIFFERENCES
        raise AssertionError(kind)


def test_every_documented_difference_has_a_fixture() -> None:
    # A row of DIFFERENCES without a case is a row the README table claims but no test shows.
    present = set(CASES)
    for model_type, case in DIFFERENCES:
        reference_could = case in MANIFEST[model_type]["skipped"]
        assert (model_type, case) in present or reference_could, (model_type, case)


def test_every_kind_of_difference_is_a_row_of_the_readme_table() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme.split("### Differences from the reference", 1)[1].split("\n## ", 1)[0]
    for kind in DIFFERENCE_TABLE["kinds"]:
        assert f"kind `{kind}`" in table, f"README's differences table has no row for {kind!r}"
