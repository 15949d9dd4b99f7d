"""The configuration of the tiny transformer: its own ``model_type``, so save/load and Auto classes work."""

from __future__ import annotations

from transformers import PreTrainedConfig


class TinyTransformerConfig(PreTrainedConfig):
    """Sizes of a :class:`~adapters_example_plugin.modeling.TinyTransformerModel`.

    Example:
        >>> from adapters_example_plugin import TinyTransformerConfig
        >>> config = TinyTransformerConfig(hidden_size=32, num_hidden_layers=2)
        >>> config.model_type
        'tiny_transformer'
    """

    model_type = "tiny_transformer"

    def __init__(
        self,
        vocab_size: int = 100,
        hidden_size: int = 32,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        intermediate_size: int = 64,
        max_position_embeddings: int = 64,
        layer_norm_eps: float = 1e-5,
        hidden_dropout: float = 0.0,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        pad_token_id: int | None = 0,
        **kwargs,
    ) -> None:
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
            )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        super().__init__(pad_token_id=pad_token_id, **kwargs)
