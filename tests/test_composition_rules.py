"""Composition blocks as data: parsing, (de)serialization and the rules checked at activation."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert

import adapters
from adapters import CompositionError
from adapters.composition import (
    ALLOWED_NESTINGS,
    Average,
    BatchSplit,
    Fuse,
    Parallel,
    Split,
    Stack,
    check_method_support,
    parse_composition,
    validate_nesting,
)

SETUPS = [
    Stack("a", "b"),
    Stack("lang", Fuse("t1", "t2", name="fusion")),
    Split("a", "b", splits=[3, 4]),
    BatchSplit("a", Stack("b", "c"), batch_sizes=[1, 2]),
    Parallel("a", Stack("b", "c")),
    Average("a", "b", weights=[1, 3]),
    Stack("lang", Split("a", BatchSplit("b", "c", batch_sizes=1), splits=2)),
]


@pytest.mark.parametrize("setup", SETUPS, ids=repr)
def test_to_dict_round_trips(setup):
    assert type(setup).from_dict(setup.to_dict()) == setup
    validate_nesting(setup)


def test_dict_form_is_the_reference_libraries():
    assert Split("a", "b", splits=[64, 64]).to_dict() == {
        "type": "Split",
        "children": [{"type": "single", "children": ["a"]}, {"type": "single", "children": ["b"]}],
        "kwargs": {"splits": [64, 64]},
    }
    assert Stack.from_dict({"type": "Stack", "children": ["a", "b"]}) == Stack("a", "b")
    with pytest.raises(CompositionError, match="Unknown composition block 'Mix'"):
        Stack.from_dict({"type": "Mix", "children": ["a"]})


def test_names_and_lists_parse_as_in_the_reference():
    assert parse_composition("a") == Stack("a")
    assert parse_composition(["a", "b"]) == Stack("a", "b")
    # The v1 list syntax: a list inside a Stack is a Fuse.
    assert parse_composition(["lang", ["t1", "t2"]]) == Stack("lang", Fuse("t1", "t2"))
    assert parse_composition(None) is None and parse_composition([]) is None
    with pytest.raises(CompositionError, match="Cannot use 3"):
        parse_composition(3)


def test_block_options_are_checked():
    assert Average("a", "b", weights=[1, 3]).weights == [0.25, 0.75]
    assert Average("a", "b", weights=[1, 3], normalize_weights=False).weights == [1.0, 3.0]
    assert Average("a", "b").weights == [0.5, 0.5]
    assert Split("a", "b", splits=5).splits == [5, 5]
    with pytest.raises(CompositionError, match="one weight per child"):
        Average("a", "b", weights=[1])
    with pytest.raises(CompositionError, match="sum to 0"):
        Average("a", "b", weights=[1, -1])
    with pytest.raises(CompositionError, match="batch_sizes as one non-negative int per child"):
        BatchSplit("a", "b", batch_sizes=[1, 2, 3])
    with pytest.raises(CompositionError, match="at least one adapter"):
        Stack()
    assert Fuse("a", Stack("b", "c")).name == "a,c"


def _all_pairs():
    blocks = {
        Stack: lambda *c: Stack(*c),
        Fuse: lambda *c: Fuse(*c),
        Split: lambda *c: Split(*c, splits=1),
        BatchSplit: lambda *c: BatchSplit(*c, batch_sizes=1),
        Parallel: lambda *c: Parallel(*c),
        Average: lambda *c: Average(*c),
    }
    for parent, make_parent in blocks.items():
        for child, make_child in blocks.items():
            yield pytest.param(parent, child, make_parent, make_child, id=f"{parent.__name__}-{child.__name__}")


@pytest.mark.parametrize("parent,child,make_parent,make_child", list(_all_pairs()))
def test_nesting_follows_the_reference_table(parent, child, make_parent, make_child):
    setup = make_parent("x", make_child("y", "z"))
    if child in ALLOWED_NESTINGS[parent] and not (parent is Parallel and child is Parallel):
        validate_nesting(setup)
    else:
        with pytest.raises(CompositionError, match=f"{parent.__name__} cannot contain {child.__name__}"):
            validate_nesting(setup)


def test_one_parallel_per_setup():
    with pytest.raises(CompositionError, match="more than one Parallel"):
        validate_nesting(Stack(Parallel("a", "b"), Parallel("c", "d")))


def test_method_support_names_the_block_and_the_method():
    def supported(name):
        return [("lora", frozenset({Stack, BatchSplit}))]

    check_method_support(Stack("a", BatchSplit("b", "c", batch_sizes=1)), supported)
    with pytest.raises(CompositionError, match=r"Adapter 'b' \(lora\) cannot be used inside Fuse\['b', 'c'\]"):
        check_method_support(Stack("a", Fuse("b", "c")), supported)


def test_an_invalid_setup_is_refused_before_anything_changes(inputs):
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", "lora", set_active=True)
    model.add_adapter("b", "lora")
    with torch.no_grad():
        model.encoder.layer[0].attention.self.query.loras["a"].lora_B.normal_()
    before = model(**inputs).last_hidden_state
    with pytest.raises(CompositionError, match="cannot be used inside Fuse"):
        model.set_active_adapters(Fuse("a", "b"))
    with pytest.raises(CompositionError, match="Fuse cannot contain Parallel"):
        model.set_active_adapters(Fuse("a", Parallel("a", "b")))
    with pytest.raises(adapters.AdapterNameError, match="No adapter named 'c'"):
        model.set_active_adapters(Stack("a", "c"))
    assert model.active_adapters == Stack("a")
    assert torch.equal(model(**inputs).last_hidden_state, before)
