"""Where adapters attach in each BERT-family architecture of transformers 5.x.

CamemBERT, Data2Vec-Text and ERNIE (model type ``ernie``, not ERNIE 4.5) are transformers copies
of BERT's modules (the same ``attention.self`` / ``attention.output`` / ``intermediate`` /
``output`` names, post-LN
``LayerNorm(dropout(dense(h)) + input_tensor)`` in the output modules, attention through the
attention interface and ``forward(input_ids, attention_mask, ...)``), so they share BERT's spec
(``BERT_LIKE``) and its weight keys. ERNIE's optional task-type embeddings live inside
``embeddings`` and need nothing else.

RoBERTa-PreLayerNorm has BERT's module names but is pre-LN: its output modules return
``dropout(dense(h)) + input_tensor`` with no LayerNorm, which moved into the attention module
(before ``attention.self``) and into ``intermediate`` (before its dense). Its blocks therefore
read ``x`` at the output modules' ``input_tensor`` as BERT's do and hand back the adapted output
at the dropout that closes each sub-layer, before the output module adds ``x``
(``ROBERTA_PRELAYERNORM``).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from adapters.plugins import (
    AdapterModelInterface,
    FusedLinear,
    InputOf,
    KVProjections,
    ModelSpec,
    OutputOf,
    ResidualBlock,
    SelfAttention,
)

# The two post-LN blocks of BERT and its copies: output modules take (hidden_states, input_tensor).
_BERT_ATTENTION_BLOCK = ResidualBlock(
    holder="attention.output",
    residual=InputOf("attention.output", 1, "input_tensor"),
    sublayer="attention.output.dropout",
    layer_norm="attention.output.LayerNorm",
)
_BERT_FFN_BLOCK = ResidualBlock(
    holder="output",
    residual=InputOf("output", 1, "input_tensor"),
    sublayer="output.dropout",
    layer_norm="output.LayerNorm",
)
# Self-attention modules that call transformers' attention interface (prefix tuning hooks in there).
_BERT_SELF_ATTENTION = SelfAttention("attention.self")
# DeBERTa's disentangled attention computes scores itself: prefix keys/values are spliced into its
# projections, its relative-position bias covers the model's own positions only (as in the
# reference library), and its (batch, 1, query, key) mask is extended.
_DEBERTA_MASK = InputOf("", 1, "attention_mask")
# DeBERTa builds its pairwise mask in the encoder from the (batch, sequence) mask.
_DEBERTA_PADDING_MASK = InputOf("encoder", 1, "attention_mask")

_QKV = (("q", "query"), ("k", "key"), ("v", "value"))
_BERT_FFN_LINEARS = {"attn_out": "attention.output.dense", "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}
_BERT_LINEARS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    **_BERT_FFN_LINEARS,
}
# Layers built with add_cross_attention (the decoder of an EncoderDecoderModel): `crossattention`
# repeats the self-attention's modules. As in the reference library, its output block takes the
# bottleneck adapters of mh_adapter (it is a BertSelfOutput too), attention LoRA adapts its
# projections, and prefix tuning adds `cross_prefix` keys/values.
_BERT_CROSS_ATTENTION = {
    "cross_attention_block": ResidualBlock(
        holder="crossattention.output",
        residual=InputOf("crossattention.output", 1, "input_tensor"),
        sublayer="crossattention.output.dropout",
        layer_norm="crossattention.output.LayerNorm",
        config_flag="mh_adapter",
    ),
    "linears": {**_BERT_LINEARS, **{f"cross_{m}": f"crossattention.self.{n}" for m, n in _QKV}},
    "cross_attention": SelfAttention("crossattention.self", prefix_key="cross_prefix"),
}

BERT_LIKE = ModelSpec(
    # X-MOD: XmodSelfOutput adds the residual and XmodAttention applies attention.output.LayerNorm
    # after it; XmodOutput adds the residual, then its language adapter reuses output.LayerNorm
    # (the block's output is the first call) before the layer's final call of the same LayerNorm,
    # so X-MOD's own language adapters keep working behind the bottleneck. Post-norm X-MOD only
    # (pre_norm=False, as in the published checkpoints).
    model_types=(
        "bert",
        "roberta",
        "xlm-roberta",
        "electra",
        "bert-generation",
        "xmod",
        "camembert",
        "data2vec-text",
        "ernie",
    ),
    layers="encoder.layer",
    attention_block=_BERT_ATTENTION_BLOCK,
    ffn_block=_BERT_FFN_BLOCK,
    linears=_BERT_LINEARS,
    self_attention=_BERT_SELF_ATTENTION,
    cross_attention_overrides=_BERT_CROSS_ATTENTION,
)


# Pre-LN: x is the output module's input_tensor (the layer's or the attention block's input, not
# normalized), h the dropout output the module adds x to. There is no post-LN to reroute, so the
# core replaces the dropout's output by (adapted block output - x). The model's final LayerNorm
# (base_model.LayerNorm, after the encoder) is left alone, like ViT's.
def _pre_ln_block(holder: str, config_flag: str | None = None) -> ResidualBlock:
    return ResidualBlock(
        holder=holder,
        residual=InputOf(holder, 1, "input_tensor"),
        sublayer=f"{holder}.dropout",
        config_flag=config_flag,
    )


ROBERTA_PRELAYERNORM = ModelSpec(
    model_types=("roberta-prelayernorm",),
    layers="encoder.layer",
    attention_block=_pre_ln_block("attention.output"),
    ffn_block=_pre_ln_block("output"),
    linears=_BERT_LINEARS,
    self_attention=_BERT_SELF_ATTENTION,
    # The decoder's cross-attention has the same pre-LN output module as its self-attention.
    cross_attention_overrides={
        **_BERT_CROSS_ATTENTION,
        "cross_attention_block": _pre_ln_block("crossattention.output", config_flag="mh_adapter"),
    },
)

DEBERTA_V2 = ModelSpec(
    model_types=("deberta-v2",),
    layers="encoder.layer",
    attention_block=_BERT_ATTENTION_BLOCK,
    ffn_block=_BERT_FFN_BLOCK,
    linears={
        "q": "attention.self.query_proj",
        "k": "attention.self.key_proj",
        "v": "attention.self.value_proj",
        **_BERT_FFN_LINEARS,
    },
    self_attention=SelfAttention(
        "attention.self",
        projections=KVProjections(
            attention_mask=_DEBERTA_MASK,
            key="key_proj",
            value="value_proj",
            position_bias="disentangled_attention_bias",
        ),
    ),
    padding_mask=_DEBERTA_PADDING_MASK,
)

# DeBERTa v1 computes q, k and v with one bias-less linear; LoRA sees its output as contiguous
# thirds (q, k, v), the layout of adapters published for it.
DEBERTA = ModelSpec(
    model_types=("deberta",),
    layers="encoder.layer",
    attention_block=_BERT_ATTENTION_BLOCK,
    ffn_block=_BERT_FFN_BLOCK,
    linears=_BERT_FFN_LINEARS,
    fused_linears=(FusedLinear("attention.self.in_proj", ("q", "k", "v")),),
    self_attention=SelfAttention(
        "attention.self",
        projections=KVProjections(
            attention_mask=_DEBERTA_MASK,
            fused_qkv="in_proj",
            position_bias="disentangled_att_bias",
            value_bias="v_bias",
        ),
    ),
    padding_mask=_DEBERTA_PADDING_MASK,
)

# DistilBERT adds both residuals inline in TransformerBlock.forward:
# sa_layer_norm(attention(x)[0] + x) and output_layer_norm(ffn(a) + a). The adapter containers
# do not exist in the model; the core creates them where the reference library has them.
DISTILBERT = ModelSpec(
    model_types=("distilbert",),
    layers="transformer.layer",
    attention_block=ResidualBlock(
        holder="attention_adapters",
        residual=InputOf("attention", 0, "hidden_states"),
        sublayer="attention",
        layer_norm="sa_layer_norm",
    ),
    ffn_block=ResidualBlock(
        holder="output_adapters",
        residual=InputOf("ffn", 0, "input"),
        sublayer="ffn",
        layer_norm="output_layer_norm",
    ),
    linears={
        "q": "attention.q_lin",
        "k": "attention.k_lin",
        "v": "attention.v_lin",
        "attn_out": "attention.out_lin",
        "ffn_in": "ffn.lin1",
        "ffn_out": "ffn.lin2",
    },
    # The reference library keys DistilBERT's prefixes "self", not "self_prefix".
    self_attention=SelfAttention("attention", prefix_key="self"),
)


def _albert_layers(base_model: nn.Module) -> Iterator[tuple[int, nn.Module]]:
    # ALBERT reuses its layer groups across depth: each distinct AlbertLayer is one "layer" here,
    # numbered by its position within the groups (0 for the usual single shared layer).
    index = 0
    for group in base_model.encoder.albert_layer_groups:
        for layer in group.albert_layers:
            yield index, layer
            index += 1


# ALBERT's attention block is inline in AlbertAttention.forward: LayerNorm(x + dropout(dense(ctx))).
# The reference library hands the attention-position adapter the layer input as the sub-block
# output and the attention output as the residual (roles swapped compared with BERT); published
# adapters were trained that way, so the spec reads h and x from there.
ALBERT = ModelSpec(
    model_types=("albert",),
    layers="encoder.albert_layer_groups",
    iter_layers=_albert_layers,
    attention_block=ResidualBlock(
        holder="attention.attention_adapters",
        residual=OutputOf("attention.output_dropout"),
        sublayer=InputOf("attention", 0, "hidden_states"),
        layer_norm="attention.LayerNorm",
    ),
    ffn_block=ResidualBlock(
        holder="output_adapters",
        residual=InputOf("ffn", 0, "input"),
        sublayer="ffn_output",
        layer_norm="full_layer_layer_norm",
    ),
    linears={
        "q": "attention.query",
        "k": "attention.key",
        "v": "attention.value",
        "attn_out": "attention.dense",
        "ffn_in": "ffn",
        "ffn_out": "ffn_output",
    },
    self_attention=SelfAttention("attention"),
)

# ModernBERT through the reference library's own interface for it, so that adapters it trained on
# ModernBERT load with their outputs (its fused Wqkv takes LoRA in q/k/v slices; bottleneck adapters
# replace the outputs of attn.Wo and mlp.Wo). Prompt and prefix tuning are refused, as there.
MODERNBERT_INTERFACE = AdapterModelInterface(
    adapter_methods=["bottleneck", "lora", "reft", "invertible"],
    model_embeddings="embeddings",
    model_layers="layers",
    layer_self_attn="attn",
    layer_cross_attn=None,
    attn_qkv_proj="Wqkv",
    attn_o_proj="Wo",
    layer_intermediate_proj="mlp.Wi",
    layer_output_proj="mlp.Wo",
    layer_pre_self_attn="attn",
    layer_pre_ffn="mlp",
    layer_ln_1="mlp_norm",
)
MODERNBERT = MODERNBERT_INTERFACE.to_spec("modernbert")

SPECS = (BERT_LIKE, ROBERTA_PRELAYERNORM, DEBERTA_V2, DEBERTA, DISTILBERT, ALBERT, MODERNBERT)
