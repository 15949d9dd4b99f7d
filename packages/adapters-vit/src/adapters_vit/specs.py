"""Where adapters attach in ViT, BEiT, DINOv2 and their copies (transformers 5.x).

DeiT and ViT-MSN are ViT's modules under other names (transformers 5 gave them ViT's new layout:
``layers.N.attention.q_proj``, one ``dropout`` closing both blocks), so they take ViT's layer
fields. The reference library supports neither: their weight keys are the transformers 5 module
paths, without ViT's mapping to 4.x names. DeiT's distillation token lives in the embeddings and
changes nothing here.

Data2Vec-Vision is BEiT's 4.x code, which transformers 5.24 has not rewritten as it did BEiT:
its modules keep the 4.x names (``encoder.layer.N.attention.attention.query``), which are the
paths its spec names directly, and its blocks close with ``drop_path`` after LayerScale, as
BEiT's. Its self-attention computes scores in its own code, without transformers' attention
interface and without an attention mask, so prefix tuning is refused (see ``DATA2VEC_VISION``).

All of them are pre-LN encoders: each layer computes ``x + f(LN(x))`` twice, adding the residual
inline in the layer's forward. A block's ``x`` is read where it enters the LayerNorm that opens
the block, and ``h`` leaves the last module before the addition, so a bottleneck adapter sees
exactly what the reference library hands its ``attention_adapters`` / ``output_adapters``:

* ViT: ``dropout(attention(...))`` and ``dropout(mlp(...))``; the layer calls one dropout module
  for both blocks, and each block takes the call that follows its own LayerNorm.
* BEiT: ``drop_path(lambda_1 * dropout(attention(...)))``, i.e. after LayerScale, as in the
  reference (its adapters receive the scaled output); same for the FFN with ``lambda_2``.
* DINOv2 (no reference support): by analogy with BEiT, after LayerScale and drop path,
  ``drop_path(layer_scale1(attention(...)))``. An adapter placed before LayerScale would have its
  output shrunk by the tiny LayerScale values (1e-5 in the published checkpoints) and learn
  nothing; after it, the adapter acts on the residual stream at its own scale.

Weight keys: transformers 5 renamed ViT's and BEiT's modules (``encoder.layer.N.attention.
attention.query`` became ``layers.N.attention.q_proj``); the specs map them back to the names
the reference library writes, so published adapters load here and ours load there. DINOv2 keeps
the transformers 5 names (there is no reference file format for it).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from adapters.plugins import InputOf, ModelSpec, ReferenceNames, ResidualBlock, SelfAttention

_LINEARS = {
    "q": "attention.q_proj",
    "k": "attention.k_proj",
    "v": "attention.v_proj",
    "attn_out": "attention.o_proj",
    "ffn_in": "mlp.fc1",
    "ffn_out": "mlp.fc2",
}


def _layer(ln_attention: str, ln_ffn: str, closing: str) -> dict:
    """The ModelSpec fields every layer of the three shares (they differ in module names only)."""
    return {
        "attention_block": ResidualBlock(
            holder="attention_adapters", residual=InputOf(ln_attention, 0, "input"), sublayer=closing
        ),
        "ffn_block": ResidualBlock(holder="output_adapters", residual=InputOf(ln_ffn, 0, "input"), sublayer=closing),
        "linears": _LINEARS,
        # The attention modules call transformers' attention interface (prefix keys/values go there).
        "self_attention": SelfAttention("attention"),
        # Images have no padding: the models take no attention mask.
        "padding_mask": None,
    }


# The transformers 4.x names of ViT's and BEiT's modules, which the reference's weight keys use.
_V4_LINEAR_NAMES = {
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
    # Prefix-tuning gates (UniPELT, use_gating=True) sit in the 4.x self-attention module.
    "attention.prefix_tuning": "attention.attention.prefix_tuning",
}

# Data2Vec-Vision's own module names (those of ViT and BEiT in transformers 4.x).
_V4_LINEARS = {role: _V4_LINEAR_NAMES[path] for role, path in _LINEARS.items()}

VIT = ModelSpec(
    model_types=("vit",),
    layers="layers",
    **_layer("layernorm_before", "layernorm_after", "dropout"),
    reference_names=ReferenceNames(
        paths={"layers": "encoder.layer"},
        # The reference keeps the FFN adapters in ViTOutput (``output.output_adapters``), a module
        # transformers 5 no longer has: they live in the layer and are renamed in weight keys.
        layer_modules={**_V4_LINEAR_NAMES, "output_adapters": "output.output_adapters"},
    ),
)

# BEiT checkpoints with relative position bias (the published ones) add a bias over the patch grid
# and [CLS] to every attention score: prompt positions inserted after the embeddings have none.
BEIT_RELATIVE_POSITION_REFUSALS = {
    "prompt_tuning": "this BEiT adds a relative position bias over the image's patches to every attention score, "
    "which has no entries for prompt positions; use prefix tuning, LoRA or a bottleneck adapter"
}


def _beit_for_checkpoint(spec: ModelSpec, base_model: nn.Module) -> ModelSpec:
    config = base_model.config
    if config.use_relative_position_bias or config.use_shared_relative_position_bias:
        # Added to what the spec refuses anyway (Data2Vec-Vision's prefix tuning).
        return dataclasses.replace(spec, refused_methods={**spec.refused_methods, **BEIT_RELATIVE_POSITION_REFUSALS})
    return spec


BEIT = ModelSpec(
    model_types=("beit",),
    layers="layers",
    **_layer("layernorm_before", "layernorm_after", "drop_path"),
    reference_names=ReferenceNames(paths={"layers": "encoder.layer"}, layer_modules=_V4_LINEAR_NAMES),
    specialize=_beit_for_checkpoint,
)

# DINOv2 giant has a SwiGLU FFN, ``down(silu(gate(x)) * up(x))``: its intermediate linear is
# up_proj and its output linear down_proj, the roles the reference library's plugin interface
# gives these linears in gated MLPs (Llama and others).
DINOV2_SWIGLU_LINEARS = {**_LINEARS, "ffn_in": "mlp.up_proj", "ffn_out": "mlp.down_proj"}


def _dinov2_for_checkpoint(spec: ModelSpec, base_model: nn.Module) -> ModelSpec:
    if getattr(base_model.config, "use_swiglu_ffn", False):
        return dataclasses.replace(spec, linears=DINOV2_SWIGLU_LINEARS)
    return spec


DINOV2 = ModelSpec(
    model_types=("dinov2", "dinov2_with_registers"),
    layers="encoder.layer",
    **_layer("norm1", "norm2", "drop_path"),
    specialize=_dinov2_for_checkpoint,
)

# ViT's layout under other names; no reference file format, so no ReferenceNames (see above).
VIT_LIKE = ModelSpec(
    model_types=("deit", "vit_msn"),
    layers="layers",
    **_layer("layernorm_before", "layernorm_after", "dropout"),
)

DATA2VEC_VISION_REFUSALS = {
    "prefix_tuning": "Data2Vec-Vision's self-attention (still the transformers 4.x code in this transformers "
    "release, unlike BEiT's) computes its attention scores itself, without transformers' attention interface "
    "and without an attention mask, and may add a relative position bias sized to the image's patches, so "
    "prefix keys and values have no place to go; use LoRA, a bottleneck adapter or ReFT"
}

DATA2VEC_VISION = ModelSpec(
    model_types=("data2vec-vision",),
    layers="encoder.layer",
    # Adapters after LayerScale (lambda_1, lambda_2) and drop path, as for BEiT: the module the layer
    # calls just before adding each residual.
    attention_block=ResidualBlock(
        holder="attention_adapters", residual=InputOf("layernorm_before", 0, "input"), sublayer="drop_path"
    ),
    ffn_block=ResidualBlock(
        holder="output_adapters", residual=InputOf("layernorm_after", 0, "input"), sublayer="drop_path"
    ),
    linears=_V4_LINEARS,
    padding_mask=None,
    refused_methods=DATA2VEC_VISION_REFUSALS,
    # Prompt tuning is refused, as on BEiT, where a relative position bias is on.
    specialize=_beit_for_checkpoint,
)

SPECS = (VIT, BEIT, DINOV2, VIT_LIKE, DATA2VEC_VISION)
