"""Where adapters attach in the decoder-only architectures of transformers 5.x.

Every block here is pre-norm: ``x + sublayer(norm(x))``, so a :class:`ResidualBlock` has no
``layer_norm`` and the bottleneck adapter acts on ``h``, the value the block adds to the residual
stream, with ``x`` the residual stream entering the block. Bottleneck weights live in the layer's
``attention_adapters`` and ``output_adapters`` containers, LoRA weights under the linear they
update (``layers.0.self_attn.q_proj.loras.NAME.lora_A``), as in the reference library.

Grouped-query attention needs nothing special: LoRA takes the shape of each linear, so on k and v
(``num_key_value_heads * head_dim`` outputs) it is smaller than on q. Rotary embeddings are applied
inside the attention after the projections, so LoRA on q/k changes what gets rotated, exactly as a
change of the projection weights would (which is what merging does). Prefix tuning adds its keys
and values at the attention function, after the rotation and the KV cache (as the reference does):
prefix positions carry no rotation and never enter the cache.

Prompt tuning uses placeholder tokens in every decoder here (``prompt_token_slots``): ``generate``
then counts the prompt in its attention mask, positions and KV cache like any token, so the prompt
enters the cache once and cached decoding equals cache-free decoding.
"""

from __future__ import annotations

import dataclasses
import functools

from torch import nn

from adapters.plugins import (
    AdapterModelInterface,
    FusedLinear,
    InputOf,
    ModelSpec,
    OutputOf,
    ResidualBlock,
    SelfAttention,
)

_ATTENTION = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "attn_out": "self_attn.o_proj"}
# The gate projection of a gated FFN (SwiGLU/GeGLU: down(act(gate(x)) * up(x))).
_GATE = {"ffn_gate": "mlp.gate_proj"}

# Llama, Mistral, Qwen2, Qwen3: x + self_attn(input_layernorm(x)), then x + mlp(post_attention_layernorm(x)).
# Each block's x is what enters its norm; h is the sub-module's output (its first output for the
# attention, which also returns attention weights).
_PRE_NORM_ATTENTION = ResidualBlock(
    holder="attention_adapters", residual=InputOf("input_layernorm", 0, "hidden_states"), sublayer="self_attn"
)
_PRE_NORM_FFN = ResidualBlock(
    holder="output_adapters", residual=InputOf("post_attention_layernorm", 0, "hidden_states"), sublayer="mlp"
)

# The reference library's own Llama and Mistral models put "intermediate" LoRA on mlp.down_proj and
# "output" LoRA on mlp.up_proj (the names swapped compared with the FFN's data flow); published
# adapters have those keys and shapes, so intermediate_lora / output_lora mean the same here.
# gate_proj takes LoRA only with gate_lora=True (the reference has no such option; PEFT's "all-linear"
# LoRAs adapt it).
LLAMA = ModelSpec(
    model_types=("llama", "mistral"),
    layers="layers",
    embeddings="embed_tokens",
    attention_block=_PRE_NORM_ATTENTION,
    ffn_block=_PRE_NORM_FFN,
    linears={**_ATTENTION, "ffn_in": "mlp.down_proj", "ffn_out": "mlp.up_proj", **_GATE},
    self_attention=SelfAttention("self_attn"),
    prompt_token_slots=True,
)

# Qwen2 and Qwen3 (q/k/v with bias in Qwen2; per-head q/k RMSNorm after the projections in Qwen3)
# have Llama's blocks. The reference supports them through its built-in model interface, which maps
# intermediate LoRA to mlp.up_proj and output LoRA to mlp.down_proj; we follow it.
QWEN = ModelSpec(
    model_types=("qwen2", "qwen3"),
    layers="layers",
    embeddings="embed_tokens",
    attention_block=_PRE_NORM_ATTENTION,
    ffn_block=_PRE_NORM_FFN,
    linears={**_ATTENTION, "ffn_in": "mlp.up_proj", "ffn_out": "mlp.down_proj", **_GATE},
    self_attention=SelfAttention("self_attn"),
    prompt_token_slots=True,
)

