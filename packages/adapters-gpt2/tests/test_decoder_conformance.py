"""Run the core's conformance suite over every decoder-only model type, bare and with an LM head."""

from __future__ import annotations

import functools

from tiny_decoders import CONFIGS, base_model, causal_lm
from torch import nn

from adapters.testing import ModelConformanceSuite


class TestDecoderModels(ModelConformanceSuite):
    model_factories = {model_type: functools.partial(base_model, model_type) for model_type in CONFIGS}


class TestDecoderCausalLM(ModelConformanceSuite):
    # The suite's output is the first output of the head model: the LM logits. Adapter weight keys
    # are relative to the body (``layers.0...``), so files move between the bare and the head model.
    # One type per spec in adapters_gpt2.specs (the bodies are covered above, every type's LM head by
    # test_decoder_generation and test_decoder_models).
    model_factories = {
        model_type: functools.partial(causal_lm, model_type)
        for model_type in ("llama", "qwen2", "gemma3_text", "gptj", "gpt2")
    }

    def make_model(self, model_type: str) -> nn.Module:
        model = super().make_model(model_type)
        # train_adapter leaves a head trainable (a new task head trains with its adapter); a
        # pre-trained LM head is usually kept frozen, which lets the suite check that exactly the
        # adapter's parameters train.
        model.get_output_embeddings().requires_grad_(False)
        return model
