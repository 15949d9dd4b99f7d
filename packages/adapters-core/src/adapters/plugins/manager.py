"""Loads plugins (built-ins and entry points) once and indexes what they provide."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping

import pluggy

from ..configs.base import AdapterConfig
from ..errors import UnsupportedModelError
from . import hookspecs
from .spec import ModelSpec

# Which distribution provides which model types, for the "install X" hint of the error message.
KNOWN_PACKAGES: Mapping[str, tuple[str, ...]] = {
    "adapters-bert": (
        "bert",
        "roberta",
        "xlm-roberta",
        "distilbert",
        "albert",
        "electra",
        "deberta",
        "deberta-v2",
        "bert-generation",
        "xmod",
    ),
    "adapters-t5": ("t5", "mt5", "bart", "mbart", "plbart", "encoder-decoder", "whisper"),
    "adapters-gpt2": ("gpt2", "gptj", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text"),
    "adapters-vit": ("vit", "beit", "dinov2", "dinov2_with_registers"),
    "adapters-clip": ("clip", "clip_text_model", "clip_vision_model"),
}


class Registry:
    """What the loaded plugins provide: model specs by type, methods, config names."""

    def __init__(self, plugin_manager: pluggy.PluginManager) -> None:
        self.plugin_manager = plugin_manager
        self.model_specs: dict[str, ModelSpec] = {}
        for specs in plugin_manager.hook.adapters_model_specs():
            for spec in specs:
                for model_type in spec.model_types:
                    self.model_specs[model_type] = spec
        self.methods = [m for methods in plugin_manager.hook.adapters_methods() for m in methods]
        self.config_names: dict[str, AdapterConfig] = {}
        self.config_architectures: dict[str | None, type[AdapterConfig]] = {}
        for method in self.methods:
            self.config_names.update(method.config_names)
            self.config_architectures[method.config_class.architecture] = method.config_class
        # AutoAdapterModel's classes and static-head conversions (adapters.heads).
        self.adapter_models: dict[str, str | type] = {}
        for mapping in plugin_manager.hook.adapters_adapter_models():
            self.adapter_models.update(mapping)
        self.static_heads: dict[str, object] = {}
        for mapping in plugin_manager.hook.adapters_static_heads():
            self.static_heads.update(mapping)

    def plugin_names(self) -> list[str]:
        return sorted(name for name, _ in self.plugin_manager.list_name_plugin() if name)

    def spec_for(self, model_type: str) -> ModelSpec:
        if model_type in self.model_specs:
            return self.model_specs[model_type]
        hint = next((pkg for pkg, types in KNOWN_PACKAGES.items() if model_type in types), None)
        if hint and _is_installed(hint):
            # The family's package is there but does not cover this type yet (GPT-2 in adapters-gpt2).
            install = f"The installed `{hint}` does not support it yet; a newer release may."
        elif hint:
            install = f"Install the plugin package `{hint}` (pip install {hint})."
        else:
            install = "No known plugin covers it; write one (docs/writing-a-model-plugin.md)."
        raise UnsupportedModelError(
            f"No installed adapters plugin supports model_type {model_type!r}. Installed plugins: "
            f"{self.plugin_names()} (model types: {sorted(self.model_specs)}). {install}"
        )

    def method_for(self, config: AdapterConfig):
        for method in self.methods:
            if isinstance(config, method.config_class):
                return method
        raise UnsupportedModelError(
            f"No installed adapter method handles {type(config).__name__}; known methods: "
            f"{[m.name for m in self.methods]}."
        )


def _is_installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def create_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    from ..methods import builtin

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name="adapters.builtin")
    if load_entry_points:
        pm.load_setuptools_entrypoints(hookspecs.ENTRY_POINT_GROUP)
    return pm


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built from installed plugins on first use."""
    global _registry
    if _registry is None:
        _registry = Registry(create_plugin_manager())
    return _registry


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a plugin at run time (tests, notebooks); installed packages load by themselves.

    Example:
        >>> from adapters.plugins import register_plugin
        >>> import my_adapters_plugin  # doctest: +SKIP
        >>> register_plugin(my_adapters_plugin)  # doctest: +SKIP
    """
    global _registry
    pm = get_registry().plugin_manager
    if not pm.is_registered(plugin):
        pm.register(plugin, name=name)
    _registry = Registry(pm)
