"""A tiny pre-LN transformer encoder, written here rather than taken from transformers.

Each layer is ``x = x + attention(attention_norm(x))`` then ``x = x + mlp(mlp_norm(x))``, with the
residual additions inline in the layer's ``forward`` (no module sees ``h + x``), a fused ``qkv``
projection (``[q | k | v]``, each ``hidden_size`` rows) and attention through torch's
``scaled_dot_product_attention``. These are the shapes a plugin has to describe from the outside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput

from .configuration import TinyTransformerConfig


class TinyEmbeddings(nn.Module):
    """Token plus learned absolute position embeddings."""

    def __init__(self, config: TinyTransformerConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        positions = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
        return self.dropout(inputs_embeds + self.position_embeddings(positions))


class TinyAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection."""

    def __init__(self, config: TinyTransformerConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.attention_dropout = config.attention_dropout
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, hidden = hidden_states.shape
        # (3, batch, heads, length, head_dim): rows [0, hidden) are q, then k, then v.
        q, k, v = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        dropout = self.attention_dropout if self.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout)
        return self.dropout(self.out_proj(context.transpose(1, 2).reshape(batch, length, hidden)))


class TinyMLP(nn.Module):
    def __init__(self, config: TinyTransformerConfig) -> None:
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc_out(F.gelu(self.fc_in(hidden_states))))


class TinyTransformerLayer(GradientCheckpointingLayer):
    """One pre-LN layer; the residual additions happen here, inline."""

    def __init__(self, config: TinyTransformerConfig) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = TinyAttention(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = TinyMLP(config)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = hidden_states + self.attention(self.attention_norm(hidden_states), attention_mask)
        return hidden_states + self.mlp(self.mlp_norm(hidden_states))


class TinyTransformerPreTrainedModel(PreTrainedModel):
    config_class = TinyTransformerConfig
    base_model_prefix = "tiny_transformer"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TinyTransformerLayer"]


class TinyTransformerModel(TinyTransformerPreTrainedModel):
    """The encoder: embeddings, pre-LN layers, a final LayerNorm.

    Example:
        >>> import torch
        >>> from adapters_example_plugin import TinyTransformerConfig, TinyTransformerModel
        >>> model = TinyTransformerModel(TinyTransformerConfig())
        >>> model(torch.tensor([[5, 6, 7]])).last_hidden_state.shape
        torch.Size([1, 3, 32])
    """

    def __init__(self, config: TinyTransformerConfig) -> None:
        super().__init__(config)
        self.embeddings = TinyEmbeddings(config)
        self.layers = nn.ModuleList(TinyTransformerLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput | tuple[torch.Tensor]:
        hidden_states = self.embeddings(input_ids=input_ids, inputs_embeds=inputs_embeds)
        mask = None
        if attention_mask is not None:
            # (batch, 1, 1, keys), True where a key may be attended to. Built after the embeddings,
            # so a mask lengthened for inserted positions (prompt tuning) matches the sequence.
            mask = attention_mask[:, None, None, :].to(torch.bool)
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask)
        hidden_states = self.norm(hidden_states)
        if return_dict is False:
            return (hidden_states,)
        return BaseModelOutput(last_hidden_state=hidden_states)
