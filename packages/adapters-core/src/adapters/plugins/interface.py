"""The reference library's ``AdapterModelInterface``: a model's layout in a dozen module names.

A user adapts a model type that no plugin supports by naming its embeddings, its layer list and,
relative to one layer, the attention module and its projections, the feed-forward projections and
the norms around them. :meth:`AdapterModelInterface.to_spec` turns those names into the
:class:`~adapters.plugins.ModelSpec` the core works with, placing every method where the
reference library places it in its "interface" mode, so that adapters trained there load here
with the same outputs:

- bottleneck adapters replace the output of the attention's output projection (``attn_o_proj``)
  and of the feed-forward output projection (``layer_output_proj``); the model then adds its
  residual and applies its own norms. The adapter's residual input is the input of
  ``layer_pre_self_attn`` / ``layer_pre_ffn`` (none where those are not given), and its
  ``original_ln_before`` normalisation is ``layer_ln_1`` / ``layer_ln_2`` where given
  (:attr:`~adapters.plugins.ResidualBlock.hooked`);
- LoRA (and IA3, DoRA, VeRA) sits on ``attn_q_proj``/``attn_k_proj``/``attn_v_proj`` or on the
  slices of ``attn_qkv_proj``, and on ``layer_intermediate_proj``/``layer_output_proj``;
- ReFT acts on each layer's output, invertible adapters and prompt tuning on
  ``model_embeddings``' output.

The interface is saved beside adapters as ``adapter_interface.json`` in the reference's format.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ..errors import AdapterLoadError, UnsupportedModelError
from ..files.format import FORMAT_VERSION, FORMAT_VERSION_PREFIX, INTERFACE_CONFIG
from .spec import FusedLinear, InputOf, ModelSpec, ResidualBlock

# The reference's method categories (its AdapterMethod names) that an interface may list.
INTERFACE_METHODS = ("bottleneck", "lora", "reft", "prompt_tuning", "invertible", "prefix_tuning")
# Where this library can place each category through an interface (prefix tuning needs to know how
# the attention computes its keys and values, which an interface does not say).
_PLACEABLE = ("bottleneck", "lora", "reft", "prompt_tuning", "invertible")


@dataclasses.dataclass
class AdapterModelInterface:
    """Module names that say where adapters attach in a model no plugin supports (the reference's fields).

    Paths are dotted attribute paths: ``model_embeddings`` and ``model_layers`` relative to the base
    model (``model.base_model``, or the submodule named ``base_model``), the ``layer_*`` names
    relative to one layer, the ``attn_*`` names relative to ``layer_self_attn``. Give either
    ``attn_q_proj``, ``attn_k_proj`` and ``attn_v_proj``, or one fused ``attn_qkv_proj`` (its
    output read as three equal slices q, k, v).

    Example (the interface the reference library publishes for Qwen2):
        >>> import adapters
        >>> from adapters import AdapterModelInterface
        >>> interface = AdapterModelInterface(
        ...     adapter_methods=["bottleneck", "lora", "reft", "invertible"],
        ...     model_embeddings="embed_tokens", model_layers="layers",
        ...     layer_self_attn="self_attn", layer_cross_attn=None,
        ...     attn_k_proj="k_proj", attn_q_proj="q_proj", attn_v_proj="v_proj", attn_o_proj="o_proj",
        ...     layer_intermediate_proj="mlp.up_proj", layer_output_proj="mlp.down_proj",
        ...     layer_pre_self_attn="input_layernorm", layer_pre_ffn="post_attention_layernorm")
        >>> adapters.init(model, interface=interface)  # doctest: +SKIP

    Attributes:
        adapter_methods: the methods the model takes, of "bottleneck", "lora", "reft",
            "prompt_tuning", "invertible"; adding any other is refused with the reason.
        layer_pre_self_attn, layer_pre_ffn: modules whose input is the residual that bottleneck
            adapters read (``original_ln_before``); ``None``: no residual is added there.
        layer_ln_1, layer_ln_2: the norms bottleneck adapters apply to ``h + residual`` before
            themselves where their config says so (``original_ln_before``).
        base_model: attribute of the model holding the layers, where it is not ``model.base_model``.
    """

    adapter_methods: list[str]
    model_embeddings: str
    model_layers: str
    layer_self_attn: str
    layer_cross_attn: str | None
    attn_o_proj: str | None
    layer_intermediate_proj: str
    layer_output_proj: str
    attn_k_proj: str | None = None
    attn_q_proj: str | None = None
    attn_v_proj: str | None = None
    attn_qkv_proj: str | None = None
    layer_pre_self_attn: str | None = None
    layer_pre_cross_attn: str | None = None
    layer_pre_ffn: str | None = None
    layer_ln_1: str | None = None
    layer_ln_2: str | None = None
    base_model: str | None = None

    def __post_init__(self) -> None:
        separate = [self.attn_q_proj, self.attn_k_proj, self.attn_v_proj]
        if self.attn_qkv_proj is None and None in separate:
            raise ValueError(
                "AdapterModelInterface needs the attention's projections: either attn_q_proj, attn_k_proj and "
                "attn_v_proj, or attn_qkv_proj for one fused projection."
            )
        if self.attn_qkv_proj is not None and any(p is not None for p in separate):
            raise ValueError(
                "AdapterModelInterface takes either attn_q_proj/attn_k_proj/attn_v_proj or attn_qkv_proj, not both; "
                "keep attn_qkv_proj only if the model computes q, k and v in one layer."
            )
        unknown = sorted(set(self.adapter_methods) - set(INTERFACE_METHODS))
        if unknown:
            raise ValueError(
                f"AdapterModelInterface.adapter_methods has unknown methods {unknown}; choose from "
                f"{list(INTERFACE_METHODS[:-1])}."
            )

    # -- the reference's file ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, directory: str | os.PathLike, model_type: str) -> None:
        """Write ``adapter_interface.json`` into ``directory`` (the reference's layout)."""
        version = FORMAT_VERSION_PREFIX + FORMAT_VERSION
        data = {"interface": self.to_dict(), "model_type": model_type, "version": version}
        (Path(directory) / INTERFACE_CONFIG).write_text(json.dumps(data, indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> AdapterModelInterface:
        """The interface saved in ``directory``'s ``adapter_interface.json``.

        Example:
            >>> interface = AdapterModelInterface.load("out/task")  # doctest: +SKIP
            >>> adapters.init(model, interface=interface)  # doctest: +SKIP
        """
        path = Path(directory) / INTERFACE_CONFIG
        try:
            data = json.loads(path.read_text())
            fields = data["interface"]
            if not isinstance(fields, dict):
                raise TypeError("'interface' is not an object")
            return cls(**fields)
        except FileNotFoundError as error:
            raise AdapterLoadError(f"{directory} has no {INTERFACE_CONFIG}.") from error
        except (ValueError, KeyError, TypeError) as error:
            raise AdapterLoadError(
                f"{path} is not an AdapterModelInterface file ({type(error).__name__}: {error}); it should hold "
                "{'interface': {...the interface's fields...}, 'model_type': ..., 'version': ...}."
            ) from error

    # -- the spec -------------------------------------------------------------------------------
    def to_spec(self, model_type: str) -> ModelSpec:
        """The :class:`~adapters.plugins.ModelSpec` that places every method as the reference's interface mode does.

        Raises:
            UnsupportedModelError: for what the reference's interface mode cannot place either
                (a cross-attention, ``prefix_tuning``), with what to use instead.
        """
        if self.layer_cross_attn is not None:
            raise UnsupportedModelError(
                "AdapterModelInterface.layer_cross_attn is not supported: the reference library's interface mode "
                "puts cross-attention adapters where the self-attention's are (they replace each other). "
                "Describe an encoder-decoder with adapters.init(model, spec=ModelSpec(..., "
                "cross_attention_block=ResidualBlock(...))) instead."
            )
        attention = self.layer_self_attn

        def in_attention(path: str | None) -> str | None:
            return None if path is None else f"{attention}.{path}"

        def hooked(holder: str, sublayer: str | None, pre: str | None, norm: str | None) -> ResidualBlock | None:
            if sublayer is None:
                return None
            residual = None if pre is None else InputOf(pre)
            return ResidualBlock(holder=holder, residual=residual, sublayer=sublayer, layer_norm=norm, hooked=True)

        linears = {"ffn_in": self.layer_intermediate_proj, "ffn_out": self.layer_output_proj}
        fused: tuple[FusedLinear, ...] = ()
        if self.attn_qkv_proj is not None:
            fused = (FusedLinear(in_attention(self.attn_qkv_proj)),)
        else:
            linears.update(
                q=in_attention(self.attn_q_proj), k=in_attention(self.attn_k_proj), v=in_attention(self.attn_v_proj)
            )
        refused = {
            method: (
                "the model's AdapterModelInterface does not list it in adapter_methods"
                if method in _PLACEABLE
                else "an AdapterModelInterface does not say how the attention computes keys and values (the "
                "reference library's interface mode has no prefix tuning either); use adapters.init(model, "
                "spec=ModelSpec(..., self_attention=SelfAttention(...)))"
            )
            for method in INTERFACE_METHODS
            if method not in self.adapter_methods or method not in _PLACEABLE
        }
        return ModelSpec(
            model_types=(model_type,),
            layers=self.model_layers,
            embeddings=self.model_embeddings,
            attention_block=hooked(
                "attention_adapters", in_attention(self.attn_o_proj), self.layer_pre_self_attn, self.layer_ln_1
            ),
            ffn_block=hooked("output_adapters", self.layer_output_proj, self.layer_pre_ffn, self.layer_ln_2),
            linears=linears,
            fused_linears=fused,
            refused_methods=refused,
            interface=self,
        )
