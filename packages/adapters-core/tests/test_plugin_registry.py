"""The plugin registry: who supports which model type, and what happens when two plugins claim one."""

from __future__ import annotations

import pluggy
import pytest

from adapters import PluginConflictError
from adapters.plugins import ModelSpec, hookimpl, hookspecs
from adapters.plugins.manager import Registry, get_registry, register_plugin

TINY = ModelSpec(model_types=("tiny-a", "tiny-b"), layers="layers")


class _Plugin:
    def __init__(self, *specs: ModelSpec) -> None:
        self.specs = list(specs)

    @hookimpl
    def adapters_model_specs(self) -> list[ModelSpec]:
        return self.specs


def _manager(**plugins: _Plugin) -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    for name, plugin in plugins.items():
        manager.register(plugin, name=name)
    return manager


def test_each_model_type_records_the_plugin_that_supports_it() -> None:
    registry = Registry(_manager(first=_Plugin(TINY), second=_Plugin(ModelSpec(model_types=("other",), layers="h"))))
    assert registry.spec_owners == {"tiny-a": "first", "tiny-b": "first", "other": "second"}
    assert registry.model_specs["tiny-b"] is TINY


def test_two_plugins_claiming_one_model_type_is_an_error_naming_both() -> None:
    rival = ModelSpec(model_types=("tiny-b",), layers="blocks")
    with pytest.raises(PluginConflictError, match=r"'tiny-b': '(first|rival)' and '(first|rival)'.*[Uu]ninstall"):
        Registry(_manager(first=_Plugin(TINY), rival=_Plugin(rival)))


def test_one_plugin_may_list_a_model_type_in_several_specs() -> None:
    # Its own later spec wins (a plugin may refine a family for one type); only rivals conflict.
    refined = ModelSpec(model_types=("tiny-b",), layers="blocks")
    registry = Registry(_manager(first=_Plugin(TINY, refined)))
    assert registry.model_specs["tiny-b"] is refined


def test_register_plugin_refuses_a_rival_and_keeps_the_registry() -> None:
    before = get_registry()
    model_type, owner = next(iter(sorted(before.spec_owners.items())))
    rival = _Plugin(ModelSpec(model_types=(model_type,), layers="layers"))
    with pytest.raises(PluginConflictError, match=rf"{model_type!r}.*{owner!r}.*'rival'"):
        register_plugin(rival, name="rival")
    after = get_registry()
    assert after is before and after.spec_owners[model_type] == owner
    assert not after.plugin_manager.is_registered(rival)
