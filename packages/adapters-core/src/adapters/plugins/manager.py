"""Loads plugins (built-ins and entry points) once and indexes what they provide."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import json
import shlex
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pluggy

from ..errors import PluginConflictError, UnsupportedModelError
from . import hookspecs
from .spec import ModelSpec

if TYPE_CHECKING:
    from ..configs.base import AdapterConfig
    from ..heads.conversion import StaticHead

#: The core's own plugins, loaded by name like pytest's default plugins: the manager sits in the
#: bottom layer and knows no method; the methods (a layer above) register through the same hooks
#: as any installed plugin package.
BUILTIN_PLUGINS: tuple[str, ...] = ("adapters.methods.builtin",)

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
        #: Which plugin (its registered name) provides the spec of each model type.
        self.spec_owners: dict[str, str] = {}
        # Each plugin's specs separately, to know who claims what: a model type has one owner.
        for impl in plugin_manager.hook.adapters_model_specs.get_hookimpls():
            for spec in impl.function() or ():
                for model_type in spec.model_types:
                    owner = self.spec_owners.get(model_type)
                    if owner is not None and owner != impl.plugin_name:
                        raise PluginConflictError(
                            f"Two installed adapters plugins support model_type {model_type!r}: {owner!r} and "
                            f"{impl.plugin_name!r}, and neither may silently replace the other. Uninstall the "
                            "package of one of them (pip uninstall), or do not register the second one."
                        )
                    self.model_specs[model_type] = spec
                    self.spec_owners[model_type] = impl.plugin_name
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

    @functools.cached_property
    def static_heads(self) -> dict[str, StaticHead]:
        """Static head class name -> its conversion to a flexible head, from every plugin (on first use:
        plugins build them with :mod:`adapters.heads`, which imports transformers' output classes)."""
        merged: dict[str, StaticHead] = {}
        # pluggy calls the most recently registered plugin first: the plugin registered first wins.
        for mapping in self.plugin_manager.hook.adapters_static_heads():
            merged.update(mapping)
        return merged

    def plugin_names(self) -> list[str]:
        return sorted(name for name, _ in self.plugin_manager.list_name_plugin() if name)

    def spec_for(self, model_type: str) -> ModelSpec:
        if model_type in self.model_specs:
            return self.model_specs[model_type]
        raise UnsupportedModelError(self.unsupported_message(model_type))

    def unsupported_message(self, model_type: str) -> str:
        """Why no spec is registered for ``model_type``, with the command or route that adds one."""
        hint = next((pkg for pkg, types in KNOWN_PACKAGES.items() if model_type in types), None)
        if hint and _is_installed(hint):
            # The family's package is there but does not cover this type yet (GPT-2 in adapters-gpt2).
            install = f"The installed `{hint}` does not support it yet; a newer release may."
        elif hint:
            install = plugin_install_hint(hint)
        else:
            install = (
                "No known plugin covers it: name its modules with adapters.init(model, "
                "interface=AdapterModelInterface(...)) (or spec=ModelSpec(...)), or write a plugin "
                "(docs/writing-a-model-plugin.md)."
            )
        return (
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


def core_direct_url() -> dict | None:
    """How adapters-core was installed: its PEP 610 ``direct_url.json``, or ``None``.

    ``None`` when it came from a package index (no such file) or the file cannot be read. A local
    folder gives ``{"url": "file:///.../packages/adapters-core", "dir_info": {...}}``, a git
    checkout ``{"url": ..., "vcs_info": {"vcs": "git", "commit_id": ...}, "subdirectory": ...}``.
    """
    try:
        text = importlib.metadata.distribution("adapters-core").read_text("direct_url.json")
        data = json.loads(text) if text else None
    except (importlib.metadata.PackageNotFoundError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def plugin_install_command(package: str) -> str | None:
    """A pip command that installs the plugin ``package`` from where adapters-core itself came from.

    The plugins are on no package index (``pip install adapters-gpt2`` fails). A core installed
    from a local folder (``.../packages/adapters-core``, editable or not) gives ``pip install -e``
    of the sibling folder, if it is there; one installed from a VCS URL gives the same repository,
    commit and ``subdirectory``. Anything else (a wheel, an index): ``None``.
    """
    origin = core_direct_url() or {}
    url = origin.get("url")
    vcs_info = origin.get("vcs_info")
    if isinstance(url, str) and isinstance(vcs_info, dict) and vcs_info.get("vcs"):
        # pip's form: "name @ <vcs>+<url>@<commit>#subdirectory=<path in the repository>"
        core_subdirectory = PurePosixPath(origin.get("subdirectory") or "packages/adapters-core")
        subdirectory = (core_subdirectory.parent / package).as_posix()
        commit = vcs_info.get("commit_id") or vcs_info.get("requested_revision")
        source = f"{vcs_info['vcs']}+{url}" + (f"@{commit}" if commit else "")
        return f'pip install "{package} @ {source}#subdirectory={subdirectory}"'
    if isinstance(url, str) and url.startswith("file:") and "dir_info" in origin:
        sibling = Path(url2pathname(urlsplit(url).path)).parent / package
        if (sibling / "pyproject.toml").is_file():
            return f"pip install -e {shlex.quote(str(sibling))}"
    return None


def plugin_install_hint(package: str) -> str:
    """The sentence of the unsupported-model error that says how to install ``package``."""
    command = plugin_install_command(package)
    if command is not None:
        return f"Install the plugin package `{package}`: {command}"
    return (
        f"Install the plugin package `{package}` from the repository adapters-core came from (the plugins "
        f'are not on a package index), as the README\'s section "Install" shows; in a clone of it: '
        f"pip install -e packages/{package}"
    )


def _is_installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def create_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the built-in plugins and (``load_entry_points``) the installed packages."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
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
    new = not pm.is_registered(plugin)
    if new:
        pm.register(plugin, name=name)
    try:
        _registry = Registry(pm)
    except PluginConflictError:
        if new:
            pm.unregister(plugin)  # refused: the registry stays as it was
        raise
