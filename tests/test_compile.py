"""``torch.compile`` with adapters active: one graph (``fullgraph=True``, no graph break) for every method and
composition block, and the compiled model's outputs equal eager's.

Dynamo traces the adapters' hooks like the model's own code: under compilation the hooks read the
model-wide setup (``set_active_adapters``) directly, without the per-pass bookkeeping that keeps
concurrent threads apart (a context variable and a lock, which dynamo cannot trace). Switching to
another adapter of the same config reuses the graph (dynamo lifts the parameters it reads as
inputs); another config or composition recompiles (dynamo guards on what the hooks read). Prompt
tuning compiles to two
graphs, each whole: the model's pre-hook that inserts the prompt's positions into the inputs (dynamo
compiles a top-level module's hooks apart from its forward), then the model. The backend counts
the graphs and runs each op by op: the check is the tracing, not a code generator.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo
from conftest import tiny_bert
from torch._dynamo.testing import CompileCounter
from transformers import BertModel

import adapters
from adapters.composition import Average, BatchSplit, Fuse, Parallel, Split, Stack
from adapters.testing import assert_close, randomize_adapter

METHODS = (
    "lora",
    "dora",
    "ia3",
    "vera",
    "seq_bn",
    "double_seq_bn",
    "par_bn",
    "compacter[reduction_factor=4]",
    "seq_bn_inv",
    "prefix_tuning",
    "prompt_tuning",
    "loreft",
)


def bert() -> BertModel:
    """conftest's tiny BERT, ready for adapters."""
    model = tiny_bert()
    adapters.init(model)
    return model


def inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 100, (4, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[-1, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def check_one_graph_and_eager_outputs(model: torch.nn.Module, graphs: int = 1) -> None:
    with torch.no_grad():
        eager = model(**inputs()).last_hidden_state
        dynamo.reset()
        counter = CompileCounter()
        compiled = torch.compile(model, backend=counter, fullgraph=True)  # a graph break raises
        assert_close(compiled(**inputs()).last_hidden_state, eager, msg="compiled output against eager")
        assert_close(compiled(**inputs()).last_hidden_state, eager, msg="second compiled call against eager")
    assert counter.frame_count == graphs, f"{counter.frame_count} graphs (compiled twice?)"


@pytest.mark.parametrize("method", METHODS)
def test_each_method_compiles_to_one_graph_with_eager_outputs(method: str) -> None:
    model = bert()
    model.add_adapter("a", config=method)
    randomize_adapter(model, "a")
    model.set_active_adapters("a")
    check_one_graph_and_eager_outputs(model, graphs=2 if method == "prompt_tuning" else 1)


BLOCKS = {
    "Stack": ("seq_bn", lambda: Stack("a", "b")),
    "Stack-lora": ("lora", lambda: Stack("a", "b")),
    "Parallel": ("seq_bn", lambda: Parallel("a", "b")),
    "BatchSplit": ("lora", lambda: BatchSplit("a", "b", batch_sizes=[1, 3])),
    "Average": ("seq_bn", lambda: Average("a", "b", weights=[0.3, 0.7])),
    "Split": ("seq_bn", lambda: Split("a", "b", splits=[3, 4])),
    "Fuse": ("seq_bn", lambda: Fuse("a", "b")),
}


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_each_composition_block_compiles_to_one_graph_with_eager_outputs(block: str) -> None:
    config, make = BLOCKS[block]
    model = bert()
    for seed, name in enumerate(("a", "b")):
        model.add_adapter(name, config=config)
        randomize_adapter(model, name, seed=seed)
    if block == "Fuse":
        model.add_adapter_fusion(Fuse("a", "b"))
    model.set_active_adapters(make())
    check_one_graph_and_eager_outputs(model)


@pytest.mark.parametrize("config", ["lora", "ia3", "seq_bn", "par_bn", "prefix_tuning"])
def test_switching_among_adapters_of_one_config_does_not_recompile(config) -> None:
    """A server's pattern: several adapters loaded, set_active_adapters picks one per request.

    Dynamo lifts the parameters the graph reads as its inputs: switching to an adapter of the same
    config and shapes reuses the graph with the other adapter's tensors.
    """
    model = bert()
    names = ("a", "b", "c")
    for seed, name in enumerate(names):
        model.add_adapter(name, config=config)
        randomize_adapter(model, name, seed=seed)
    expected = {}
    with torch.no_grad():
        for name in names:
            model.set_active_adapters(name)
            expected[name] = model(**inputs()).last_hidden_state
        dynamo.reset()
        counter = CompileCounter()
        compiled = torch.compile(model, backend=counter, fullgraph=True)
        for name in ("a", "b", "c", "a", "b"):
            model.set_active_adapters(name)
            assert_close(compiled(**inputs()).last_hidden_state, expected[name], msg=f"compiled with {name} active")
    assert counter.frame_count == 1, f"{counter.frame_count} compilations for 4 switches"


def test_changing_the_setup_to_another_config_follows_it() -> None:
    """Another rank, method or composition (or none) changes the graph: dynamo recompiles and the outputs follow."""
    model = bert()
    for seed, (name, config) in enumerate((("a", "lora"), ("b", "lora"), ("wide", "lora[r=16]"), ("bn", "seq_bn"))):
        model.add_adapter(name, config=config)
        randomize_adapter(model, name, seed=seed)
    setups = ("a", "wide", "bn", None, Stack("a", "bn"), "b")
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    expected = []
    with torch.no_grad():
        for setup in setups:
            model.set_active_adapters(setup)
            expected.append(model(**inputs()).last_hidden_state)
        for setup, wanted in [*zip(setups, expected, strict=True), (setups[0], expected[0])]:
            model.set_active_adapters(setup)
            assert_close(compiled(**inputs()).last_hidden_state, wanted, msg=f"compiled with {setup} active")
