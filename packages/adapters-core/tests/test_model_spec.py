"""ModelSpec mechanics that need no real model: layer stacks and the reference's weight-key names."""

from __future__ import annotations

import pytest
from torch import nn

from adapters.plugins import LayerStack, ModelSpec, ReferenceNames

VIT_LIKE = ModelSpec(
    model_types=("toy",),
    layers="layers",
    reference_names=ReferenceNames(
        paths={"layers": "encoder.layer", "invertible_adapters": "text_model.invertible_adapters"},
        layer_modules={
            "attention.q_proj": "attention.attention.query",
            "mlp.fc1": "intermediate.dense",
            "output_adapters": "output.output_adapters",
        },
    ),
)


@pytest.mark.parametrize(
    "ours,reference",
    [
        ("layers.0.attention.q_proj.loras.a", "encoder.layer.0.attention.attention.query.loras.a"),
        ("layers.11.mlp.fc1.loras.a", "encoder.layer.11.intermediate.dense.loras.a"),
        ("layers.1.output_adapters.adapters.a", "encoder.layer.1.output.output_adapters.adapters.a"),
        # Whole segments only: fc10 is not fc1, and the adapter's own name is never renamed.
        ("layers.0.mlp.fc10.loras.a", "encoder.layer.0.mlp.fc10.loras.a"),
        (
            "layers.0.attention_adapters.adapters.output_adapters",
            "encoder.layer.0.attention_adapters.adapters.output_adapters",
        ),
        # Paths outside the layers keep their names unless listed.
        ("shared_parameters.a", "shared_parameters.a"),
        ("invertible_adapters.a", "text_model.invertible_adapters.a"),
    ],
)
def test_reference_names_map_paths_both_ways(ours: str, reference: str) -> None:
    assert VIT_LIKE.reference_path(ours) == reference
    assert VIT_LIKE.path_from_reference(reference) == ours


def test_without_reference_names_paths_are_the_keys() -> None:
    spec = ModelSpec(model_types=("toy",), layers="encoder.layer")
    assert spec.reference_path("encoder.layer.0.output.adapters.a") == "encoder.layer.0.output.adapters.a"
    assert spec.path_from_reference("encoder.layer.0.output.adapters.a") == "encoder.layer.0.output.adapters.a"


def test_reference_names_must_be_one_to_one() -> None:
    with pytest.raises(ValueError, match="one-to-one"):
        ReferenceNames(layer_modules={"mlp.fc1": "dense", "mlp.fc2": "dense"})
    with pytest.raises(ValueError, match="end with"):
        ReferenceNames(body_prefix="text_model")


def test_spec_needs_one_kind_of_layer_list() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ModelSpec(model_types=("toy",))
    with pytest.raises(ValueError, match="exactly one"):
        ModelSpec(model_types=("toy",), layers="layers", layer_stacks=(LayerStack("other"),))


def test_layer_stacks_are_numbered_across_in_order() -> None:
    class Tower(nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(n))

    class Dual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision, self.text = Tower(3), Tower(2)

    model = Dual()
    spec = ModelSpec(
        model_types=("toy",),
        layer_stacks=(LayerStack("text.layers", config="text_config"), LayerStack("vision.layers", "vision_config")),
    )
    entries = spec.layer_entries(model)
    assert [index for index, _, _ in entries] == [0, 1, 2, 3, 4]
    assert [layer for _, layer, _ in entries] == [*model.text.layers, *model.vision.layers]
    assert [stack.config for _, _, stack in entries] == ["text_config"] * 2 + ["vision_config"] * 3
    assert spec.layer_modules(model) == [(index, layer) for index, layer, _ in entries]
