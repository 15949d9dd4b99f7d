"""The hook specifications every plugin implements (project name ``adapters``).

Plugins are modules or objects with functions marked ``@hookimpl``; installed packages expose
them through the ``adapters.plugins`` entry-point group. The core's own methods are plugins too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from collections.abc import Mapping

    from torch import nn

    from ..heads.conversion import StaticHead
    from ..methods.base import AdapterMethod
    from .spec import ModelSpec

PROJECT_NAME = "adapters"
ENTRY_POINT_GROUP = "adapters.plugins"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# Every hook is called on every registered plugin, in pluggy's order (the most recently registered
# first; the core's built-in methods are registered before the installed packages), and returns a
# list of results; none is ``firstresult``: the registry combines them as each docstring says.
# Plugins implement only the hooks they need.


@hookspec
def adapters_model_specs() -> list[ModelSpec]:
    """Return the model families this plugin supports, one :class:`~adapters.plugins.ModelSpec` each.

    Called once when the registry is built (the first ``adapters.init``, ``AutoAdapterModel`` or
    config lookup, and again after ``register_plugin``). Every model type of every spec must be
    claimed by one plugin only: two plugins claiming the same ``model_type`` raise
    :class:`~adapters.errors.PluginConflictError` naming both.
    """


@hookspec
def adapters_methods() -> list[AdapterMethod]:
    """Return adapter methods: each an :class:`~adapters.methods.base.AdapterMethod` instance.

    Called once when the registry is built. The methods of all plugins are concatenated in call
    order; a config is handled by the first method whose ``config_class`` it is an instance of,
    and every method's ``config_names`` (``"seq_bn"`` -> a config) join one table of shorthand
    names, where a name given twice keeps the value of the plugin registered first.
    """


@hookspec
def adapters_post_init(model: nn.Module, spec: ModelSpec) -> None:
    """Adjust a model right after ``adapters.init`` attached the adapter state (model-specific cases).

    Called by every plugin for every ``adapters.init``, with the model and the spec chosen for its
    ``model_type``; implementations return nothing and should act only on models their own specs
    cover (e.g. BEiT's relative position bias).
    """


@hookspec
def adapters_adapter_models() -> Mapping[str, str | type]:
    """Return ``{model_type: AdapterModel class}`` for ``AutoAdapterModel``.

    A class may be given as ``"package.module:ClassName"``, imported only when first used. The
    mappings of all plugins are merged; a model type given twice keeps the plugin registered first.
    """


@hookspec
def adapters_static_heads() -> Mapping[str, StaticHead]:
    """Return ``{static model class name: StaticHead}``: how checkpoints of such classes (e.g.
    ``LlamaForCausalLM``) convert to flexible heads, beyond the core's built-in table.

    The mappings of all plugins are merged (a class given twice keeps the plugin registered
    first) and take precedence over the built-in table.
    """
