"""Where bottleneck adapters act in each decoder block, checked by hand on layer 0.

With ``h`` the value a pre-norm sub-layer adds to the residual stream ``x``, a sequential
bottleneck (``seq_bn`` options: residual before the original norm, no norms of its own, relu) makes
the block output ``bn(h, x) = x + h + up(relu(down(x + h)))``. The expected layer output is
computed below from that formula and the layer's own modules, for an adapter after attention, after
the FFN, and at both places (where the FFN's residual stream already carries the adapted attention).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from tiny_decoders import CONFIGS, base_model
from torch import nn

import adapters
from adapters import SeqBnConfig
from adapters.testing import assert_close, randomize_adapter

PLACES = {
    "attention": SeqBnConfig(mh_adapter=True, output_adapter=False, reduction_factor=4),
    "ffn": SeqBnConfig(reduction_factor=4),
    "both": SeqBnConfig(mh_adapter=True, output_adapter=True, reduction_factor=4),
}


def _attention_h(model_type: str, layer: nn.Module) -> nn.Module:
    """The module whose output is what the attention block adds to the residual stream."""
    if model_type.startswith("gemma"):
        return layer.post_attention_layernorm
    return layer.attn if model_type in ("gptj", "gpt2") else layer.self_attn


def _ffn(model_type: str, layer: nn.Module, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The FFN's contribution, given the layer input x and the stream after attention a."""
    if model_type == "gptj":  # parallel block: the FFN reads the same normed input as attention
        return layer.mlp(layer.ln_1(x))
    if model_type.startswith("gemma"):
        return layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(a)))
    if model_type == "gpt2":
        return layer.mlp(layer.ln_2(a))
    return layer.mlp(layer.post_attention_layernorm(a))


def _bn(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    down, up = module.adapter_down[0], module.adapter_up
    return lambda h, x: x + h + up(torch.relu(down(x + h)))


def _layers(model: nn.Module) -> nn.ModuleList:
    return model.h if hasattr(model, "h") else model.layers


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("model_type", sorted(CONFIGS))
@torch.no_grad()
def test_bottleneck_output_matches_hand_computation(model_type: str, place: str) -> None:
    torch.manual_seed(0)
    model = base_model(model_type).eval()
    layer = _layers(model)[0]
    input_ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        layer.register_forward_pre_hook(lambda m, args, kwargs: seen.update(x=args[0]), with_kwargs=True),
        _attention_h(model_type, layer).register_forward_hook(
            lambda m, args, out: seen.update(h=out[0] if isinstance(out, tuple) else out)
        ),
    ]
    model(input_ids)
    for hook in hooks:
        hook.remove()
    x, h = seen["x"], seen["h"]  # the attention block's inputs do not depend on any adapter of layer 0

    adapters.init(model)
    model.add_adapter("a", config=PLACES[place], set_active=True)
    randomize_adapter(model, "a")
    got: dict[str, torch.Tensor] = {}
    layer.register_forward_hook(lambda m, args, out: got.update(out=out[0] if isinstance(out, tuple) else out))
    model(input_ids)
    model.set_active_adapters(None)  # the hand computation below calls the layer's modules directly

    a = _bn(layer.attention_adapters.adapters["a"])(h, x) if PLACES[place].mh_adapter else x + h
    f = _ffn(model_type, layer, x, a)
    expected = _bn(layer.output_adapters.adapters["a"])(f, a) if PLACES[place].output_adapter else a + f
    assert_close(got["out"], expected)
