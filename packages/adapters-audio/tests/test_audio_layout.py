"""Where bottleneck adapters sit in the two layer orders, computed by hand from the layer's modules.

The conformance suite proves the spec's paths and the methods' behaviour, but a post-LN layout applied
to a stable-layer-norm layer (or the reverse) would pass it too: every path exists in both. Here the
output of an adapted layer is compared with the formula of its own order.
"""

from __future__ import annotations

import pytest
import torch
from tiny_audio import FACTORIES, SAMPLES_PER_FRAME

import adapters
from adapters.testing import assert_close, randomize_adapter
from adapters_audio.specs import POST_LN_BLOCKS, PRE_LN_BLOCKS

# Houlsby adapters on both blocks, reading h (the sub-layer's output) as their own residual, without
# the model's LayerNorm before them: the block output is ``norm?(adapter(h, h) + x)``.
CONFIG = "double_seq_bn"


def _stable(label: str) -> bool:
    return label.endswith("-stable")


@pytest.mark.parametrize("label", sorted(FACTORIES))
def test_specialize_picks_the_blocks_of_the_layer_order(label: str) -> None:
    model = FACTORIES[label]()
    adapters.init(model)
    blocks = PRE_LN_BLOCKS if _stable(label) else POST_LN_BLOCKS
    spec = model.adapters_state.spec
    assert (spec.attention_block, spec.ffn_block) == (blocks["attention_block"], blocks["ffn_block"])


@pytest.mark.parametrize("label", sorted(FACTORIES))
def test_adapted_layer_computes_the_formula_of_its_order(label: str) -> None:
    torch.manual_seed(0)
    model = FACTORIES[label]().eval()
    adapters.init(model)
    model.add_adapter("a", config=CONFIG, set_active=True)
    randomize_adapter(model, "a")
    layer = model.encoder.layers[0]
    seen = {}
    layer.register_forward_hook(lambda module, args, output: seen.update(x=args[0], out=output))
    waveform = torch.randn(2, 7 * SAMPLES_PER_FRAME, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(waveform)
        model.set_active_adapters(None)
        attention = layer.attention_adapters.adapters["a"]
        output = layer.output_adapters.adapters["a"]
        x = seen["x"]
        if _stable(label):
            h = layer.dropout(layer.attention(layer.layer_norm(x))[0])
            x = attention(h, h) + x
            h = layer.feed_forward(layer.final_layer_norm(x))
            expected = output(h, h) + x
        else:
            h = layer.dropout(layer.attention(x)[0])
            x = layer.layer_norm(attention(h, h) + x)
            h = layer.feed_forward(x)
            expected = layer.final_layer_norm(output(h, h) + x)
    assert_close(seen["out"], expected, msg=f"{label}: the adapters do not sit where the layer order puts them")
