"""Config classes, the shorthand grammar and config errors (no model needed)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from adapters import (
    AdapterConfig,
    AdapterConfigError,
    BnConfig,
    ConfigUnion,
    DoubleSeqBnConfig,
    LoRAConfig,
    ParBnConfig,
    SeqBnConfig,
)


def test_configs_are_immutable_mappings():
    config = SeqBnConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.reduction_factor = 8
    assert config["reduction_factor"] == 16
    assert dict(config)["original_ln_before"] is True
    assert "architecture" not in config.to_dict()
    assert LoRAConfig().to_dict()["architecture"] == "lora"


@pytest.mark.parametrize(
    "text,cls,field,value",
    [
        ("seq_bn", SeqBnConfig, "reduction_factor", 16),
        ("double_seq_bn", DoubleSeqBnConfig, "non_linearity", "swish"),
        ("par_bn", ParBnConfig, "scaling", 4.0),
        ("scaled_par_bn", ParBnConfig, "scaling", "learned"),
        ("lora", LoRAConfig, "r", 8),
        ("seq_bn[reduction_factor=8]", SeqBnConfig, "reduction_factor", 8),
        ("lora[r=4, alpha=16, attn_matrices=['q','k','v']]", LoRAConfig, "attn_matrices", ("q", "k", "v")),
        ("seq_bn[leave_out=[0,1],non_linearity=gelu]", SeqBnConfig, "leave_out", (0, 1)),
    ],
)
def test_shorthand_grammar(text, cls, field, value):
    config = AdapterConfig.load(text)
    assert type(config) is cls
    assert config[field] == value


def test_pipe_makes_a_union_and_overrides_apply_to_members():
    union = AdapterConfig.load("lora[r=4]|seq_bn[reduction_factor=8]")
    assert isinstance(union, ConfigUnion)
    assert [type(c) for c in union.configs] == [LoRAConfig, SeqBnConfig]
    assert union.configs[0].r == 4 and union.configs[1].reduction_factor == 8
    assert AdapterConfig.load(union.to_dict()).to_dict() == union.to_dict()


def test_union_of_two_configs_at_the_same_place_is_rejected():
    with pytest.raises(AdapterConfigError, match="same place"):
        ConfigUnion(SeqBnConfig(), ParBnConfig())
    ConfigUnion(
        SeqBnConfig(), BnConfig(mh_adapter=True, output_adapter=False, reduction_factor=4, non_linearity="relu")
    )


def test_unknown_name_lists_valid_names():
    with pytest.raises(AdapterConfigError, match=r"Unknown adapter config 'seq_bm'.*seq_bn"):
        AdapterConfig.load("seq_bm")


def test_unknown_field_lists_valid_fields():
    with pytest.raises(AdapterConfigError, match=r"no field.*rank.*Valid fields"):
        AdapterConfig.load("lora[rank=4]")


@pytest.mark.parametrize("bad", ["seq_bn[reduction_factor=8", "lora[r]", "lora|", "seq_bn[init_weights=zeros]"])
def test_malformed_strings_raise_config_errors(bad):
    with pytest.raises(AdapterConfigError):
        AdapterConfig.load(bad)


def test_dict_file_and_override_forms(tmp_path):
    data = LoRAConfig(r=2).to_dict()
    assert AdapterConfig.load(data) == LoRAConfig(r=2)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"config": data}))
    assert AdapterConfig.load(tmp_path) == LoRAConfig(r=2)
    assert AdapterConfig.load(tmp_path / "adapter_config.json", alpha=4).alpha == 4
    assert AdapterConfig.load(SeqBnConfig(), reduction_factor=2).reduction_factor == 2


def test_bottleneck_dict_without_architecture_reads_every_field():
    config = AdapterConfig.load(ParBnConfig().to_dict())
    assert type(config) is BnConfig
    assert config.to_dict() == ParBnConfig().to_dict()


def test_per_layer_reduction_factor():
    config = SeqBnConfig(reduction_factor={"1": 4, "default": 8})
    assert config.reduction_for_layer(1) == 4 and config.reduction_for_layer(0) == 8
