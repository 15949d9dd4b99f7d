"""Where adapters attach in CLIP's towers (transformers 5.x).

Every CLIP encoder layer is pre-LN, ``x + self_attn(layer_norm1(x))`` then
``x + mlp(layer_norm2(x))``, with the residuals added inline: a block's ``x`` is read where it
enters its LayerNorm and ``h`` is the output of ``self_attn`` / ``mlp``, the tensors the reference
library hands its ``attention_adapters`` and ``output_adapters``.

The dual ``CLIPModel`` holds both towers: two layer stacks, numbered across as the reference
numbers them (text layers ``0..n-1``, vision layers ``n..``) for ``leave_out`` and per-layer
options, each sized by its own config (text and vision hidden sizes differ in the published
checkpoints). Weight keys keep the module paths (``text_model.encoder.layers.0...``,
``vision_model.encoder.layers.0...``).

transformers 5 dropped the inner ``text_model`` / ``vision_model`` module of the single-tower
classes; the reference's keys of those models still start with it (except its outer containers:
shared Compacter tensors, the prefix-tuning pool), so the specs declare it as ``body_prefix``.
"""

from __future__ import annotations

from adapters.plugins import InputOf, LayerStack, ModelSpec, ReferenceNames, ResidualBlock, SelfAttention

_CLIP_LAYER = dict(
    attention_block=ResidualBlock(
        holder="attention_adapters", residual=InputOf("layer_norm1", 0, "input"), sublayer="self_attn"
    ),
    ffn_block=ResidualBlock(holder="output_adapters", residual=InputOf("layer_norm2", 0, "input"), sublayer="mlp"),
    linears={
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "attn_out": "self_attn.out_proj",
        "ffn_in": "mlp.fc1",
        "ffn_out": "mlp.fc2",
    },
)

# As in the reference library: no prompt tuning on CLIP.
_REFUSED = {
    "prompt_tuning": "the text tower pools at the end-of-text position it finds in input_ids, which prompt "
    "tokens inserted after the embeddings would shift (the reference library has no prompt tuning for CLIP "
    "either); use prefix tuning or LoRA"
}

# The reference names prefix-tuning places by the tower's model type ("<model_type>_self_prefix").
CLIP_TEXT = ModelSpec(
    model_types=("clip_text_model",),
    layers="encoder.layers",
    self_attention=SelfAttention("self_attn", prefix_key="clip_text_model_self_prefix"),
    reference_names=ReferenceNames(body_prefix="text_model."),
    refused_methods=_REFUSED,
    parallel_copies_inputs=True,  # the pooler indexes the batch with input_ids
    **_CLIP_LAYER,
)

CLIP_VISION = ModelSpec(
    model_types=("clip_vision_model",),
    layers="encoder.layers",
    padding_mask=None,  # images: no attention mask
    self_attention=SelfAttention("self_attn", prefix_key="clip_vision_model_self_prefix"),
    reference_names=ReferenceNames(body_prefix="vision_model."),
    refused_methods=_REFUSED,
    **_CLIP_LAYER,
)

CLIP = ModelSpec(
    model_types=("clip",),
    layer_stacks=(
        LayerStack("text_model.encoder.layers", config="text_config"),
        LayerStack("vision_model.encoder.layers", config="vision_config"),
    ),
    embeddings="text_model.embeddings",
    padding_mask=InputOf("", 2, "attention_mask"),  # CLIPModel.forward(input_ids, pixel_values, attention_mask)
    # The reference keeps invertible adapters in the text tower.
    reference_names=ReferenceNames(paths={"invertible_adapters": "text_model.invertible_adapters"}),
    parallel_copies_inputs=True,  # the text pooler indexes the batch with input_ids
    refused_methods={
        **_REFUSED,
        # SelfAttention names one prefix place; the reference keeps one per tower.
        "prefix_tuning": "the reference library keeps one prefix-tuning place per tower "
        "(clip_text_model_self_prefix, clip_vision_model_self_prefix), which this release does not model yet; "
        "use prefix tuning on CLIPTextModel / CLIPVisionModel, or LoRA",
    },
    **_CLIP_LAYER,
)

SPECS = (CLIP_TEXT, CLIP_VISION, CLIP)
