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
class OutputOf:
    """The tensor leaving a module (its output, or the first element of a tuple output)."""

    path: str


@dataclasses.dataclass(frozen=True)
class FusedLinear:
    """One linear layer computing several roles at once (e.g. a fused q/k/v projection).

    The output is read as ``len(roles)`` contiguous, equal slices in the order of ``roles``: slice
    ``j`` of ``out_features // len(roles)`` rows belongs to ``roles[j]``. This is the layout the
    reference library uses for LoRA on fused projections (DeBERTa's ``in_proj``), whatever the
    model's own interleaving of heads is, so published adapters keep their meaning.
    """

    path: str
    roles: tuple[str, ...] = ("q", "k", "v")


@dataclasses.dataclass(frozen=True)
class ResidualBlock:
    """One residual sub-block of a layer, ``out = LN(h + x)`` (post-LN) or ``out = x + h`` (pre-LN).

    Attributes:
        holder: module path (relative to the layer) that owns the ``adapters`` ModuleDict, so that
            weight keys match the reference format (e.g. ``attention.output``). Created as an empty
            container module when the model has no module there.
        residual: where ``x``, the residual stream entering the block, is read: the input of a
            module (:class:`InputOf`) or, rarely, the output of one (:class:`OutputOf`).
        sublayer: module whose output (or first output) is ``h``, the block's output before the
            residual addition (e.g. ``attention.output.dropout``). An :class:`InputOf` reads ``h``
            from a module's input instead; this lets a spec swap the roles of ``h`` and ``x``
            where the reference library does (ALBERT's attention block). Post-LN blocks only.
        layer_norm: the post-LN module that normalizes ``h + x``; ``None`` for pre-LN blocks. If
            the model also calls this module elsewhere in the layer, only the first call after
            ``h`` and ``x`` were captured is taken as the block's output; other calls run as usual.
    """

    holder: str
    residual: InputOf | OutputOf
    sublayer: str | InputOf
    layer_norm: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.sublayer, InputOf) and self.layer_norm is None:
            raise ValueError("ResidualBlock.sublayer may be an InputOf only for post-LN blocks (layer_norm set).")


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
    # Linear layers that serve several roles at once (paths relative to a layer); a role is
    # declared either in ``linears`` or in one fused linear, not both.
    fused_linears: tuple[FusedLinear, ...] = ()

    def __post_init__(self) -> None:
        fused_roles = [role for fused in self.fused_linears for role in fused.roles]
        unknown = sorted((set(self.linears) | set(fused_roles)) - set(LINEAR_ROLES))
        if unknown:
            raise ValueError(f"ModelSpec.linears has unknown roles {unknown}; valid: {LINEAR_ROLES}.")
        twice = sorted({r for r in fused_roles if fused_roles.count(r) > 1 or r in self.linears})
        if twice:
            raise ValueError(f"ModelSpec roles {twice} are declared more than once (linears / fused_linears).")

    def fused_linear_for(self, role: str) -> FusedLinear | None:
        """The fused linear that computes ``role``, if the role is a slice of one."""
        return next((fused for fused in self.fused_linears if role in fused.roles), None)

    def layer_modules(self, base_model: nn.Module) -> list[tuple[int, nn.Module]]:
        if self.iter_layers is not None:
            return list(self.iter_layers(base_model))
        return list(enumerate(base_model.get_submodule(self.layers)))
