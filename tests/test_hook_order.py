"""Hooks of several methods on one module run in a fixed order (adapters.core.hook_order)."""

from __future__ import annotations

import torch
from transformers import AlbertConfig, AlbertModel

import adapters
from adapters import DoubleSeqBnConfig, LoRAConfig
from adapters.composition import Stack
from adapters.core.hook_order import HookStage, register_staged_forward_hook
from adapters.testing import assert_close


def test_stages_run_in_order_whatever_the_registration_order():
    linear = torch.nn.Linear(2, 2)
    calls = []

    def hook(label):
        return lambda module, args, output: calls.append(label)

    plain = linear.register_forward_hook(hook("read, registered directly"))
    register_staged_forward_hook(linear, hook("read"), HookStage.READ)
    register_staged_forward_hook(linear, hook("replace"), HookStage.REPLACE)
    compute = register_staged_forward_hook(linear, hook("compute"), HookStage.COMPUTE)
    linear(torch.ones(1, 2))
    assert calls == ["compute", "replace", "read, registered directly", "read"]

    # A removed hook leaves nothing behind; a new one takes its stage's place.
    compute.remove()
    plain.remove()
    register_staged_forward_hook(linear, hook("compute again"), HookStage.COMPUTE)
    calls.clear()
    linear(torch.ones(1, 2))
    assert calls == ["compute again", "replace", "read"]
    assert len(linear.__dict__["_adapters_hook_stages"]) == 3


def test_an_update_changes_what_later_stages_see():
    linear = torch.nn.Linear(2, 2)
    seen = []
    linear.register_forward_hook(lambda module, args, output: seen.append(output.detach().clone()))
    register_staged_forward_hook(linear, lambda module, args, output: output + 1.0, HookStage.COMPUTE)
    output = linear(torch.ones(1, 2))
    assert torch.equal(seen[0], output)  # a copy of the very output the model returns


def test_a_bottleneck_reading_h_from_a_linear_sees_the_lora_update():
    # ALBERT's FFN block reads h off ffn_output, the linear output_lora adapts; Houlsby's adapter reads h.
    torch.manual_seed(0)
    config = AlbertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, embedding_size=16,
        vocab_size=100,
    )  # fmt: skip
    model = AlbertModel(config).eval()
    adapters.init(model)
    model.add_adapter("lora", config=LoRAConfig(output_lora=True, selfattn_lora=False, init_weights="bert"))
    model.add_adapter("houlsby", config=DoubleSeqBnConfig())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)
            elif "adapters.houlsby." in name:
                param.add_(torch.randn_like(param) * 0.1)
    ids = torch.randint(5, 90, (2, 7))
    model.set_active_adapters(Stack("lora", "houlsby"))
    # Autograd on, as in training (without it LoRA's update is in place, and a stale h shares it).
    together = model(ids).last_hidden_state.detach()

    # The same LoRA update written into the weight by hand, the bottleneck alone.
    ffn_output = model.encoder.albert_layer_groups[0].albert_layers[0].ffn_output
    with torch.no_grad():
        ffn_output.weight += ffn_output.loras["lora"].delta_weight()
    model.set_active_adapters("houlsby")
    with torch.no_grad():
        by_hand = model(ids).last_hidden_state
    assert_close(together, by_hand)