# Gemma 2 and Gemma 3 (text) norm both sides of each sub-layer:
#   x + post_attention_layernorm(self_attn(input_layernorm(x)))
#   x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))
# The sub-layer is everything between the residual stream and the addition, post-norm included, so
# h is the post-norm's output: a bottleneck adapter after the sub-layer sees exactly what would be
# added to the stream, and with a zero adapter the model is unchanged. (The reference's built-in
# Gemma interface hooks o_proj / down_proj instead and feeds its adapter post_norm(h + x); its
# weights load here with the same keys and shapes, but their outputs differ from the reference's.)
# LoRA placement follows that interface: intermediate -> mlp.up_proj, output -> mlp.down_proj.
GEMMA = ModelSpec(
    model_types=("gemma2", "gemma3_text"),
    layers="layers",
    embeddings="embed_tokens",
    attention_block=ResidualBlock(
        holder="attention_adapters", residual=InputOf("input_layernorm", 0, "x"), sublayer="post_attention_layernorm"
    ),
    ffn_block=ResidualBlock(
        holder="output_adapters",
        residual=InputOf("pre_feedforward_layernorm", 0, "x"),
        sublayer="post_feedforward_layernorm",
    ),
    linears={**_ATTENTION, "ffn_in": "mlp.up_proj", "ffn_out": "mlp.down_proj", **_GATE},
    self_attention=SelfAttention("self_attn"),
    prompt_token_slots=True,
)

# GPT-J runs attention and FFN in parallel on one norm: x + attn(ln_1(x)) + mlp(ln_1(x)). As in the
# reference, the attention adapter sees (h=attn output, x) and the FFN adapter (h=mlp output, x'),
# where x' = x + the attention block's adapted output is the residual stream after attention.
# q, k and v are separate bias-less nn.Linear layers; intermediate LoRA on fc_in, output on fc_out.
GPTJ = ModelSpec(
    model_types=("gptj",),
    layers="h",
    embeddings="wte",
    attention_block=ResidualBlock(holder="attention_adapters", residual=InputOf("ln_1", 0, "input"), sublayer="attn"),
    ffn_block=ResidualBlock(
        holder="output_adapters", residual=(InputOf("ln_1", 0, "input"), OutputOf("attn")), sublayer="mlp"
    ),
    linears={
        "q": "attn.q_proj",
        "k": "attn.k_proj",
        "v": "attn.v_proj",
        "attn_out": "attn.out_proj",
        "ffn_in": "mlp.fc_in",
        "ffn_out": "mlp.fc_out",
    },
    self_attention=SelfAttention("attn"),
    prompt_token_slots=True,
)

# GPT-2: x + attn(ln_1(x)), then x + mlp(ln_2(x)), like Llama's blocks. Its projections are
# transformers' Conv1D (weight stored (in, out)); q, k and v are one fused c_attn whose output is
# [q | k | v], which LoRA reads as three equal slices (one low-rank pair per enabled slice, the
# reference library's layout and weight keys: attn.c_attn.loras.NAME.lora_A). Intermediate LoRA on
# mlp.c_fc, output LoRA on mlp.c_proj, as in the reference. Prefix keys/values join at the
# attention function (after the KV cache). GPT-2 reshapes its output to the shape of input_ids, so
# prompt tuning inserts placeholder tokens there, which the prompt replaces after wte: the prompt
# positions get position embeddings like any token (prompt_token_slots).
GPT2 = ModelSpec(
    model_types=("gpt2",),
    layers="h",
    # As in the reference library, invertible adapters act on the output of the embedding dropout:
    # token + position embeddings (drop(wte + wpe)), not on the token embeddings alone. The prompt
    # replaces the placeholder tokens' embeddings at wte.
    embeddings="drop",
    prompt_embeddings="wte",
    attention_block=ResidualBlock(holder="attention_adapters", residual=InputOf("ln_1", 0, "input"), sublayer="attn"),
    ffn_block=ResidualBlock(holder="output_adapters", residual=InputOf("ln_2", 0, "input"), sublayer="mlp"),
    linears={"attn_out": "attn.c_proj", "ffn_in": "mlp.c_fc", "ffn_out": "mlp.c_proj"},
    fused_linears=(FusedLinear("attn.c_attn", ("q", "k", "v")),),
    self_attention=SelfAttention("attn"),
    prompt_token_slots=True,
    # As the decoder of an EncoderDecoderModel (add_cross_attention): the reference library adapts the
    # cross-attention with prefix tuning only (cross_prefix); no LoRA, no bottleneck adapters there.
    cross_attention_overrides={"cross_attention": SelfAttention("crossattention", prefix_key="cross_prefix")},
)

