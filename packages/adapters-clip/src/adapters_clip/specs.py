"""Where adapters attach in CLIP's and SigLIP's towers (transformers 5.x).

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

SigLIP's encoder layers are CLIP's (``layer_norm1``, ``self_attn``, ``layer_norm2``, ``mlp``, the
same inline pre-LN residuals), so its specs take the same layer fields. What differs, and why the
SigLIP specs refuse less than CLIP's:

* The text tower pools ``last_hidden_state[:, -1]``, the last position, not a position found in
  ``input_ids``. Prompt tuning inserts its prompt at the front (``combine="prefix"`` or after the
  first token), so the pooled position stays the input's last token, and the pooler reads no
  ``input_ids``: prompt tuning works, and Parallel needs no copy of the inputs.
* The vision tower's attention-pooling ``head`` (a ``torch.nn.MultiheadAttention`` probe and its
  own ``mlp``) sits outside the layer stack; no spec path names it, so adapters leave it alone. It
  attends over every position, prompt positions included, as the layers do.
* The reference library has no SigLIP: weight keys are the transformers 5 module paths (no
  ``body_prefix``) and prefix tuning uses the plain ``self_prefix`` place, which the dual model's
  two towers share like any two layer stacks.
* The dual ``SiglipModel`` refuses prompt tuning for a reason of this release, not of SigLIP: the
  prompt would be sized by a hidden size its config does not have (see ``SIGLIP``).
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

SIGLIP_TEXT = ModelSpec(
    model_types=("siglip_text_model",),
    layers="encoder.layers",
    self_attention=SelfAttention("self_attn"),
    **_CLIP_LAYER,
)

SIGLIP_VISION = ModelSpec(
    model_types=("siglip_vision_model",),
    layers="encoder.layers",
    padding_mask=None,  # images: no attention mask
    self_attention=SelfAttention("self_attn"),
    **_CLIP_LAYER,
)

SIGLIP = ModelSpec(
    model_types=("siglip",),
    layer_stacks=(
        LayerStack("text_model.encoder.layers", config="text_config"),
        LayerStack("vision_model.encoder.layers", config="vision_config"),
    ),
    embeddings="text_model.embeddings",
    padding_mask=InputOf("", 2, "attention_mask"),  # SiglipModel.forward(input_ids, pixel_values, attention_mask)
    # One prefix-tuning pool for both towers: the core accepts it where the towers' attention shapes
    # agree (the published checkpoints: equal widths) and refuses it otherwise.
    self_attention=SelfAttention("self_attn"),
    refused_methods={
        # The core sizes a prompt by the model config's hidden_size; SiglipConfig has one per tower.
        "prompt_tuning": "prompt tuning sizes its prompt by one hidden size of the model's config, and "
        "SiglipConfig has one per tower (text_config, vision_config), which this release does not model yet; "
        "use prompt tuning on SiglipTextModel, or prefix tuning or LoRA on SiglipModel",
    },
    **_CLIP_LAYER,
)

SPECS = (CLIP_TEXT, CLIP_VISION, CLIP, SIGLIP_TEXT, SIGLIP_VISION, SIGLIP)
