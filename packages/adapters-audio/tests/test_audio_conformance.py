"""Run the core's conformance suite over the speech encoders (raw-waveform inputs), both layer orders."""

from __future__ import annotations

import torch
from tiny_audio import FACTORIES, SAMPLES_PER_FRAME
from torch import nn

from adapters.plugins.manager import get_registry
from adapters.testing import ModelConformanceSuite
from adapters_audio import SPECS

# Every declared type refuses the same two methods (see adapters_audio.specs.REFUSED).
REFUSED_METHODS = ("prompt_tuning", "reft")


class TestSpeechEncoders(ModelConformanceSuite):
    model_factories = FACTORIES
    refused = {label: REFUSED_METHODS for label in FACTORIES}

    def make_inputs(self, model_type: str, model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A waveform of ``seq_len`` frames per example; the last example is padded by two frames' worth of
        samples (zeros, as the feature extractors pad), so every check also runs with a frame padding mask."""
        samples = self.seq_len * SAMPLES_PER_FRAME
        input_values = torch.randn(self.batch_size, samples, generator=generator)
        attention_mask = torch.ones(self.batch_size, samples, dtype=torch.long)
        attention_mask[-1, -2 * SAMPLES_PER_FRAME :] = 0
        input_values[attention_mask == 0] = 0.0
        return {"input_values": input_values, "attention_mask": attention_mask}


def test_every_declared_model_type_has_a_conformance_factory() -> None:
    declared = {model_type for spec in SPECS for model_type in spec.model_types}
    built = {label: factory().config for label, factory in TestSpeechEncoders.model_factories.items()}
    assert declared <= {config.model_type for config in built.values()}, "a declared model type is never tested"
    # The types whose spec picks a layout per checkpoint run once in each layer order.
    both_orders = {t for spec in SPECS if spec.specialize is not None for t in spec.model_types}
    stable = {c.model_type for c in built.values() if getattr(c, "do_stable_layer_norm", False)}
    assert both_orders <= stable, f"no stable-layer-norm factory for {sorted(both_orders - stable)}"


def test_the_plugin_is_registered_for_every_declared_model_type() -> None:
    registry = get_registry()
    for spec in SPECS:
        for model_type in spec.model_types:
            assert registry.spec_for(model_type) is spec, f"{model_type} is not served by adapters_audio"
