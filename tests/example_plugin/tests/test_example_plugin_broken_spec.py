"""A deliberately broken spec fails the conformance suite with readable messages, not bare tracebacks."""

from __future__ import annotations

import dataclasses

import pytest

from adapters.plugins import InputOf, ResidualBlock, hookimpl, register_plugin
from adapters.plugins.manager import Registry, get_registry
from adapters.testing import ModelConformanceSuite
from adapters.testing.conformance import method_cases
from adapters_example_plugin import TINY_TRANSFORMER, TinyTransformerConfig, TinyTransformerModel


class BrokenConfig(TinyTransformerConfig):
    model_type = "tiny_broken"

    def __init__(self, **kwargs) -> None:  # transformers needs the subclass's own __init__
        super().__init__(**kwargs)


# Three mistakes a plugin author makes: a typo in a linear's path, a residual read from a module
# that does not exist, and a padding-mask keyword the forward does not take.
BROKEN = dataclasses.replace(
    TINY_TRANSFORMER,
    model_types=("tiny_broken",),
    linears={**TINY_TRANSFORMER.linears, "ffn_in": "mlp.fc_inn"},
    ffn_block=ResidualBlock(holder="output_adapters", residual=InputOf("mlp_nrm", 0, "input"), sublayer="mlp"),
    padding_mask=InputOf("", 1, "attn_mask"),
)


class BrokenPlugin:
    @hookimpl
    def adapters_model_specs(self):
        return [BROKEN]


class BrokenSuite(ModelConformanceSuite):
    model_factories = {"tiny_broken": lambda: TinyTransformerModel(BrokenConfig())}


@pytest.fixture
def broken_plugin():
    plugin = BrokenPlugin()
    register_plugin(plugin, name="tiny-broken")
    yield
    # Leave the process-wide registry as it was for the other tests.
    manager = get_registry().plugin_manager
    manager.unregister(plugin)
    import adapters.plugins.manager as registry_module

    registry_module._registry = Registry(manager)


def case_named(case_id: str):
    return next(param.values[0] for param in method_cases() if param.id == case_id)


def test_spec_check_names_each_wrong_path(broken_plugin):
    with pytest.raises(AssertionError) as failure:
        BrokenSuite().test_spec_matches_the_model(model_type="tiny_broken")
    message = str(failure.value)
    assert "The plugin's ModelSpec for 'tiny_broken' does not match the model" in message
    assert (
        "ModelSpec.linears['ffn_in'] = 'mlp.fc_inn' is not a module of layer 0 (TinyTransformerLayer): "
        "'mlp' (TinyMLP) has no submodule 'fc_inn'; it has: fc_in, fc_out, dropout." in message
    )
    assert "ModelSpec.ffn_block.residual = 'mlp_nrm'" in message and "it has: attention_norm, attention, mlp_norm" in (
        message
    )
    assert "ModelSpec.padding_mask reads argument 'attn_mask'" in message and "attention_mask" in message


def test_a_check_that_breaks_on_the_spec_reports_the_spec_not_a_traceback(broken_plugin):
    suite = BrokenSuite()
    with pytest.raises(pytest.fail.Exception) as failure:
        suite.test_adds_trainable_parameters(model_type="tiny_broken", case=case_named("lora-lora_all_linears"))
    message = str(failure.value)
    assert message.startswith("test_adds_trainable_parameters raised AttributeError:")
    assert "ModelSpec.linears['ffn_in'] = 'mlp.fc_inn' is not a module of layer 0" in message
    assert not failure.value.pytrace  # pytest prints the message alone


def test_the_correct_spec_has_no_problems():
    model = TinyTransformerModel(TinyTransformerConfig())
    suite = type("Suite", (ModelConformanceSuite,), {"model_factories": {"tiny_transformer": lambda: model}})()
    assert suite.spec_problems("tiny_transformer") == []