# Phi through the reference library's own interface for it, so that adapters it trained on Phi load
# with their outputs: one norm before the attention and the FFN, which both read it (a parallel
# block); bottleneck adapters replace the outputs of self_attn.dense and mlp.fc2, the FFN's without a
# residual input. Prompt and prefix tuning are refused, as there.
PHI_INTERFACE = AdapterModelInterface(
    adapter_methods=["bottleneck", "lora", "reft", "invertible"],
    model_embeddings="embed_tokens",
    model_layers="layers",
    layer_self_attn="self_attn",
    layer_cross_attn=None,
    attn_k_proj="k_proj",
    attn_q_proj="q_proj",
    attn_v_proj="v_proj",
    attn_o_proj="dense",
    layer_intermediate_proj="mlp.fc1",
    layer_output_proj="mlp.fc2",
    layer_pre_self_attn="input_layernorm",
)
PHI = PHI_INTERFACE.to_spec("phi")

# -- Decoders the reference library has no models for (no file format to match) ---------------------
# LoRA roles follow the reference's plugin interface for gated MLPs, as in QWEN: intermediate LoRA on
# the up projection, output LoRA on the down projection.
_UP_DOWN = {"ffn_in": "mlp.up_proj", "ffn_out": "mlp.down_proj"}

# Llama's blocks and module names. Granite scales each sub-layer's output by residual_multiplier
# after the sub-layer returns it (x + m * h): a bottleneck adapter's change of h is scaled with it,
# as any change of the sub-layer's output would be. Gemma and Granite scale the embeddings after
# embed_tokens; the prompt replaces placeholder embeddings before that scaling, like a token's.
LLAMA_LAYOUT = dataclasses.replace(
    QWEN,
    model_types=(
        "ernie4_5",
        "gemma",
        "granite",
        "helium",
        "hunyuan_v1_dense",
        "ministral",
        "olmo",
        "seed_oss",
        "smollm3",
    ),
)

# Arcee: Llama's blocks with an ungated MLP (down(relu(up(x))^2)).
ARCEE = dataclasses.replace(QWEN, model_types=("arcee",), linears={**_ATTENTION, **_UP_DOWN})

# StarCoder 2: Llama's blocks with a plain MLP (c_fc, then c_proj).
STARCODER2 = dataclasses.replace(
    QWEN, model_types=("starcoder2",), linears={**_ATTENTION, "ffn_in": "mlp.c_fc", "ffn_out": "mlp.c_proj"}
)

# GLM: Llama's blocks with gate and up projections fused into one linear ([gate | up]); intermediate
# LoRA adapts the fused linear as a whole (as PEFT does when it targets gate_up_proj).
_GATE_UP = {"ffn_in": "mlp.gate_up_proj", "ffn_out": "mlp.down_proj"}
GLM = dataclasses.replace(QWEN, model_types=("glm",), linears={**_ATTENTION, **_GATE_UP})

# GLM-4 norms both sides of each sub-layer, as Gemma 2 does:
#   x + post_self_attn_layernorm(self_attn(input_layernorm(x)))
#   x + post_mlp_layernorm(mlp(post_attention_layernorm(x)))
GLM4 = ModelSpec(
    model_types=("glm4",),
    layers="layers",
    embeddings="embed_tokens",
    attention_block=ResidualBlock(
        holder="attention_adapters",
        residual=InputOf("input_layernorm", 0, "hidden_states"),
        sublayer="post_self_attn_layernorm",
    ),
    ffn_block=ResidualBlock(
        holder="output_adapters",
        residual=InputOf("post_attention_layernorm", 0, "hidden_states"),
        sublayer="post_mlp_layernorm",
    ),
    linears={**_ATTENTION, **_GATE_UP},
    self_attention=SelfAttention("self_attn"),
    prompt_token_slots=True,
)

