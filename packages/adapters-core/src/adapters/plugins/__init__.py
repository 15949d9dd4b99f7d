"""The plugin system: hook specifications, model specs and the plugin registry."""

from .compose import SubModels
from .hookspecs import ENTRY_POINT_GROUP, hookimpl, hookspec
from .interface import AdapterModelInterface
from .manager import get_registry, register_plugin
from .spec import (
    LINEAR_ROLES,
    FusedLinear,
    InputOf,
    KVProjections,
    LayerStack,
    ModelSpec,
    OutputOf,
    ReferenceNames,
    ResidualBlock,
    SelfAttention,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "LINEAR_ROLES",
    "AdapterModelInterface",
    "FusedLinear",
    "InputOf",
    "KVProjections",
    "LayerStack",
    "ModelSpec",
    "OutputOf",
    "ReferenceNames",
    "ResidualBlock",
    "SelfAttention",
    "SubModels",
    "get_registry",
    "hookimpl",
    "hookspec",
    "register_plugin",
]
