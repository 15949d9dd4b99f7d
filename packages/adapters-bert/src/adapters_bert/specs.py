"""Where adapters attach in each BERT-family architecture of transformers 5.x."""

from __future__ import annotations

from adapters.plugins import InputOf, ModelSpec, ResidualBlock

# BERT and its copies: post-LN blocks whose output modules take (hidden_states, input_tensor).
BERT_LIKE = ModelSpec(
    model_types=("bert", "roberta", "xlm-roberta", "electra", "bert-generation"),
    layers="encoder.layer",
    attention_block=ResidualBlock(
        holder="attention.output",
        residual=InputOf("attention.output", 1, "input_tensor"),
        sublayer="attention.output.dropout",
        layer_norm="attention.output.LayerNorm",
    ),
    ffn_block=ResidualBlock(
        holder="output",
        residual=InputOf("output", 1, "input_tensor"),
        sublayer="output.dropout",
        layer_norm="output.LayerNorm",
    ),
    linears={
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "attn_out": "attention.output.dense",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
    },
)

SPECS = (BERT_LIKE,)
