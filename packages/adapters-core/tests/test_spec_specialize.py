"""Per-model views of a ModelSpec: ``specialize``, ``cross_attention_overrides``, ``LayerStack.entry``."""

from __future__ import annotations

import types

import pytest

from adapters.plugins import LayerStack, ModelSpec, SelfAttention

CROSS = {"cross_attention": SelfAttention("crossattention", prefix_key="cross_prefix")}


def _model(**config: object) -> types.SimpleNamespace:
    return types.SimpleNamespace(config=types.SimpleNamespace(**config))


def test_a_spec_without_layers_needs_specialize() -> None:
    with pytest.raises(ValueError, match="exactly one of layers"):
        ModelSpec(model_types=("x",))
    template = ModelSpec(model_types=("x",), specialize=lambda spec, model: ModelSpec(("x",), layers="h"))
    assert template.for_model(_model()).layers == "h"


def test_cross_attention_overrides_apply_to_layers_built_with_cross_attention() -> None:
    spec = ModelSpec(model_types=("x",), layers="h", cross_attention_overrides=CROSS)
    assert spec.for_model(_model(add_cross_attention=False)) is spec
    decoder = spec.for_model(_model(add_cross_attention=True))
    assert decoder.cross_attention == CROSS["cross_attention"] and not decoder.cross_attention_overrides


def test_cross_attention_overrides_take_per_layer_fields_only() -> None:
    with pytest.raises(ValueError, match="not per-layer"):
        ModelSpec(model_types=("x",), layers="h", cross_attention_overrides={"embeddings": "wte"})


def test_layer_stack_entry_defaults_to_the_parent_of_its_path() -> None:
    assert LayerStack("decoder.block").entry_path == "decoder"
    assert LayerStack("decoder.bert.encoder.layer", entry="decoder").entry_path == "decoder"
