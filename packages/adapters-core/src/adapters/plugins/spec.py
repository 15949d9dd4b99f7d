"""Declarative description of where adapters attach in a model family.

A model plugin returns :class:`ModelSpec` objects: module paths, relative to the base model
or to one transformer layer, of the parts adapter methods hook into. The core attaches every
method from the outside (forward hooks on these modules), so a plugin contains no modeling code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from torch import nn

from ..errors import UnsupportedModelError

if TYPE_CHECKING:
    from .interface import AdapterModelInterface

LINEAR_ROLES = ("q", "k", "v", "attn_out", "ffn_in", "ffn_gate", "ffn_out", "cross_q", "cross_k", "cross_v")
# Roles of a decoder layer's cross-attention projections: LoRA's attn_matrices ("q", "v") adapt the
# self- and the cross-attention alike, as the reference library's "selfattn" LoRA does.
CROSS_ROLE_PREFIX = "cross_"


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

    The layer is an ``nn.Linear`` or transformers' ``Conv1D`` (GPT-2's ``c_attn``, weight stored
    ``(in, out)``). The output is read as ``len(roles)`` contiguous, equal slices in the order of
    ``roles``: slice ``j`` of ``out_features // len(roles)`` outputs belongs to ``roles[j]``. This is
    the layout the reference library uses for LoRA on fused projections (DeBERTa's ``in_proj``,
    GPT-2's ``c_attn``), whatever the model's own interleaving of heads is, so published adapters
    keep their meaning.
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
            module (:class:`InputOf`) or, rarely, the output of one (:class:`OutputOf`). A tuple of
            these is summed: in a parallel block (GPT-J: ``x + attn(ln(x)) + mlp(ln(x))``) the FFN's
            residual stream is the layer input plus the attention block's (adapted) output. An
            :class:`OutputOf` source sees the output as changed by another block's adapters.
        sublayer: module whose output (or first output) is ``h``, the block's output before the
            residual addition (e.g. ``attention.output.dropout``). An :class:`InputOf` reads ``h``
            from a module's input instead; this lets a spec swap the roles of ``h`` and ``x``
            where the reference library does (ALBERT's attention block). Post-LN blocks only.
            ``None`` (post-LN only): ``h`` is read off the LayerNorm's input as ``(h + x) - x``, for
            models that add ``h`` after a functional dropout with no module to hook (BART).
            In a pre-LN block the layer may call the same module for both blocks (ViT's one
            dropout, BEiT's drop_path): each block takes the first call after its ``x`` was read.
        layer_norm: the post-LN module that normalizes ``h + x``; ``None`` for pre-LN blocks. If
            the model also calls this module elsewhere in the layer, only the first call after
            ``h`` and ``x`` were captured is taken as the block's output; other calls run as usual.
    """

    holder: str
    residual: InputOf | OutputOf | tuple[InputOf | OutputOf, ...] | None
    sublayer: str | InputOf | None
    layer_norm: str | None = None
    # The bottleneck config flag that places adapters here, where it is not the block's own
    # (mh_adapter, output_adapter, cross_adapter): the reference library adapts a BERT decoder's
    # cross-attention output (a BertSelfOutput, like the self-attention's) under mh_adapter.
    config_flag: str | None = None
    # The reference library's "interface" placement (AdapterModelInterface): the adapters' output
    # replaces the sublayer's output as it is, and the model adds its residual and applies its own
    # norms afterwards. ``layer_norm`` is then a norm the adapter applies to ``h + x`` before itself
    # where its config says so (``original_ln_before``), never after; ``residual`` may be ``None``
    # (``x`` is zero: the adapter reads ``h`` alone).
    hooked: bool = False

    def __post_init__(self) -> None:
        if self.residual is None and not self.hooked:
            raise ValueError("ResidualBlock.residual may be None only for a hooked block (hooked=True).")
        if self.hooked and not isinstance(self.sublayer, str):
            raise ValueError("A hooked ResidualBlock needs the sublayer module whose output the adapters replace.")
        if isinstance(self.residual, tuple) and not self.residual:
            raise ValueError("ResidualBlock.residual needs at least one source.")
        if (self.sublayer is None or isinstance(self.sublayer, InputOf)) and self.layer_norm is None:
            raise ValueError(
                "ResidualBlock.sublayer may be an InputOf or None only for post-LN blocks (layer_norm set)."
            )


