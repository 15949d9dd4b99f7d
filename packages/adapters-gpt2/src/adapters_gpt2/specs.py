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
# gate_proj gets no LoRA (as in the reference).
LLAMA = ModelSpec(
    model_types=("llama", "mistral"),
    layers="layers",
    embeddings="embed_tokens",
    attention_block=_PRE_NORM_ATTENTION,
    ffn_block=_PRE_NORM_FFN,
    linears={**_ATTENTION, "ffn_in": "mlp.down_proj", "ffn_out": "mlp.up_proj"},
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
    linears={**_ATTENTION, "ffn_in": "mlp.up_proj", "ffn_out": "mlp.down_proj"},
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
    linears={**_ATTENTION, "ffn_in": "mlp.up_proj", "ffn_out": "mlp.down_proj"},
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

SPECS = (LLAMA, QWEN, GEMMA, GPTJ, GPT2, PHI)
