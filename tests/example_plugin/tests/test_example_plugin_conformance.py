"""The core's conformance suite over the example plugin's tiny transformer (found through its entry point).

A standalone plugin package also enables the suite's pytest plugin in its ``tests/conftest.py``
(``pytest_plugins = ["adapters.testing.conformance"]``, which registers the suite's marker). This
folder sits under the repository's ``tests/``, where a conftest.py of its own would shadow the
``conftest`` module the cross-package tests import, so it has none; the suite runs without it.
"""

from __future__ import annotations

from adapters.testing import ModelConformanceSuite
from adapters_example_plugin import TinyTransformerConfig, TinyTransformerModel


class TestTinyTransformer(ModelConformanceSuite):
    model_factories = {
        "tiny_transformer": lambda: TinyTransformerModel(TinyTransformerConfig(hidden_size=32, num_hidden_layers=2)),
    }
    # Refused by the plugin's ModelSpec.refused_methods: the suite checks the AdapterConfigError.
    refused = {"tiny_transformer": {"prefix_tuning"}}
