"""Where adapters attach in the encoder-decoder architectures of transformers 5.x.

Every model here has two layer stacks, numbered across as the reference library numbers them
(encoder layers ``0..n-1``, then decoder layers ``n..``) for ``leave_out`` and per-layer options.
Decoder layers have a third residual sub-block, the cross-attention, so the decoder stack
overrides the per-layer parts of the spec (``LayerStack.overrides``):

* bottleneck adapters: self-attention (``mh_adapter``), cross-attention (``cross_adapter``, off by
  default as in the reference) and FFN (``output_adapter``) blocks;
* LoRA/(IA)^3/VeRA/DoRA: ``attn_matrices`` adapt the self- and the cross-attention projections
  (the reference's "selfattn" LoRA wraps both), ``intermediate_lora``/``output_lora`` the FFN;
* prefix tuning: ``encoder_prefix`` (encoder self-attention), ``self_prefix`` (decoder
  self-attention) and ``cross_prefix`` (decoder cross-attention, keys/values over the encoder
  output), each one module of the adapter's prefix group, as in the reference's weight keys;
* invertible adapters act on the encoder's embedding output; their weights are keyed
  ``encoder.invertible_adapters`` as in the reference;
* prompt tuning (which the reference library has no support for on these models) inserts the prompt
  into the encoder's embedding output; the encoder's padding mask is extended where the encoder and
  where the decoder's cross-attention read it. The decoder's sequence and the labels are unchanged.

Whisper has the BART-family layout with an audio encoder; ``EncoderDecoderModel`` has no layout of
its own: its stacks are those of its two sub-models' specs (``adapters.plugins.SubModels``).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from adapters.plugins import InputOf, LayerStack, ModelSpec, ReferenceNames, ResidualBlock, SelfAttention, SubModels

# The reference keeps invertible adapters in the encoder (its invertible_adapters_base_name).
_ENCODER_INVERTIBLE = ReferenceNames(paths={"invertible_adapters": "encoder.invertible_adapters"})

# Prompt tuning: the encoder's padding mask, and the same mask where the decoder takes it for its
# cross-attention (the encoder output it attends to includes the prompt positions).
_PADDING_MASKS = (InputOf("encoder", 1, "attention_mask"), InputOf("decoder", 3, "encoder_attention_mask"))


# ReFT: the decoder layers intervene at the positions of the encoder's sequence (its padding mask and
# length), as in the reference library (see adapters.methods.reft.positions).
_REFUSED: dict[str, str] = {}


# -- T5, mT5 -----------------------------------------------------------------------------------
# A T5 block is a list of pre-LN sub-layers: block.layer[0] self-attention, (decoder) block.layer[1]
# cross-attention, block.layer[-1] FFN, each ``x + dropout(sub(layer_norm(x)))`` with its own dropout
# module. Each sub-layer holds its adapters itself (``encoder.block.0.layer.0.adapters.NAME``), as
# in the reference library.
def _t5_block(index: int) -> ResidualBlock:
    return ResidualBlock(
        holder=f"layer.{index}",
        residual=InputOf(f"layer.{index}.layer_norm", 0, "hidden_states"),
        sublayer=f"layer.{index}.dropout",
    )


def _t5_linears(ffn: int, wi: str, cross: bool) -> dict[str, str]:
    linears = {
        "q": "layer.0.SelfAttention.q",
        "k": "layer.0.SelfAttention.k",
        "v": "layer.0.SelfAttention.v",
        "attn_out": "layer.0.SelfAttention.o",
        "ffn_in": f"layer.{ffn}.DenseReluDense.{wi}",
        "ffn_out": f"layer.{ffn}.DenseReluDense.wo",
    }
    if cross:
        linears.update({f"cross_{m}": f"layer.1.EncDecAttention.{m}" for m in "qkv"})
    return linears


def _t5_spec(model_types: tuple[str, ...], wi: str, encoder_only: bool = False) -> ModelSpec:
    """``wi``: the FFN input linear LoRA adapts: ``wi`` (ReLU FFN) or ``wi_1`` (gated FFN, as in the reference).

    ``encoder_only``: ``T5EncoderModel``, the encoder stack alone.
    """
    decoder = LayerStack(
        "decoder.block",
        overrides={
            "ffn_block": _t5_block(2),
            "cross_attention_block": _t5_block(1),
            "linears": _t5_linears(2, wi, cross=True),
            "self_attention": SelfAttention("layer.0.SelfAttention", prefix_key="self_prefix"),
            "cross_attention": SelfAttention("layer.1.EncDecAttention", prefix_key="cross_prefix"),
        },
    )
    return ModelSpec(
        model_types=model_types,
        layer_stacks=(LayerStack("encoder.block"),) if encoder_only else (LayerStack("encoder.block"), decoder),
        attention_block=_t5_block(0),
        ffn_block=_t5_block(1),
        linears=_t5_linears(1, wi, cross=False),
        self_attention=SelfAttention("layer.0.SelfAttention", prefix_key="encoder_prefix"),
        # T5Stack embeds without positions (relative position biases live in the attention).
        embeddings="encoder.embed_tokens",
        padding_mask=_PADDING_MASKS[0] if encoder_only else _PADDING_MASKS,
        reference_names=_ENCODER_INVERTIBLE,
        refused_methods=_REFUSED,
        specialize=_t5_for_model,
    )


def _t5_for_model(spec: ModelSpec, base_model: nn.Module) -> ModelSpec:
    """The T5 layout of one checkpoint: its FFN (ReLU or gated) and its stacks (``T5EncoderModel``: one).

    T5 v1.1 and Flan-T5 checkpoints are model type ``t5`` with a gated FFN (``feed_forward_proj``
    ``"gated-gelu"``): ``wi_0`` (gate) and ``wi_1`` (value) instead of ``wi``. LoRA's
    ``intermediate_lora`` adapts ``wi_1``, as the reference library does for any gated T5 FFN.
    """
    wi = "wi_1" if getattr(base_model.config, "is_gated_act", False) else "wi"
    return dataclasses.replace(
        _t5_spec(spec.model_types, wi, encoder_only=not hasattr(base_model, "decoder")), specialize=None
    )


T5 = _t5_spec(("t5",), "wi")
# mT5 (and T5 v1.1) use a gated FFN: wi_0 (gate) and wi_1 (value); the reference adapts wi_1.
MT5 = _t5_spec(("mt5",), "wi_1")


# -- BART family -------------------------------------------------------------------------------
def _bart_linears(cross: bool) -> dict[str, str]:
    linears = {
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "attn_out": "self_attn.out_proj",
        "ffn_in": "fc1",
        "ffn_out": "fc2",
    }
    if cross:
        linears.update({f"cross_{m}": f"encoder_attn.{m}_proj" for m in "qkv"})
    return linears


def _bart_spec(model_types: tuple[str, ...], post_ln: bool) -> ModelSpec:
    """BART and PLBART are post-LN, mBART pre-LN; the module names are the same.

    Post-LN: ``LN(x + F.dropout(sub(x)))``. The dropout is functional, so ``h`` is read off the
    LayerNorm's input (``sublayer=None``): the adapter sees the dropped-out ``h`` as in the reference.
    Pre-LN: ``x + F.dropout(sub(LN(x)))``; ``h`` is the sub-layer's output (before the dropout,
    which the model then applies to the adapted output; the same in eval mode).
    """

    def block(holder: str, sub: str, norm: str) -> ResidualBlock:
        if post_ln:
            return ResidualBlock(
                holder=holder, residual=InputOf(sub, 0, "hidden_states"), sublayer=None, layer_norm=norm
            )
        return ResidualBlock(holder=holder, residual=InputOf(norm, 0, "input"), sublayer=sub)

    ffn = (
        ResidualBlock(
            holder="output_adapters", residual=InputOf("fc1", 0, "input"), sublayer=None, layer_norm="final_layer_norm"
        )
        if post_ln
        else ResidualBlock(holder="output_adapters", residual=InputOf("final_layer_norm", 0, "input"), sublayer="fc2")
    )
    return ModelSpec(
        model_types=model_types,
        layer_stacks=(
            LayerStack("encoder.layers"),
            LayerStack(
                "decoder.layers",
                overrides={
                    "cross_attention_block": block(
                        "cross_attention_adapters", "encoder_attn", "encoder_attn_layer_norm"
                    ),
                    "linears": _bart_linears(cross=True),
                    "self_attention": SelfAttention("self_attn", prefix_key="self_prefix"),
                    "cross_attention": SelfAttention("encoder_attn", prefix_key="cross_prefix"),
                },
            ),
        ),
        attention_block=block("attention_adapters", "self_attn", "self_attn_layer_norm"),
        ffn_block=ffn,
        linears=_bart_linears(cross=False),
        self_attention=SelfAttention("self_attn", prefix_key="encoder_prefix"),
        # The reference applies invertible adapters to the output of the encoder's embedding LayerNorm
        # (token + position embeddings, normalized): the encoder's counterpart of BERT's embeddings output.
        embeddings="encoder.layernorm_embedding",
        # The prompt enters with the token embeddings (as PEFT's inputs_embeds would): the encoder then
        # adds positions to the longer sequence and builds its mask from it.
        prompt_embeddings="encoder.embed_tokens",
        padding_mask=_PADDING_MASKS,
        reference_names=_ENCODER_INVERTIBLE,
        refused_methods=_REFUSED,
    )


BART = _bart_spec(("bart", "plbart"), post_ln=True)
MBART = _bart_spec(("mbart",), post_ln=False)

# -- Whisper -----------------------------------------------------------------------------------
# mBART's pre-LN layer layout (the same module names) behind an audio encoder: two convolutions and
# a fixed positional table over log-mel frames, no padding mask. As in the reference library,
# invertible adapters act on the output of the encoder's final LayerNorm (encoder.layer_norm), and
# the LM head (proj_out) applies no inverse.
_WHISPER_REFUSED = {
    "reft": "ReFT's decoder layers intervene at the positions of the encoder's sequence (as in the reference "
    "library): for Whisper the audio frames, which have no padding mask and outnumber the decoder's tokens. Use "
    "LoRA, bottleneck adapters or prefix tuning",
    "prompt_tuning": "Whisper's encoder reads log-mel frames of a fixed length and adds its positional table "
    "inside its forward, with no token embeddings where a prompt could enter (the reference library has no "
    "prompt tuning for Whisper either). Use prefix tuning, which adds keys/values to every attention instead",
}


def _pre_ln(holder: str, sub: str, norm: str) -> ResidualBlock:
    """``x + dropout(sub(norm(x)))``: ``h`` is the sub-layer's output, ``x`` the LayerNorm's input."""
    return ResidualBlock(holder=holder, residual=InputOf(norm, 0, "input"), sublayer=sub)


WHISPER = ModelSpec(
    model_types=("whisper",),
    layer_stacks=(
        LayerStack("encoder.layers"),
        LayerStack(
            "decoder.layers",
            overrides={
                "cross_attention_block": _pre_ln("cross_attention_adapters", "encoder_attn", "encoder_attn_layer_norm"),
                "linears": _bart_linears(cross=True),
                "self_attention": SelfAttention("self_attn", prefix_key="self_prefix"),
                "cross_attention": SelfAttention("encoder_attn", prefix_key="cross_prefix"),
            },
        ),
    ),
    attention_block=_pre_ln("attention_adapters", "self_attn", "self_attn_layer_norm"),
    ffn_block=_pre_ln("output_adapters", "fc2", "final_layer_norm"),
    linears=_bart_linears(cross=False),
    self_attention=SelfAttention("self_attn", prefix_key="encoder_prefix"),
    embeddings="encoder.layer_norm",
    # The LM head reads the decoder's text positions, never the transformed audio: nothing to invert.
    invert_at_lm_head=False,
    padding_mask=None,
    reference_names=_ENCODER_INVERTIBLE,
    refused_methods=_WHISPER_REFUSED,
)


# -- EncoderDecoderModel -----------------------------------------------------------------------
# Any supported encoder (BERT family) with any supported decoder built with add_cross_attention
# (BERT family, GPT-2): the layers, their places and the embeddings come from the sub-models' own
# specs. Encoder layers are 0..n-1, decoder layers n.. (the reference numbers each sub-model from 0).
# The encoder's self-attention prefixes are `encoder_prefix` (the reference keeps a pool per
# sub-model, both `self_prefix`), so encoder and decoder keep separate prefixes here too.
ENCODER_DECODER = ModelSpec(
    model_types=("encoder-decoder",),
    specialize=SubModels(
        ("encoder", "decoder"),
        # The source mask enters the decoder (for its cross-attention) as encoder_attention_mask.
        padding_masks=(InputOf("decoder", 6, "encoder_attention_mask"),),
        prefix_keys={"encoder": "encoder_prefix"},
    ),
    reference_names=_ENCODER_INVERTIBLE,
    refused_methods={
        "reft": "ReFT on an EncoderDecoderModel is not checked against the reference library (its decoder layers "
        "would intervene at the encoder's positions, as in T5 and BART). Use LoRA, bottleneck adapters or prefix "
        "tuning",
        "prompt_tuning": "an EncoderDecoderModel's config holds no model-level sizes of its own (they live in "
        "its encoder's and decoder's configs), and the reference library has no prompt tuning for it either. "
        "Use prefix tuning, which adds keys/values to every attention instead",
    },
)

SPECS = (T5, MT5, BART, MBART, WHISPER, ENCODER_DECODER)