# OLMo 2, OLMo 3 and EXAONE 4 normalise each sub-layer's output and no input:
#   x + post_attention_layernorm(self_attn(x)), then x + post_feedforward_layernorm(mlp(x)).
# x is the sub-layer's own input; h leaves the norm after it.
POST_SUBLAYER_NORM = ModelSpec(
    model_types=("exaone4", "olmo2", "olmo3"),
    layers="layers",
    embeddings="embed_tokens",
    attention_block=ResidualBlock(
        holder="attention_adapters",
        residual=InputOf("self_attn", 0, "hidden_states"),
        sublayer="post_attention_layernorm",
    ),
    ffn_block=ResidualBlock(
        holder="output_adapters", residual=InputOf("mlp", 0, "x"), sublayer="post_feedforward_layernorm"
    ),
    linears={**_ATTENTION, **_UP_DOWN, **_GATE},
    self_attention=SelfAttention("self_attn"),
    prompt_token_slots=True,
)


def _phi3_for_checkpoint(spec: ModelSpec, base_model: nn.Module) -> ModelSpec:
    config = base_model.config
    if config.num_key_value_heads != config.num_attention_heads:
        # Unequal q/k/v widths: no LoRA role on qkv_proj (a LoRA config asking for q, k or v names them
        # as undeclared); the FFN and o_proj keep theirs.
        return dataclasses.replace(spec, fused_linears=())
    return spec


# Phi-3: Llama's blocks with dropout on each sub-layer's output (h leaves the dropout), q/k/v in one
# linear ([q | k | v]) and gate/up in another. LoRA reads the fused q/k/v as three equal slices, which
# is the model's layout when every query head has its own key/value head (Phi-3-mini, Phi-3.5-mini);
# with grouped-query attention (Phi-3-medium) k and v are narrower than q, and LoRA on the fused
# projection is refused (_phi3_for_checkpoint).
PHI3 = ModelSpec(
    model_types=("phi3",),
    layers="layers",
    embeddings="embed_tokens",
    attention_block=ResidualBlock(
        holder="attention_adapters",
        residual=InputOf("input_layernorm", 0, "hidden_states"),
        sublayer="resid_attn_dropout",
    ),
    ffn_block=ResidualBlock(
        holder="output_adapters",
        residual=InputOf("post_attention_layernorm", 0, "hidden_states"),
        sublayer="resid_mlp_dropout",
    ),
    linears={"attn_out": "self_attn.o_proj", **_GATE_UP},
    fused_linears=(FusedLinear("self_attn.qkv_proj", ("q", "k", "v")),),
    self_attention=SelfAttention("self_attn"),
    prompt_token_slots=True,
    specialize=_phi3_for_checkpoint,
)


# Mixture-of-experts decoders: Llama's blocks with a sparse MoE block as the FFN sub-layer. Bottleneck
# adapters, prefix and prompt tuning and ReFT act around the MoE block as around a dense MLP. The
# experts keep their weights in stacked 3-D parameters, not linear layers, so the FFN takes no LoRA
# (a LoRA config with intermediate_lora or output_lora is refused naming the declared roles): LoRA
# adapts the attention. Qwen2-MoE's shared expert is made of linear layers, but it runs on the
# flattened tokens of the batch, where per-example compositions (BatchSplit, Parallel) cannot tell
# the examples apart; it takes no LoRA either.
MOE = dataclasses.replace(QWEN, model_types=("mixtral", "olmoe", "qwen2_moe", "qwen3_moe"), linears=dict(_ATTENTION))

