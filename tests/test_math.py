"""Each method against its definition, computed independently on small tensors.

Expected values use only ``torch.nn.functional`` and the model's own weights; the library's
output comes from a full forward pass with the adapter active.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_bert

import adapters
from adapters.testing import assert_close, randomize_adapter


@pytest.fixture
def inputs():
    # No padding: the attention sub-blocks are recomputed here without a mask.
    return {"input_ids": torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))}


def _layer_input_and_attention(model, inputs):
    """Hidden states entering the last layer and that layer's attention sub-block output."""
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True)
    return outputs.hidden_states[-2], outputs.last_hidden_state


def _ffn_parts(layer, attention_output):
    inter = F.gelu(F.linear(attention_output, layer.intermediate.dense.weight, layer.intermediate.dense.bias))
    h = F.linear(inter, layer.output.dense.weight, layer.output.dense.bias)
    return h


def _ln(layer_norm, t):
    return F.layer_norm(t, layer_norm.normalized_shape, layer_norm.weight, layer_norm.bias, layer_norm.eps)


def _attention_output(model, layer, x, inputs):
    # The attention sub-block is untouched by FFN adapters: take it from the model itself.
    with torch.no_grad():
        return layer.attention(x)[0]


def _bottleneck(adapter, t, activation):
    down = adapter.adapter_down[0]
    return F.linear(activation(F.linear(t, down.weight, down.bias)), adapter.adapter_up.weight, adapter.adapter_up.bias)


def _adapted_last_layer(config, inputs):
    """Model output with adapter "a" active, and the last layer with its input."""
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", config=config, set_active=True)
    randomize_adapter(model, "a")
    layer = model.encoder.layer[-1]
    x_layer, got = _layer_input_and_attention(model, inputs)
    return model, layer, x_layer, got


def _ffn_block_case(config, inputs):
    """(adapted output, FFN input x, FFN output h before the residual, last layer)."""
    model, layer, x_layer, got = _adapted_last_layer(config, inputs)
    x = _attention_output(model, layer, x_layer, inputs)
    return got, x, _ffn_parts(layer, x), layer


def test_seq_bn_is_pfeiffer_adapter(inputs):
    """seq_bn: out = LN(h + x + up(relu(down(LN(h + x)))))."""
    got, x, h, layer = _ffn_block_case("seq_bn", inputs)
    ln = layer.output.LayerNorm
    expected = _ln(ln, h + x + _bottleneck(layer.output.adapters["a"], _ln(ln, h + x), F.relu))
    assert_close(got, expected)


@pytest.mark.parametrize("scaling", [1.0, 0.5])
def test_seq_bn_inference_and_autograd_paths_agree(inputs, scaling):
    """Without autograd the up-projection is written over its input; with it, a fresh tensor (same values)."""
    model, _, _, got = _adapted_last_layer(f"seq_bn[scaling={scaling}]", inputs)
    model.train_adapter("a")
    model.eval()
    with_grad = model(**inputs).last_hidden_state
    assert with_grad.requires_grad
    assert_close(with_grad.detach(), got)


def test_par_bn_is_scaled_parallel_adapter(inputs):
    """par_bn: out = LN(h + x + 4.0 * up(relu(down(x)))) with x the FFN input."""
    got, x, h, layer = _ffn_block_case("par_bn", inputs)
    expected = _ln(layer.output.LayerNorm, h + x + 4.0 * _bottleneck(layer.output.adapters["a"], x, F.relu))
    assert_close(got, expected)


def test_double_seq_bn_wraps_both_sub_blocks(inputs):
    """double_seq_bn (Houlsby): out = LN(h + swish-adapter(h) + x) after attention and after the FFN."""
    _, layer, x_layer, got = _adapted_last_layer("double_seq_bn", inputs)
    with torch.no_grad():
        context = layer.attention.self(x_layer)[0]
    attn = layer.attention.output
    h1 = F.linear(context, attn.dense.weight, attn.dense.bias)
    a1 = _ln(attn.LayerNorm, h1 + _bottleneck(attn.adapters["a"], h1, F.silu) + x_layer)
    h2 = _ffn_parts(layer, a1)
    expected = _ln(layer.output.LayerNorm, h2 + _bottleneck(layer.output.adapters["a"], h2, F.silu) + a1)
    assert_close(got, expected)


def test_lora_adds_scaled_low_rank_update(inputs):
    """LoRA on q and v: W x + b + (alpha / r) * B A x; checked on the query projection's output."""
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("a", config="lora[r=4,alpha=12]", set_active=True)
    randomize_adapter(model, "a")
    query = model.encoder.layer[0].attention.self.query
    lora = query.loras["a"]
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(3))
    expected = x @ query.weight.T + query.bias + (12 / 4) * (x @ lora.lora_A.T @ lora.lora_B.T)
    with torch.no_grad():
        assert_close(query(x), expected)
    # and the merged weight is W + scaling * B A (up to rounding: the library multiplies in another order)
    merged = query.weight + 3.0 * lora.lora_B @ lora.lora_A
    model.merge_adapter("a")
    assert_close(query.weight, merged)
    with torch.no_grad():
        assert_close(query(x), expected)