@dataclasses.dataclass(frozen=True)
class LayerStack:
    """One stack of transformer layers in a model with several (CLIP's text and vision towers).

    Layers are numbered across the stacks in the order the spec lists them (text ``0..n-1``, then
    vision ``n..``), as the reference library numbers them for ``leave_out``, per-layer reduction
    factors and ``get_adapter``; weight keys keep each layer's own module path.

    Attributes:
        path: module path of the layer list, relative to the base model.
        config: attribute of the model config holding this stack's own config (its hidden size),
            e.g. ``"text_config"``; ``None`` for the model config itself.
    """

    path: str
    config: str | None = None
    # Per-layer fields of the ModelSpec that differ in this stack's layers (an encoder-decoder's
    # decoder layers add a cross-attention block and number their sub-layers differently), e.g.
    # ``{"ffn_block": ResidualBlock(...), "cross_attention": SelfAttention(...)}``; see
    # ModelSpec.for_stack. Only the names in LAYER_FIELDS may be given.
    overrides: Mapping[str, object] = dataclasses.field(default_factory=dict)
    # The module that runs this stack, where a Parallel setup copies the stack's other inputs (a
    # decoder's own ids and masks); default: the parent of ``path`` (T5's ``decoder`` of
    # ``decoder.block``). A stack of a sub-model is entered through that sub-model (``decoder``).
    entry: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.overrides) - set(LAYER_FIELDS))
        if unknown:
            raise ValueError(
                f"LayerStack.overrides has fields {unknown} that are not per-layer; valid: {LAYER_FIELDS}."
            )

    def __hash__(self) -> int:
        return hash((self.path, self.config, tuple(sorted(self.overrides)), self.entry))

    @property
    def entry_path(self) -> str:
        """Path of the module that runs this stack (``entry``, else the parent of ``path``)."""
        return self.path.rpartition(".")[0] if self.entry is None else self.entry


# The ModelSpec fields that describe one layer, and may differ per LayerStack.
LAYER_FIELDS = (
    "attention_block",
    "ffn_block",
    "cross_attention_block",
    "linears",
    "fused_linears",
    "self_attention",
    "cross_attention",
)


@dataclasses.dataclass(frozen=True)
class ReferenceNames:
    """Module names of the reference library's weight keys, where transformers 5 renamed modules.

    The reference library runs on transformers 4.x and keys adapter weights by the module paths of
    the 4.x classes. Where transformers 5 renamed modules (ViT's ``encoder.layer.0.attention.
    attention.query`` is ``layers.0.attention.q_proj`` now), a spec maps its paths to the old
    names, so that files load in both directions. Paths match by whole dotted segments, longest
    first; paths not listed keep their names.

    Example (ViT):
        >>> names = ReferenceNames(paths={"layers": "encoder.layer"},
        ...                        layer_modules={"attention.q_proj": "attention.attention.query"})

    Attributes:
        paths: module paths relative to the base model (a layer stack as the spec names it, a
            model-level container) to the reference's.
        layer_modules: paths relative to a layer to the reference's; may also move an adapter
            holder to where the reference keeps it (``{"output_adapters": "output.output_adapters"}``).
        body_prefix: for models whose 4.x class wrapped the body in a submodule that 5.x dropped
            (``CLIPTextModel.text_model``): the reference keys the body's modules under this prefix
            (``"text_model."``), from the bare model and from models with a head alike, while
            ``outer_modules``, the containers the reference put on the outer class, keep no prefix.
        outer_modules: first path segments of those outer containers (shared Compacter tensors, the
            prefix-tuning pool).
    """

    paths: Mapping[str, str] = dataclasses.field(default_factory=dict)
    layer_modules: Mapping[str, str] = dataclasses.field(default_factory=dict)
    body_prefix: str = ""
    outer_modules: tuple[str, ...] = ("shared_parameters", "prefix_tuning")

    def __post_init__(self) -> None:
        for label, mapping in (("paths", self.paths), ("layer_modules", self.layer_modules)):
            if len(set(mapping.values())) != len(mapping):
                raise ValueError(f"ReferenceNames.{label} maps two paths to one name; renames must be one-to-one.")
        if self.body_prefix and not self.body_prefix.endswith("."):
            raise ValueError("ReferenceNames.body_prefix must end with '.'.")


