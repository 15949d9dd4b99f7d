"""Phi, declared through the reference library's AdapterModelInterface for it: the conformance suite."""

from __future__ import annotations

from transformers import PhiConfig, PhiForCausalLM, PhiModel

from adapters.testing import ModelConformanceSuite

# Half of each head rotated (partial_rotary_factor), as in the published Phi checkpoints.
PHI = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    vocab_size=100,
    max_position_embeddings=64,
    partial_rotary_factor=0.5,
)


# The interface lists no prompt or prefix tuning (as the reference's); AdapterPlus sets
# original_ln_after=False, which interface placement cannot honour (the reference refuses it too);
# a parallel adapter needs the FFN's residual input, which Phi's interface does not name.
REFUSED = (
    "prompt_tuning",
    "prefix_tuning",
    "bottleneck-adapter_plus",
    "bottleneck-par_bn",
    "bottleneck-scaled_par_bn",
)


class TestPhi(ModelConformanceSuite):
    model_factories = {"phi": lambda: PhiModel(PhiConfig(**PHI))}
    refused = {"phi": REFUSED}


class TestPhiCausalLM(ModelConformanceSuite):
    model_factories = {"phi": lambda: PhiForCausalLM(PhiConfig(**PHI))}
    refused = {"phi": REFUSED}

    def make_model(self, model_type: str):
        model = super().make_model(model_type)
        # A pre-trained LM head stays frozen, so the suite sees exactly the adapter's parameters train.
        model.get_output_embeddings().requires_grad_(False)
        return model
