"""``hotswap_adapter``: another saved adapter's weights copied into an existing adapter, in place.

The adapter keeps its modules and parameter tensors (new values only), so a compiled model runs the
new weights without recompiling: dynamo's counter of compiled frames stays at one. Outputs equal
eager's with the other adapter active.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo
from conftest import tiny_bert
from torch._dynamo.testing import CompileCounter
from transformers import BertModel

import adapters
from adapters import AdapterConfigError, AdapterError, LoRAConfig
from adapters.testing import assert_close, randomize_adapter


def bert() -> BertModel:
    """conftest's tiny BERT, ready for adapters."""
    model = tiny_bert()
    adapters.init(model)
    return model


def inputs() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))}


def output(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs()).last_hidden_state


@pytest.mark.parametrize("config", ["lora", "seq_bn", "prefix_tuning"])
def test_hotswap_copies_the_weights_in_place_and_a_compiled_model_does_not_recompile(tmp_path, config) -> None:
    model = bert()
    for seed, name in enumerate(("live", "next")):
        model.add_adapter(name, config=config)
        randomize_adapter(model, name, seed=seed)
    model.save_adapter(tmp_path / "next", "next")
    model.set_active_adapters("next")
    expected = output(model)
    model.delete_adapter("next")
    model.set_active_adapters("live")
    tensors = {n: p for n, p in model.named_parameters() if ".live." in n}

    dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    before = output(compiled)
    model.hotswap_adapter("live", tmp_path / "next")
    after = output(compiled)
    assert counter.frame_count == 1, "the compiled model recompiled after the hot swap"
    assert_close(after, expected, msg="the compiled model after the swap against eager with the other adapter")
    assert not torch.allclose(before, after), "the swap changed nothing"
    assert all(p is dict(model.named_parameters())[n] for n, p in tensors.items()), "parameters were replaced"
    assert set(model.adapters_state.configs) == {"live"} and model.active_adapters.flatten() == ["live"]


def test_hotswap_refuses_another_config_and_a_merged_adapter(tmp_path) -> None:
    model = bert()
    model.add_adapter("live", config=LoRAConfig(r=4))
    model.add_adapter("wider", config=LoRAConfig(r=8))
    randomize_adapter(model, "live")
    model.save_adapter(tmp_path / "wider", "wider")
    model.set_active_adapters("live")
    before = output(model)
    with pytest.raises(AdapterConfigError, match="differ in"):
        model.hotswap_adapter("live", tmp_path / "wider")
    assert torch.equal(output(model), before) and set(model.adapters_state.configs) == {"live", "wider"}
    model.merge_adapter("live")
    with pytest.raises(AdapterError, match="reset_adapter"):
        model.hotswap_adapter("live", tmp_path / "wider")
