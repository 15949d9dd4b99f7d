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


@hookspec
def adapters_model_specs() -> list[ModelSpec]:
    """Return the model families this plugin supports."""


@hookspec
def adapters_methods() -> list[AdapterMethod]:
    """Return adapter methods (config classes, shorthands and layer implementations)."""


@hookspec
def adapters_post_init(model: nn.Module, spec: ModelSpec) -> None:
    """Adjust a model right after ``adapters.init`` (model-specific cases)."""


@hookspec
def adapters_adapter_models() -> Mapping[str, str | type]:
    """Return ``{model_type: AdapterModel class}`` for ``AutoAdapterModel``.

    A class may be given as ``"package.module:ClassName"``, imported only when first used.
    """


@hookspec
def adapters_static_heads() -> Mapping[str, StaticHead]:
    """Return ``{static model class name: StaticHead}``: how checkpoints of such classes (e.g.
    ``LlamaForCausalLM``) convert to flexible heads, beyond the core's built-in table."""