# Cohere and Cohere 2 run attention and FFN in parallel on one norm: x + attn(ln(x)) + mlp(ln(x)),
# the layout of GPT-J (see GPTJ for what each adapter sees).
COHERE = ModelSpec(
    model_types=("cohere", "cohere2"),
    layers="layers",
    embeddings="embed_tokens",
    attention_block=ResidualBlock(
        holder="attention_adapters", residual=InputOf("input_layernorm", 0, "hidden_states"), sublayer="self_attn"
    ),
    ffn_block=ResidualBlock(
        holder="output_adapters",
        residual=(InputOf("input_layernorm", 0, "hidden_states"), OutputOf("self_attn")),
        sublayer="mlp",
    ),
    linears={**_ATTENTION, **_UP_DOWN, **_GATE},
    self_attention=SelfAttention("self_attn"),
    prompt_token_slots=True,
)


def _parallel_residual(spec: ModelSpec, base_model: nn.Module, parallel_ffn: ResidualBlock) -> ModelSpec:
    """The spec for a checkpoint that runs attention and FFN in parallel (``use_parallel_residual``)."""
    if getattr(base_model.config, "use_parallel_residual", False):
        return dataclasses.replace(spec, ffn_block=parallel_ffn)
    return spec


_STABLELM_PARALLEL_FFN = ResidualBlock(
    holder="output_adapters",
    residual=(InputOf("input_layernorm", 0, "hidden_states"), OutputOf("self_attn")),
    sublayer="dropout",
)
_GPT_NEOX_PARALLEL_FFN = ResidualBlock(
    holder="output_adapters",
    residual=(InputOf("input_layernorm", 0, "input"), OutputOf("post_attention_dropout")),
    sublayer="post_mlp_dropout",
)

# StableLM: Llama's blocks with dropout after the MLP; with use_parallel_residual (StableLM 2 12B)
# attention and FFN both read input_layernorm: x + attn(ln(x)) + mlp(ln(x)).
STABLELM = dataclasses.replace(
    QWEN,
    model_types=("stablelm",),
    ffn_block=ResidualBlock(
        holder="output_adapters", residual=InputOf("post_attention_layernorm", 0, "hidden_states"), sublayer="dropout"
    ),
    specialize=functools.partial(_parallel_residual, parallel_ffn=_STABLELM_PARALLEL_FFN),
)

# GPT-NeoX (Pythia): x + attn(ln1(x)) + mlp(ln2(x)) with use_parallel_residual (the default and every
# published checkpoint), else x + attn(ln1(x)) then + mlp(ln2(.)). q/k/v are one linear whose heads
# interleave q, k and v; LoRA reads it as three contiguous slices named q, k, v, as the reference
# library reads any fused projection (its interface mode does so for GPT-NeoX): each slice is still a
# low-rank update of the projection (merging is exact), but it spans parts of queries, keys and values.
GPT_NEOX = ModelSpec(
    model_types=("gpt_neox",),
    layers="layers",
    embeddings="embed_in",
    attention_block=ResidualBlock(
        holder="attention_adapters",
        residual=InputOf("input_layernorm", 0, "input"),
        sublayer="post_attention_dropout",
    ),
    ffn_block=ResidualBlock(
        holder="output_adapters", residual=InputOf("post_attention_layernorm", 0, "input"), sublayer="post_mlp_dropout"
    ),
    linears={"attn_out": "attention.dense", "ffn_in": "mlp.dense_h_to_4h", "ffn_out": "mlp.dense_4h_to_h"},
    fused_linears=(FusedLinear("attention.query_key_value", ("q", "k", "v")),),
    self_attention=SelfAttention("attention"),
    prompt_token_slots=True,
    specialize=functools.partial(_parallel_residual, parallel_ffn=_GPT_NEOX_PARALLEL_FFN),
)

SPECS = (
    LLAMA,
    QWEN,
    GEMMA,
    GPTJ,
    GPT2,
    PHI,
    LLAMA_LAYOUT,
    ARCEE,
    STARCODER2,
    GLM,
    GLM4,
    POST_SUBLAYER_NORM,
    PHI3,
    MOE,
    COHERE,
    STABLELM,
    GPT_NEOX,
)