def _rename_prefix(path: str, mapping: Mapping[str, str]) -> str:
    """Replace the longest key of ``mapping`` that is a whole-segment prefix of ``path``."""
    for old in sorted(mapping, key=len, reverse=True):
        if path == old or path.startswith(old + "."):
            return mapping[old] + path[len(old) :]
    return path


@dataclasses.dataclass(frozen=True)
class KVProjections:
    """The key/value projections of a self-attention module that does not call transformers' attention interface.

    Most transformers 5 attention modules hand query, key and value to
    ``ALL_ATTENTION_FUNCTIONS``, where the core adds prefix keys/values for every such model alike.
    Modules with their own attention code (DeBERTa's disentangled attention) declare instead where
    keys and values are computed: the core then splices the prefix positions into the outputs of
    these projections (sequence axis 1) and extends the module's attention mask. All paths are
    relative to the attention module ("" is the module itself).

    Attributes:
        key, value: the separate key and value projections (DeBERTa-v2's ``key_proj``, ``value_proj``).
        fused_qkv: one projection computing q, k and v, its output read per head as
            ``[q | k | v]`` (DeBERTa's ``in_proj``). Its prefix rows also yield query rows,
            which the core drops from the module's output again.
        attention_mask: where the module receives its attention mask, of shape
            ``(batch, 1, queries, keys)`` with nonzero meaning "may attend".
        position_bias: name of the module's method that computes the relative-position bias from
            the query and key layers (its first two arguments); prefix positions get no bias, so
            the core calls it with the model's own positions and pads its result with zeros.
        value_bias: name of a parameter the module adds to the value layer after the projection
            (DeBERTa's ``v_bias``); prefix values are taken as they are, without it.
    """

    attention_mask: InputOf
    key: str | None = None
    value: str | None = None
    fused_qkv: str | None = None
    position_bias: str | None = None
    value_bias: str | None = None

    def __post_init__(self) -> None:
        separate = self.key is not None and self.value is not None
        if separate == (self.fused_qkv is not None) or (not separate and (self.key or self.value)):
            raise ValueError("KVProjections needs either fused_qkv or both key and value.")


