"""Where bottleneck adapters sit in RoBERTa-PreLayerNorm's pre-LN blocks (adapters_bert.specs)."""

from __future__ import annotations

import torch
from transformers import RobertaPreLayerNormConfig, RobertaPreLayerNormModel

import adapters
from adapters.testing import assert_close, randomize_adapter

TINY = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=4,
    intermediate_size=37,
    vocab_size=100,
    max_position_embeddings=64,
)


def input_ids() -> torch.Tensor:
    return torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(0))


def test_roberta_prelayernorm_bottleneck_sees_the_unnormalized_residual() -> None:
    # One layer; seq_bn on the FFN block: a = x + attn_out(attn(LN(x))), h = out(inter(LN(a))) before
    # the output module adds a, and the block's output is h + a + up(relu(down(h + a))) (Pfeiffer:
    # residual h, then + a); the model's final LayerNorm follows.
    torch.manual_seed(0)
    model = RobertaPreLayerNormModel(RobertaPreLayerNormConfig(**TINY), add_pooling_layer=False).eval()
    adapters.init(model)
    model.add_adapter("a", config="seq_bn", set_active=True)
    randomize_adapter(model, "a")
    layer = model.encoder.layer[0]
    bottleneck = layer.output.adapters["a"]
    with torch.no_grad():
        x = model.embeddings(input_ids=input_ids())
        a = layer.attention(x)[0]
        h = layer.output.dense(layer.intermediate(a))
        down = bottleneck.adapter_down[0]
        up = bottleneck.adapter_up
        expected = model.LayerNorm(h + a + up(torch.relu(down(h + a))))
        assert_close(model(input_ids()).last_hidden_state, expected)


def test_roberta_prelayernorm_decoder_adapts_its_cross_attention_under_mh_adapter() -> None:
    # As in BERT's decoder layers, mh_adapter places a bottleneck after the self-attention and one
    # after the cross-attention; each reads the pre-LN block's h and its unnormalized residual.
    torch.manual_seed(0)
    config = RobertaPreLayerNormConfig(is_decoder=True, add_cross_attention=True, **TINY)
    model = RobertaPreLayerNormModel(config, add_pooling_layer=False).eval()
    adapters.init(model)
    model.add_adapter("a", config="seq_bn[mh_adapter=True,output_adapter=False]", set_active=True)
    randomize_adapter(model, "a")
    layer = model.encoder.layer[0]
    encoder_states = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))

    def block(adapter: torch.nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return h + x + adapter.adapter_up(torch.relu(adapter.adapter_down[0](h + x)))

    with torch.no_grad():
        x = model.embeddings(input_ids=input_ids())
        attention, cross = layer.attention, layer.crossattention
        h = attention.output.dense(attention.self(attention.LayerNorm(x))[0])  # causal without a mask
        a = block(attention.output.adapters["a"], h, x)
        h = cross.output.dense(cross.self(cross.LayerNorm(a), encoder_hidden_states=encoder_states)[0])
        c = block(cross.output.adapters["a"], h, a)
        expected = model.LayerNorm(layer.output.dense(layer.intermediate(c)) + c)
        got = model(input_ids(), encoder_hidden_states=encoder_states).last_hidden_state
        assert_close(got, expected)
