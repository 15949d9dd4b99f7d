"""``adapters.init(model, spec=ModelSpec(...))``: a model type no plugin supports, with the user's layout.

OPT (no plugin of this repository claims ``opt``) is a pre-LN decoder whose FFN linears sit in the
layer itself. The expected outputs come from the definitions, computed here by hand: LoRA adds
``B A x * alpha / r`` to a projection's output, and a bottleneck in a pre-LN block adds
``up(act(down(h)))`` to the sub-layer output ``h``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import OPTConfig, OPTModel

import adapters
from adapters import UnsupportedModelError
from adapters.plugins import InputOf, ModelSpec, ResidualBlock, SelfAttention
from adapters.testing import assert_close, randomize_adapter

OPT = ModelSpec(
    model_types=("opt",),
    layers="decoder.layers",
    embeddings="decoder.embed_tokens",
    attention_block=ResidualBlock(
        holder="attention_adapters", residual=InputOf("self_attn_layer_norm", 0, "hidden_states"), sublayer="self_attn"
    ),
    ffn_block=ResidualBlock(holder="output_adapters", residual=InputOf("final_layer_norm", 0, "input"), sublayer="fc2"),
    linears={
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "attn_out": "self_attn.out_proj",
        "ffn_in": "fc1",
        "ffn_out": "fc2",
    },
    self_attention=SelfAttention("self_attn"),
)


def _model() -> OPTModel:
    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, ffn_dim=48, num_attention_heads=4,
        max_position_embeddings=32, word_embed_proj_dim=32, dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    return OPTModel(config).eval()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(1))


def test_no_plugin_supports_opt_without_a_spec() -> None:
    with pytest.raises(UnsupportedModelError, match="'opt'"):
        adapters.init(_model())


def test_lora_on_a_spec_model_adds_its_update_to_the_projection(ids: torch.Tensor) -> None:
    model = _model()
    with torch.no_grad():
        plain = model(ids).last_hidden_state
    adapters.init(model, spec=OPT)
    model.add_adapter("a", config="lora[r=4,alpha=8]")
    randomize_adapter(model, "a")
    model.set_active_adapters("a")
    lora = model.decoder.layers[0].self_attn.q_proj
    x = torch.randn(3, 32)
    # q_proj computes W x + b + (x A^T B^T) * alpha / r with the adapter's own A and B.
    a, b = (p for name, p in sorted(lora.named_parameters()) if "lora_" in name)
    (a, b) = (a, b) if a.shape[0] == 4 else (b, a)
    expected = torch.nn.functional.linear(x, lora.weight, lora.bias) + x @ a.T @ b.T * (8 / 4)
    with torch.no_grad():
        assert_close(lora(x), expected)
        adapted = model(ids).last_hidden_state
    assert not torch.allclose(adapted, plain, atol=1e-4)
    model.set_active_adapters(None)
    with torch.no_grad():
        assert torch.equal(model(ids).last_hidden_state, plain)  # no active adapter: the model's own code


def test_bottleneck_on_a_spec_model_closes_the_ffn_block_it_names(ids: torch.Tensor) -> None:
    # The spec's FFN block: x enters final_layer_norm, h leaves fc2; the layer's output becomes the
    # adapter's block output of that (h, x) (bottleneck math itself: tests/test_math_bottleneck_family.py).
    model = _model()
    adapters.init(model, spec=OPT)
    model.add_adapter("b", config="seq_bn[reduction_factor=4]")
    randomize_adapter(model, "b")
    model.set_active_adapters("b")
    layer = model.decoder.layers[1]
    seen = {}
    hooks = [
        layer.final_layer_norm.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].clone())),
        layer.register_forward_hook(lambda m, i, o: seen.setdefault("y", (o[0] if isinstance(o, tuple) else o))),
    ]
    with torch.no_grad():
        model(ids)
        for hook in hooks:
            hook.remove()
        x = seen["x"]
        normed = torch.nn.functional.layer_norm(
            x, x.shape[-1:], layer.final_layer_norm.weight, layer.final_layer_norm.bias, layer.final_layer_norm.eps
        )
        # fc1 and fc2 by their weights: calling fc2 itself would run the adapter's hook on it.
        inner = layer.activation_fn(torch.nn.functional.linear(normed, layer.fc1.weight, layer.fc1.bias))
        h = torch.nn.functional.linear(inner, layer.fc2.weight, layer.fc2.bias)
        adapter = model.adapters_state.modules_of("b")["decoder.layers.1.output_adapters.adapters.b"]
        expected = adapter.block_output(h.clone(), x.clone(), None)
    assert_close(seen["y"].reshape(expected.shape), expected)
    assert not torch.allclose(expected, x + h, atol=1e-4)  # the adapter changed the block


def test_a_spec_that_does_not_fit_names_each_wrong_path_and_changes_nothing() -> None:
    model = _model()
    wrong = ModelSpec(model_types=("opt",), layers="decoder.layers", linears={"q": "self_attn.query"})
    with pytest.raises(UnsupportedModelError, match=r"linears\['q'\].*self_attn\.query"):
        adapters.init(model, spec=wrong)
    assert not hasattr(model, "adapters_state") and type(model) is OPTModel
    with pytest.raises(UnsupportedModelError, match="does not fit"):
        adapters.init(model, spec=ModelSpec(model_types=("opt",), layers="decoder.blocks"))
    assert not hasattr(model, "adapters_state")
