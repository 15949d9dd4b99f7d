"""MAM and UniPELT: unions of methods under one adapter name that train, save and load."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert

import adapters
from adapters import ConfigUnion, LoRAConfig, MAMConfig, ParBnConfig, PrefixTuningConfig, SeqBnConfig, UniPELTConfig
from adapters.testing import randomize_adapter


def test_members_and_shorthands():
    assert MAMConfig().configs == (PrefixTuningConfig(bottleneck_size=800), ParBnConfig())
    assert UniPELTConfig().configs == (
        PrefixTuningConfig(prefix_length=10, use_gating=True),
        SeqBnConfig(reduction_factor=16, use_gating=True),
        LoRAConfig(r=8, use_gating=True),
    )
    assert adapters.AdapterConfig.load("mam") == MAMConfig()
    assert adapters.AdapterConfig.load("unipelt").configs == UniPELTConfig().configs
    # Saved bottleneck configs come back as BnConfig with the same fields (as in the reference).
    assert ConfigUnion.from_dict(MAMConfig().to_dict()).to_dict() == MAMConfig().to_dict()


@pytest.mark.parametrize("config", ["mam", "unipelt"])
def test_union_adapter_acts_trains_and_reloads(config, inputs, tmp_path):
    model = tiny_bert()
    adapters.init(model)
    with torch.no_grad():
        plain = model(**inputs).last_hidden_state
    model.add_adapter("x", config, set_active=True)
    methods = {method.name for method, _ in model.adapters_state.methods_of(model.adapters_state.configs["x"])}
    assert methods == ({"prefix_tuning", "bottleneck"} | ({"lora"} if config == "unipelt" else set()))
    randomize_adapter(model, "x")
    with torch.no_grad():
        adapted = model(**inputs).last_hidden_state
    assert not torch.allclose(adapted, plain, atol=1e-4)
    model.save_adapter(tmp_path, "x")
    fresh = tiny_bert()
    adapters.init(fresh)
    fresh.load_adapter(tmp_path, set_active=True)
    with torch.no_grad():
        # The same base weights and the adapter's tensors saved and loaded back: the same computation.
        assert torch.equal(fresh(**inputs).last_hidden_state, adapted)

    model.train_adapter("x")
    target = torch.randn(plain.shape, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        loss = (model(**inputs).last_hidden_state - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
