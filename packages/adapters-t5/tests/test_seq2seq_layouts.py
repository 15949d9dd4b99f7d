"""Per-checkpoint layouts: T5 with a gated FFN, T5EncoderModel, EncoderDecoderModel's sub-models, Whisper."""

from __future__ import annotations

import pytest
import torch
from tiny_seq2seq import _T5, EXTRA, VOCAB, encoder_decoder_config, seq2seq_inputs
from transformers import AlbertConfig, BertConfig, EncoderDecoderConfig, EncoderDecoderModel, T5Config, T5EncoderModel

import adapters
from adapters import BnConfig, LoRAConfig
from adapters.errors import AdapterConfigError, UnsupportedModelError
from adapters.testing import assert_close, randomize_adapter


def _keys(model: torch.nn.Module, name: str) -> list[str]:
    return sorted(key for key, _ in model.named_parameters() if f".{name}." in key)


def test_gated_t5_lora_adapts_wi_1_as_the_reference() -> None:
    model = EXTRA["t5-gated"][0]()
    adapters.init(model)
    model.add_adapter("l", config=LoRAConfig(intermediate_lora=True))
    ffn = [key for key in _keys(model, "l") if "DenseReluDense" in key]
    # Two encoder and two decoder layers, each its value projection wi_1 (never the gate wi_0).
    assert len(ffn) == 8 and all(".DenseReluDense.wi_1.loras.l." in key for key in ffn)


@pytest.mark.parametrize("gated", [False, True])
def test_t5_encoder_model_has_the_encoder_stack_only(gated: bool) -> None:
    torch.manual_seed(0)
    config = T5Config(**_T5, feed_forward_proj="gated-gelu" if gated else "relu")
    model = T5EncoderModel(config).eval()
    adapters.init(model)
    assert [path for path, _ in model.named_modules() if path.endswith("block")] == ["encoder.block"]
    inputs = seq2seq_inputs(2, 6, 1, torch.Generator().manual_seed(0))
    inputs.pop("decoder_input_ids")
    plain = model(**inputs).last_hidden_state
    for name, config_ in (("bn", "seq_bn"), ("l", LoRAConfig(intermediate_lora=True)), ("p", "prefix_tuning")):
        model.add_adapter(name, config=config_)
        randomize_adapter(model, name)
        model.set_active_adapters(name)
        assert not torch.allclose(model(**inputs).last_hidden_state, plain, atol=1e-4), name
    assert all(key.startswith("encoder.block.") for key in _keys(model, "bn") + _keys(model, "l"))
    # Prompt tuning extends the encoder's own mask (no decoder to take it).
    model.add_adapter("prompt", config="prompt_tuning", set_active=True)
    assert model(**inputs).last_hidden_state.shape[1] == 6 + 10


def test_encoder_decoder_numbers_layers_across_its_sub_models() -> None:
    model = EXTRA["encoder-decoder"][1]()
    adapters.init(model)
    # The reference numbers each sub-model from 0; here leave_out names encoder 0..1, decoder 2..3.
    model.add_adapter(
        "bn",
        config=BnConfig(
            mh_adapter=False, output_adapter=True, reduction_factor=4, non_linearity="relu", leave_out=[0, 3]
        ),
    )
    layers = sorted({key.split(".adapters.")[0] for key in _keys(model, "bn")})
    assert layers == ["decoder.bert.encoder.layer.0.output", "encoder.encoder.layer.1.output"]


def test_bert_decoder_cross_attention_takes_mh_adapter_bottlenecks_and_attention_lora() -> None:
    model = EXTRA["encoder-decoder"][1]()
    adapters.init(model)
    model.add_adapter("bn", config="double_seq_bn")
    model.add_adapter("l", config=LoRAConfig(attn_matrices=["q", "v"]))
    assert sum(".crossattention.output.adapters.bn." in key for key in _keys(model, "bn")) == 2 * 4
    assert sum(".crossattention.self." in key for key in _keys(model, "l")) == 2 * 2 * 2
    # cross_adapter places nothing there: the reference's BERT decoders have no such block.
    with pytest.raises(AdapterConfigError, match="cross_adapter=True"):
        model.add_adapter(
            "cross",
            config=BnConfig(
                mh_adapter=False, output_adapter=False, cross_adapter=True, reduction_factor=4, non_linearity="relu"
            ),
        )


def test_gpt2_decoder_cross_attention_takes_prefixes_only() -> None:
    model = EXTRA["encoder-decoder-gpt2"][1]()
    adapters.init(model)
    model.add_adapter("l", config=LoRAConfig(attn_matrices=["q", "k", "v"]))
    model.add_adapter("p", config="prefix_tuning")
    assert not any("crossattention" in key for key in _keys(model, "l"))
    groups = {key.split(".p.")[1].split(".")[0] for key in _keys(model, "p")}
    assert groups == {"encoder_prefix", "self_prefix", "cross_prefix"}


def test_encoder_decoder_refuses_sub_models_it_cannot_compose() -> None:
    # ALBERT's spec iterates its shared layer groups itself.
    encoder = AlbertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    decoder = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    decoder.is_decoder, decoder.add_cross_attention = True, True
    model = EncoderDecoderModel(EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder))
    with pytest.raises(UnsupportedModelError, match="cannot be a part of a composed model"):
        adapters.init(model)


@pytest.mark.parametrize("label", ["whisper", "encoder-decoder"])
def test_prompt_tuning_is_refused_with_the_reason(label: str) -> None:
    model = EXTRA[label][1]()
    adapters.init(model)
    with pytest.raises(AdapterConfigError, match="prefix tuning"):
        model.add_adapter("prompt", config="prompt_tuning")


@torch.no_grad()
def test_whisper_invertible_adapter_acts_on_the_encoder_output_as_the_reference() -> None:
    model = EXTRA["whisper"][1]()
    inputs = EXTRA["whisper"][2](2, 0, 3, torch.Generator().manual_seed(0))
    plain = model(**inputs).encoder_last_hidden_state
    adapters.init(model)
    only_invertible = BnConfig(
        mh_adapter=False,
        output_adapter=False,
        reduction_factor=4,
        non_linearity="relu",
        inv_adapter="nice",
        inv_adapter_reduction_factor=2,
    )
    model.add_adapter("inv", config=only_invertible)
    randomize_adapter(model, "inv")
    model.set_active_adapters("inv")
    out = model(**inputs, output_hidden_states=True)
    # The output of the encoder's final LayerNorm is transformed ...
    invertible = model.model.invertible_adapters["inv"]
    assert_close(out.encoder_last_hidden_state, invertible(plain))
    # ... and the LM head reads the decoder's output as it is (no inverse), as in the reference.
    assert_close(out.logits, model.proj_out(out.decoder_hidden_states[-1]))


def test_encoder_decoder_config_builder_is_a_bert_pair() -> None:
    config = encoder_decoder_config("bert")
    assert (config.encoder.model_type, config.decoder.model_type) == ("bert", "bert")
    assert config.decoder.add_cross_attention