@dataclasses.dataclass(frozen=True)
class SelfAttention:
    """The self-attention module of a layer, where prefix tuning adds keys and values.

    Attributes:
        path: module path relative to a layer (``attention.self``).
        prefix_key: the reference library's name for this place in prefix-tuning weight keys
            (``prefix_tunings.NAME.<prefix_key>.…``): ``"self_prefix"``, or ``"self"`` for DistilBERT.
        hidden_states: where the module receives its input hidden states (read by prefix gates).
        projections: only for modules that do not call transformers' attention interface.
    """

    path: str
    prefix_key: str = "self_prefix"
    hidden_states: InputOf = InputOf("", 0, "hidden_states")
    projections: KVProjections | None = None


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
    # Path of the layer list (relative to the base model); or, for models with several stacks,
    # ``layer_stacks`` instead (exactly one of the two).
    layers: str = ""
    attention_block: ResidualBlock | None = None
    ffn_block: ResidualBlock | None = None
    # The cross-attention sub-block of an encoder-decoder's decoder layers (bottleneck adapters with
    # cross_adapter=True); usually given per stack (LayerStack.overrides), as encoder layers have none.
    cross_attention_block: ResidualBlock | None = None
    linears: Mapping[str, str] = dataclasses.field(default_factory=dict)
    embeddings: str | None = "embeddings"
    # Where prompt tuning inserts the prompt, when not at ``embeddings`` (whose output invertible
    # adapters transform): BART's encoder adds positions and builds its mask after the token embeddings.
    prompt_embeddings: str | None = None
    # For models whose layers are not one ModuleList (ALBERT's shared groups): yields
    # (layer index, layer module) from the base model.
    iter_layers: Callable[[nn.Module], Iterable[tuple[int, nn.Module]]] | None = None
    # Linear layers that serve several roles at once (paths relative to a layer); a role is
    # declared either in ``linears`` or in one fused linear, not both.
    fused_linears: tuple[FusedLinear, ...] = ()
    # Several layer stacks (CLIP's two towers), numbered across in this order; see LayerStack.
    layer_stacks: tuple[LayerStack, ...] = ()
    # Where the reference library's weight keys use the module names of transformers 4.x.
    reference_names: ReferenceNames | None = None
    # The self-attention module of each layer (prefix tuning); None if the plugin declares none.
    self_attention: SelfAttention | None = None
    # The cross-attention module of a decoder layer (prefix tuning's cross_prefix; prefix_key "cross_prefix").
    cross_attention: SelfAttention | None = None
    # Where the (batch, sequence) padding mask enters the module that first uses it after the
    # embeddings, relative to the base model ("" is the base model's own forward); prompt tuning
    # extends it for the prompt positions. The keyword is looked up in that forward's signature.
    # None for models that take no padding mask (ViT). A tuple names several places: an
    # encoder-decoder's decoder also reads the encoder's mask (its cross-attention keys get the prompt).
    padding_mask: InputOf | tuple[InputOf, ...] | None = InputOf("", 1, "attention_mask")
    # Methods (by AdapterMethod.name) the family cannot run correctly, with the reason add_adapter
    # gives in its AdapterConfigError (CLIP's text tower pools at a position prompt tokens shift).
    refused_methods: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Parallel copies the batch at the first adapted layer, so lower layers run once. A model
    # whose own code reads its inputs again after the layers (CLIP's text pooling indexes the
    # batch with input_ids) sets this: the inputs are then copied, and every layer runs per branch.
    parallel_copies_inputs: bool = False
    # Prompt tuning normally inserts the prompt into the embeddings module's output. A model whose
    # forward shapes its outputs by input_ids (GPT-2 reshapes its last hidden state to them) sets
    # this: placeholder tokens are inserted into input_ids (and positions into position_ids), and
    # their embeddings are replaced by the prompt (see methods/prompt_tuning/slots.py).
    prompt_token_slots: bool = False
    # Whether a model's LM head (get_output_embeddings) applies the inverse of the invertible adapter
    # that transformed ``embeddings``. False where those embeddings do not feed the sequence the LM
    # head reads (Whisper's audio encoder output: the reference library inverts nothing there).
    invert_at_lm_head: bool = True
    # Per-layer fields (as in LayerStack.overrides) for layers built with a cross-attention
    # (``config.add_cross_attention``: a BERT model as the decoder of an EncoderDecoderModel).
    cross_attention_overrides: Mapping[str, object] = dataclasses.field(default_factory=dict)
    # The spec for one model, where it depends on the checkpoint's config or on other plugins'
    # specs (T5 with a gated FFN; EncoderDecoderModel, whose stacks come from the specs of its
    # sub-models: see plugins.compose.SubModels). Called by :meth:`for_model` before adapters attach.
    specialize: Callable[[ModelSpec, nn.Module], ModelSpec] | None = None
    # The reference library's AdapterModelInterface this spec was made from (AdapterModelInterface.
    # to_spec): saved beside adapters as adapter_interface.json, as the reference does.
    interface: AdapterModelInterface | None = None

    def __post_init__(self) -> None:
        unknown_overrides = sorted(set(self.cross_attention_overrides) - set(LAYER_FIELDS))
        if unknown_overrides:
            raise ValueError(
                f"ModelSpec.cross_attention_overrides has fields {unknown_overrides} that are not per-layer."
            )
        # A template completed per model (specialize) may leave its layers to that step.
        layout_given = bool(self.layers) or bool(self.layer_stacks) or self.iter_layers is not None
        if bool(self.layers) == bool(self.layer_stacks) and self.iter_layers is None and layout_given:
            raise ValueError("ModelSpec needs exactly one of layers (one stack) and layer_stacks (several).")
        if not layout_given and self.specialize is None:
            raise ValueError("ModelSpec needs exactly one of layers (one stack) and layer_stacks (several).")
        fused_roles = [role for fused in self.fused_linears for role in fused.roles]
        unknown = sorted((set(self.linears) | set(fused_roles)) - set(LINEAR_ROLES))
        if unknown:
            raise ValueError(f"ModelSpec.linears has unknown roles {unknown}; valid: {LINEAR_ROLES}.")
        twice = sorted({r for r in fused_roles if fused_roles.count(r) > 1 or r in self.linears})
        if twice:
            raise ValueError(f"ModelSpec roles {twice} are declared more than once (linears / fused_linears).")

    def for_model(self, base_model: nn.Module) -> ModelSpec:
        """The spec as it applies to ``base_model``: ``specialize``, then ``cross_attention_overrides``.

        Example:
            >>> spec.for_model(model.base_model).model_types  # doctest: +SKIP
            ('t5',)
        """
        spec = self.specialize(self, base_model) if self.specialize is not None else self
        config = getattr(base_model, "config", None)
        if spec.cross_attention_overrides and getattr(config, "add_cross_attention", False):
            spec = dataclasses.replace(spec, **spec.cross_attention_overrides, cross_attention_overrides={})
        return spec

    def for_stack(self, stack: LayerStack) -> ModelSpec:
        """The spec as it applies to the layers of ``stack`` (its ``overrides`` replace the per-layer fields)."""
        if not stack.overrides:
            return self
        return dataclasses.replace(self, **stack.overrides)

    @property
    def padding_masks(self) -> tuple[InputOf, ...]:
        """Every place a padding mask enters (``padding_mask`` as a tuple)."""
        where = self.padding_mask
        return () if where is None else where if isinstance(where, tuple) else (where,)

    def fused_linear_for(self, role: str) -> FusedLinear | None:
        """The fused linear that computes ``role``, if the role is a slice of one."""
        return next((fused for fused in self.fused_linears if role in fused.roles), None)

    @property
    def stacks(self) -> tuple[LayerStack, ...]:
        """The layer stacks, one for a spec that names ``layers``."""
        return self.layer_stacks or (LayerStack(self.layers),)

    def layer_modules(self, base_model: nn.Module) -> list[tuple[int, nn.Module]]:
        return [(index, layer) for index, layer, _ in self.layer_entries(base_model)]

    def layer_entries(self, base_model: nn.Module) -> list[tuple[int, nn.Module, LayerStack]]:
        """(layer index, layer module, its stack) for every layer, numbered across the stacks."""
        if self.iter_layers is not None:
            return [(index, layer, self.stacks[0]) for index, layer in self.iter_layers(base_model)]
        entries: list[tuple[int, nn.Module, LayerStack]] = []
        for stack in self.stacks:
            try:
                layers = base_model.get_submodule(stack.path)
            except AttributeError as error:
                # A class of a supported model type built otherwise (CLIPForImageClassification).
                raise UnsupportedModelError(
                    f"{type(base_model).__name__} has no layers at {stack.path!r}, where the adapters plugin for "
                    f"model types {list(self.model_types)} expects them ({error}); this model class is not supported."
                ) from error
            for layer in layers:
                entries.append((len(entries), layer, stack))
        return entries

    # -- weight-key names of the reference library ----------------------------------------
    def reference_path(self, path: str) -> str:
        """Our module path (relative to the base model) as the reference library names it."""
        names = self.reference_names
        return path if names is None else self._translate(path, names.paths, names.layer_modules)

    def path_from_reference(self, path: str) -> str:
        """Inverse of :meth:`reference_path`."""
        names = self.reference_names
        if names is None:
            return path
        paths = {new: old for old, new in names.paths.items()}
        modules = {new: old for old, new in names.layer_modules.items()}
        return self._translate(path, paths, modules)

    def _translate(self, path: str, paths: Mapping[str, str], modules: Mapping[str, str]) -> str:
        # A layer's module path is "<stack>.<index>.<inner>": rename the stack and the inner part.
        for stack in sorted({*paths, *(s.path for s in self.stacks)}, key=len, reverse=True):
            if not path.startswith(stack + "."):
                continue
            index, _, inner = path[len(stack) + 1 :].partition(".")
            if index.isdigit():
                inner = _rename_prefix(inner, modules) if inner else inner
                return ".".join(part for part in (paths.get(stack, stack), index, inner) if part)
        return _rename_prefix(path, paths)
