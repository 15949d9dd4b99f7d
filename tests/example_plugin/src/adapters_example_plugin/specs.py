"""Where adapters attach in the tiny transformer: module paths only, no modeling code.

Paths of ``attention_block``, ``ffn_block``, ``linears`` and ``fused_linears`` are relative to one
layer (``layers.<i>``); ``layers``, ``embeddings`` and ``padding_mask`` to the base model.
"""

from __future__ import annotations

from adapters.plugins import FusedLinear, InputOf, ModelSpec, ResidualBlock

TINY_TRANSFORMER = ModelSpec(
    model_types=("tiny_transformer",),
    layers="layers",
    # Pre-LN blocks (layer_norm=None): x is the tensor entering the block's LayerNorm, h the output
    # of the attention / MLP module; the layer adds them itself. The holders do not exist in the
    # model: the core creates them as containers, so weight keys read layers.0.output_adapters....
    attention_block=ResidualBlock(
        holder="attention_adapters", residual=InputOf("attention_norm", 0, "input"), sublayer="attention"
    ),
    ffn_block=ResidualBlock(holder="output_adapters", residual=InputOf("mlp_norm", 0, "input"), sublayer="mlp"),
    linears={"attn_out": "attention.out_proj", "ffn_in": "mlp.fc_in", "ffn_out": "mlp.fc_out"},
    # q, k and v are three equal, contiguous slices of one projection's output (LoRA on q and v
    # touches only their rows).
    fused_linears=(FusedLinear("attention.qkv", ("q", "k", "v")),),
    embeddings="embeddings",
    # TinyTransformerModel.forward(input_ids, attention_mask, ...): prompt tuning lengthens the mask here.
    padding_mask=InputOf("", 1, "attention_mask"),
    # No self_attention: the attention module runs torch's scaled_dot_product_attention on its own
    # fused projection, so there is no place the core could add prefix keys and values.
    refused_methods={
        "prefix_tuning": "its attention module computes keys and values inside its own scaled_dot_product_attention "
        "call on a fused qkv projection, and the plugin declares no place for prefix keys and values "
        "(ModelSpec.self_attention); use prompt tuning, LoRA, a bottleneck adapter or ReFT instead"
    },
)

SPECS = (TINY_TRANSFORMER,)
