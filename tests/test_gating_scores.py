"""``output_adapter_gating_scores=True``: the gates of UniPELT-style adapters, computed by hand and compared."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_bert, tiny_bert_classifier
from torch import nn

import adapters
from adapters import LoRAConfig, PrefixTuningConfig, SeqBnConfig
from adapters.core.context import adapter_hooks
from adapters.testing import assert_close


def _gate(linear: nn.Linear, x: torch.Tensor) -> np.ndarray:
    """The gate value per example by the definition: mean over positions of sigmoid(W x + b)."""
    with torch.no_grad():
        gate = torch.sigmoid(x @ linear.weight.T + linear.bias).mean(dim=1)
    return (gate[:, 0] if gate.shape[1] == 1 else gate).numpy()  # one value per example for one-output gates


def _perturb_gates(model: nn.Module) -> None:
    # Fresh gates sit near sigmoid(0) = 0.5 everywhere; noise makes every score distinct.
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "gate" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)


def _capture(model: nn.Module) -> tuple[dict, list]:
    """Per layer: the self-attention input, the attention output and the FFN output projection's output."""
    seen: dict[int, dict[str, torch.Tensor]] = {}
    handles = []
    for idx, layer in enumerate(model.encoder.layer):
        store = seen.setdefault(idx, {})
        handles.append(
            layer.attention.self.register_forward_pre_hook(
                lambda m, a, k, s=store: s.__setitem__("x", (a[0] if a else k["hidden_states"]).detach()),
                with_kwargs=True,
            )
        )
        handles.append(layer.intermediate.register_forward_pre_hook(lambda m, a, s=store: s.__setitem__("att", a[0])))
        handles.append(layer.output.dense.register_forward_hook(lambda m, a, o, s=store: s.__setitem__("ffn", o)))
    return seen, handles


def test_unipelt_scores_equal_the_gates_by_hand(inputs):
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("u", config="unipelt", set_active=True)
    _perturb_gates(model)
    seen, handles = _capture(model)
    with torch.no_grad():
        out = model(**inputs, output_adapter_gating_scores=True)
    for handle in handles:
        handle.remove()
    scores = out.adapter_gating_scores
    assert list(scores) == ["u"] and list(scores["u"]) == [0, 1]
    for idx, layer in enumerate(model.encoder.layer):
        got, tensors = scores["u"][idx], seen[idx]
        # The reference's keys, in the order the gates run.
        assert list(got) == ["selfattn_lora", "self_prefix", "output_adapter"]
        x = tensors["x"]
        # LoRA on q and v: one column per projection, both gated by the projection's input.
        lora = np.column_stack(
            [_gate(layer.attention.self.query.loras["u"].gate, x), _gate(layer.attention.self.value.loras["u"].gate, x)]
        )
        # Prefix tuning: one shared gate from the self-attention's input.
        prefix = _gate(layer.attention.self.prefix_tuning.prefix_gates["u"], x)
        # seq_bn (Pfeiffer): the adapter reads LayerNorm(FFN output + attention output).
        adapter_input = layer.output.LayerNorm(tensors["ffn"] + tensors["att"])
        bottleneck = _gate(layer.output.adapters["u"].gate, adapter_input)
        assert got["selfattn_lora"].shape == (2, 2) and got["self_prefix"].shape == (2,)
        assert got["output_adapter"].shape == (2,)
        for location, expected in (("selfattn_lora", lora), ("self_prefix", prefix), ("output_adapter", bottleneck)):
            assert_close(torch.from_numpy(got[location]), torch.from_numpy(expected), msg=f"{idx} {location}")


def test_locations_and_shapes_of_each_gated_method():
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("p", config=PrefixTuningConfig(prefix_length=3, use_gating=True, shared_gating=False))
    model.add_adapter("b", config=SeqBnConfig(mh_adapter=True, use_gating=True))
    model.add_adapter(
        "l",
        config=LoRAConfig(
            r=2, attn_matrices=("q", "k", "v"), intermediate_lora=True, output_lora=True, use_gating=True
        ),
    )
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12], [3, 4, 5, 6]])
    expected = {
        "p": {"self_prefix": (3, 2)},  # one gate for keys, one for values
        "b": {"mh_adapter": (3,), "output_adapter": (3,)},
        "l": {"selfattn_lora": (3, 3), "intermediate_lora": (3,), "output_lora": (3,)},
    }
    for name, locations in expected.items():
        model.set_active_adapters(name)
        scores = model(ids, output_adapter_gating_scores=True).adapter_gating_scores
        assert list(scores) == [name]  # only the adapters that ran
        for layer in (0, 1):
            assert {k: v.shape for k, v in scores[name][layer].items()} == locations
            assert all(v.dtype == np.float32 for v in scores[name][layer].values())
    # One example: squeezed, but still an array per location (the reference keeps one dimension).
    model.set_active_adapters("b")
    scores = model(ids[:1], output_adapter_gating_scores=True).adapter_gating_scores
    assert scores["b"][0]["output_adapter"].shape == (1,)


def test_tuple_outputs_and_calls_without_the_flag(inputs):
    model = tiny_bert_classifier()
    adapters.init(model)
    model.add_adapter("u", config="unipelt", set_active=True)
    gates = [m for n, m in model.named_modules() if n.endswith("gate") or ".prefix_gates." in n]
    plain = model(**inputs)
    assert "adapter_gating_scores" not in plain
    as_tuple = model(**inputs, output_adapter_gating_scores=True, return_dict=False)
    assert isinstance(as_tuple[-1], dict) and sorted(as_tuple[-1]["u"][1]) == [
        "output_adapter",
        "self_prefix",
        "selfattn_lora",
    ]
    # The recording hooks only read the gates: the same computation.
    assert torch.equal(as_tuple[0], plain.logits)
    # The gates carry hooks only during a call that asks for the scores.
    assert not any(g._forward_hooks for g in gates)


def test_hooks_exist_only_while_a_gated_adapter_does():
    model = tiny_bert()
    adapters.init(model)  # (every initialized model has the hooks opening and closing its passes)
    model.add_adapter("plain", config="seq_bn")
    assert not adapter_hooks(model)
    model.add_adapter("u", config="unipelt")
    model.add_adapter("g", config=LoRAConfig(use_gating=True))
    assert len(adapter_hooks(model)) == 2  # the recorder's pre-hook and forward hook
    model.delete_adapter("u")
    assert len(adapter_hooks(model)) == 2  # "g" is still gated
    model.delete_adapter("g")
    assert not adapter_hooks(model)


@pytest.mark.parametrize("name", ["u", "renamed"])
def test_scores_follow_renamed_and_loaded_adapters(tmp_path, inputs, name):
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("u", config="unipelt")
    _perturb_gates(model)
    model.set_active_adapters("u")
    with torch.no_grad():
        expected = model(**inputs, output_adapter_gating_scores=True).adapter_gating_scores["u"]
    model.save_adapter(str(tmp_path), "u")
    other = tiny_bert()
    adapters.init(other)
    other.load_adapter(str(tmp_path), load_as=name, set_active=True)
    with torch.no_grad():
        got = other(**inputs, output_adapter_gating_scores=True).adapter_gating_scores
    assert list(got) == [name]
    for layer, locations in expected.items():
        for location, value in locations.items():
            # The same gates, saved and loaded back: the same computation.
            np.testing.assert_array_equal(got[name][layer][location], value)
