"""Model types no plugin names, adapted through the layout :func:`adapters.init` infers from them.

Each runs the whole conformance suite (training, saving and reloading LoRA, bottleneck and the other
methods, every composition block) on a tiny random model: pre-norm decoders (Apertus, whose norms
are named attention_layernorm / feedforward_layernorm; Nemotron, with LayerNorm1P and a squared-ReLU
MLP; Persimmon, with q/k/v in one linear), norms after the sub-layers around a mixture of experts
(FlexOlmo), parallel attention and FFN on one norm (Falcon with a fused q/k/v).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import (
    ApertusConfig,
    ApertusModel,
    FalconConfig,
    FalconModel,
    FlexOlmoConfig,
    FlexOlmoModel,
    NemotronConfig,
    NemotronModel,
    OPTConfig,
    OPTModel,
    PersimmonConfig,
    PersimmonModel,
)

import adapters
from adapters import UnsupportedModelError
from adapters.plugins.inference import infer_spec
from adapters.testing import ModelConformanceSuite

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    vocab_size=100,
)
IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
FACTORIES = {
    "apertus": lambda: ApertusModel(ApertusConfig(**TINY, **IDS, max_position_embeddings=64)),
    "nemotron": lambda: NemotronModel(NemotronConfig(**TINY, **IDS)),
    # Four experts with widths of four floats' multiples (transformers' grouped expert matmul wants them).
    "flex_olmo": lambda: FlexOlmoModel(FlexOlmoConfig(**TINY, **IDS, num_experts=4, num_experts_per_tok=2)),
    # q/k/v in one linear whose heads interleave them (no LoRA slices: the FFN and dense take LoRA).
    "persimmon": lambda: PersimmonModel(
        PersimmonConfig(**{**TINY, "num_key_value_heads": None}, **IDS, max_position_embeddings=64)
    ),
    # Falcon's q/k/v are one linear (multi_query=False: three equal thirds, which LoRA can slice).
    "falcon": lambda: FalconModel(
        FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=100, multi_query=False)
    ),
}


@pytest.fixture(autouse=True)
def _inferred_layouts_warn_once_each() -> None:
    # Every model the suite builds is adapted through an inferred layout, which warns (tested below).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "No installed adapters plugin supports", UserWarning)
        yield


class TestInferredLayouts(ModelConformanceSuite):
    model_factories = FACTORIES
    # What the inferred layouts refuse: prompt tuning always (an inferred layout does not know where a
    # prompt may enter the model), prefix tuning where the attention does not call transformers'
    # attention interface (Falcon's before transformers 5.25).
    # FlexOlmo's experts are stacked 3-D weights, not linear layers: LoRA configs that adapt the FFN are refused.
    refused = {model_type: tuple(infer_spec(make()).spec.refused_methods) for model_type, make in FACTORIES.items()}
    refused["flex_olmo"] += ("lora-lora_all_linears", "lora-ia3", "lora-dora", "lora-vera")


def test_init_warns_with_what_it_inferred() -> None:
    model = FACTORIES["flex_olmo"]()
    with pytest.warns(UserWarning, match=r"inferred its layout: .*x \+ post_attention_layernorm\(self_attn\(x\)\)"):
        adapters.init(model)
    assert model.adapters_state.spec.attention_block.sublayer == "post_attention_layernorm"


def test_parallel_blocks_are_recognised() -> None:
    spec = infer_spec(FACTORIES["falcon"]()).spec
    assert spec.attention_block.residual == spec.ffn_block.residual  # one norm feeds both sub-layers
    assert infer_spec(FACTORIES["falcon"]()).spec.fused_linears[0].path == "self_attention.query_key_value"
    # Multi-query attention: k and v are narrower than q, so LoRA's equal thirds would cut across them.
    multi_query = FalconModel(FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=100))
    inferred = infer_spec(multi_query)
    assert not inferred.spec.fused_linears and "q" not in inferred.spec.linears
    assert "fuses q, k and v of unequal sizes" in inferred.describe()


def test_a_model_no_layout_fits_is_refused_with_what_was_looked_for() -> None:
    model = OPTModel(
        OPTConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            ffn_dim=48,
            num_attention_heads=4,
            word_embed_proj_dim=32,
        )
    )
    with pytest.raises(
        UnsupportedModelError,
        match=r"(?s)No installed adapters plugin supports model_type 'opt'.*"
        r"Inferring its layout failed too: .*feed-forward module named one of",
    ):
        adapters.init(model)
    assert not hasattr(model, "adapters_state")


@torch.no_grad()
def test_the_probe_leaves_the_model_as_it_was() -> None:
    model = FACTORIES["apertus"]().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    infer_spec(model)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_inspect_prints_python_that_builds_the_inferred_spec(capsys) -> None:
    """``python -m adapters.inspect apertus``: the printed ModelSpec is the one adapters.init infers."""
    from adapters.inspect import main, tiny_config

    assert main(["apertus"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# apertus: inferred")
    assert "# check: no active adapter: identical outputs" in printed
    assert "# check: zero-initialised adapters: lora identical, bn identical" in printed
    namespace: dict = {}
    exec(printed, namespace)  # the module's output is Python a plugin author pastes
    torch.manual_seed(0)
    twin = ApertusModel(tiny_config(ApertusConfig()))
    assert namespace["SPEC"] == infer_spec(twin).spec


def test_a_gated_ffn_declares_its_gate_and_an_ungated_one_none() -> None:
    from transformers import LlamaConfig, LlamaModel

    gated = infer_spec(LlamaModel(LlamaConfig(**TINY, **IDS))).spec
    assert gated.linears["ffn_gate"] == "mlp.gate_proj" and gated.linears["ffn_in"] == "mlp.up_proj"
    assert "ffn_gate" not in infer_spec(FACTORIES["apertus"]()).spec.linears
