"""Run the core's conformance suite over every encoder-decoder model type, bare and with its LM head."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from tiny_seq2seq import CONFIGS, EXTRA, base_model, generation_model, model_inputs
from torch import nn

from adapters.testing import ModelConformanceSuite

_REFUSED = {
    # Whisper's audio encoder and EncoderDecoderModel take no prompt (as in the reference library), and
    # no ReFT (its decoder layers would intervene at the encoder's positions).
    **{label: ("reft", "prompt_tuning") for label in EXTRA if label != "t5-gated"},
}


class _Seq2SeqSuite(ModelConformanceSuite):
    refused = _REFUSED
    # As long as the source: ReFT's decoder layers intervene at the positions of the source's last tokens.
    target_len = 7

    def make_inputs(self, model_type: str, model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return model_inputs(model_type, self.batch_size, self.seq_len, self.target_len, generator)

    def output_of(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # The encoder's output, then the decoder's, along the sequence: every check sees both stacks,
        # and prompt positions (encoder side) come first, where AdapterMethod.input_positions expects them.
        outputs = model(**inputs)
        decoder = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs.logits
        encoder = outputs.encoder_last_hidden_state
        # Logits are wider than the hidden states: zero-pad the encoder's to join them.
        encoder = F.pad(encoder, (0, decoder.shape[-1] - encoder.shape[-1]))
        return torch.cat([encoder, decoder], dim=1)


class TestSeq2SeqModels(_Seq2SeqSuite):
    model_factories = {
        **{model_type: functools.partial(base_model, model_type) for model_type in CONFIGS},
        # EncoderDecoderModel has no bare class: TestSeq2SeqGeneration covers it.
        **{label: factories[0] for label, factories in EXTRA.items() if factories[0] is not None},
    }


class TestSeq2SeqGeneration(_Seq2SeqSuite):
    # The suite's output includes the LM logits (through the tied LM head, where the inverse of an
    # invertible adapter acts). Weight keys are relative to the body, so files move between the
    # bare and the head model.
    model_factories = {
        **{model_type: functools.partial(generation_model, model_type) for model_type in CONFIGS},
        **{label: factories[1] for label, factories in EXTRA.items()},
    }

    def make_model(self, model_type: str) -> nn.Module:
        model = super().make_model(model_type)
        # A pre-trained LM head is usually kept frozen: the suite then checks that exactly the adapter trains.
        model.get_output_embeddings().requires_grad_(False)
        return model
