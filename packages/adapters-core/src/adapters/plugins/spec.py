"""Declarative description of where adapters attach in a model family.

A model plugin returns :class:`ModelSpec` objects: module paths, relative to the base model
or to one transformer layer, of the parts adapter methods hook into. The core attaches every
method from the outside (forward hooks on these modules), so a plugin contains no modeling code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

from torch import nn

LINEAR_ROLES = ("q", "k", "v", "attn_out", "ffn_in", "ffn_out")


@dataclasses.dataclass(frozen=True)
class InputOf:
    """The tensor entering a module: positional argument ``index``, else keyword ``keyword``."""

    path: str
    index: int = 0
    keyword: str | None = "hidden_states"


@dataclasses.dataclass(frozen=True)
class ResidualBlock:
    """One residual sub-block of a layer, ``out = LN(h + x)`` (post-LN) or ``out = x + h`` (pre-LN).

    Attributes:
        holder: module path (relative to the layer) that owns the ``adapters`` ModuleDict, so that
            weight keys match the reference format (e.g. ``attention.output``). Created as an empty
            container module when the model has no module there.
        residual: where ``x``, the residual stream entering the block, is read.
        sublayer: module whose output (or first output) is ``h``, the block's output before the
            residual addition (e.g. ``attention.output.dropout``).
        layer_norm: the post-LN module that normalizes ``h + x``; ``None`` for pre-LN blocks.
    """

    holder: str
    residual: InputOf
    sublayer: str
    layer_norm: str | None = None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Where adapters attach in the models of some ``model_type``\\ s.

    Example (BERT):
        >>> from adapters.plugins import InputOf, ModelSpec, ResidualBlock
        >>> spec = ModelSpec(
        ...     model_types=("bert",),
        ...     layers="encoder.layer",
        ...     attention_block=ResidualBlock(
        ...         holder="attention.output", residual=InputOf("attention.output", 1, "input_tensor"),
        ...         sublayer="attention.output.dropout", layer_norm="attention.output.LayerNorm"),
        ...     ffn_block=ResidualBlock(
        ...         holder="output", residual=InputOf("output", 1, "input_tensor"),
        ...         sublayer="output.dropout", layer_norm="output.LayerNorm"),
        ...     linears={"q": "attention.self.query", "k": "attention.self.key",
        ...              "v": "attention.self.value", "attn_out": "attention.output.dense",
        ...              "ffn_in": "intermediate.dense", "ffn_out": "output.dense"},
        ... )
        >>> spec.model_types
        ('bert',)
    """

    model_types: tuple[str, ...]
    layers: str
    attention_block: ResidualBlock | None = None
    ffn_block: ResidualBlock | None = None
    linears: Mapping[str, str] = dataclasses.field(default_factory=dict)
    embeddings: str | None = "embeddings"
    # For models whose layers are not one ModuleList (ALBERT's shared groups): yields
    # (layer index, layer module) from the base model.
    iter_layers: Callable[[nn.Module], Iterable[tuple[int, nn.Module]]] | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.linears) - set(LINEAR_ROLES))
        if unknown:
            raise ValueError(f"ModelSpec.linears has unknown roles {unknown}; valid: {LINEAR_ROLES}.")

    def layer_modules(self, base_model: nn.Module) -> list[tuple[int, nn.Module]]:
        if self.iter_layers is not None:
            return list(self.iter_layers(base_model))
        return list(enumerate(base_model.get_submodule(self.layers)))
