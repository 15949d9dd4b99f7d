"""Which installed model types support which adapter methods and composition blocks.

:func:`supported_models` reads the installed plugins (their ``ModelSpec``\\ s and the registered
methods); :func:`render_markdown` turns the result into the README's "Supported models" tables.
From the command line::

    python -m adapters.support_matrix                    # print the tables
    python -m adapters.support_matrix --write README.md  # replace the tables between the markers

Only the spec's static ``refused_methods`` are listed; a plugin that refuses more for some
checkpoints in ``adapters_post_init`` (BEiT with a relative position bias) says so when
``add_adapter`` is called.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Iterable, Sequence

from .composition import Average, BatchSplit, Fuse, Parallel, Split, Stack
from .plugins.manager import get_registry

# Column order of the block table (the README's order: the simple blocks first, Fuse last).
BLOCK_ORDER = (Stack, Split, BatchSplit, Parallel, Average, Fuse)
# The cell marks: a check mark and an en dash, as in the README's other tables.
YES, NO = "\u2713", "\u2013"
START_MARKER = "<!-- support-matrix:start (generated: python -m adapters.support_matrix, see above) -->"
END_MARKER = "<!-- support-matrix:end -->"


@dataclasses.dataclass(frozen=True)
class MethodSupport:
    """An adapter method a model type accepts, and the composition blocks its adapters may sit in.

    Attributes:
        method: ``AdapterMethod.name`` (``"lora"``, ``"bottleneck"``, ...).
        blocks: names of the composition blocks, in the order of :data:`BLOCK_ORDER`.
    """

    method: str
    blocks: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ModelSupport:
    """What one installed ``model_type`` supports.

    Example:
        >>> import adapters
        >>> bert = next(m for m in adapters.supported_models() if m.model_type == "bert")  # doctest: +SKIP
        >>> bert.plugin, bert.method_names  # doctest: +SKIP
        ('adapters-bert', ('bottleneck', 'lora', 'prefix_tuning', 'prompt_tuning', 'reft'))

    Attributes:
        model_type: the transformers ``config.model_type``.
        plugin: the distribution that provides the model spec (``"adapters-bert"``); for a plugin
            registered at run time from no installed distribution, its registered name.
        methods: every registered method the spec does not refuse, in registration order.
        refused: ``(method, reason)`` for each method the spec refuses (``ModelSpec.refused_methods``).
    """

    model_type: str
    plugin: str
    methods: tuple[MethodSupport, ...]
    refused: tuple[tuple[str, str], ...] = ()

    @property
    def method_names(self) -> tuple[str, ...]:
        return tuple(support.method for support in self.methods)


def supported_models() -> list[ModelSupport]:
    """Every model type the installed plugins support, sorted by plugin, then model type.

    Example:
        >>> import adapters
        >>> for model in adapters.supported_models():  # doctest: +SKIP
        ...     print(model.model_type, model.plugin, model.method_names)
    """
    registry = get_registry()
    owners = _spec_owners(registry.plugin_manager)
    methods = registry.methods
    models = []
    for model_type, spec in registry.model_specs.items():
        refused = spec.refused_methods
        models.append(
            ModelSupport(
                model_type=model_type,
                plugin=owners.get(id(spec), "unknown"),
                methods=tuple(
                    MethodSupport(method.name, _block_names(method.supported_blocks))
                    for method in methods
                    if method.name not in refused
                ),
                refused=tuple((name, refused[name]) for name in sorted(refused)),
            )
        )
    return sorted(models, key=lambda model: (model.plugin, model.model_type))


def _block_names(blocks: Iterable[type]) -> tuple[str, ...]:
    blocks = set(blocks)
    return tuple(block.__name__ for block in BLOCK_ORDER if block in blocks)


def _spec_owners(plugin_manager) -> dict[int, str]:
    """``id(spec)`` to the distribution name of the plugin that returned it."""
    distributions = {id(plugin): dist.project_name for plugin, dist in plugin_manager.list_plugin_distinfo()}
    owners: dict[int, str] = {}
    for impl in plugin_manager.hook.adapters_model_specs.get_hookimpls():
        owner = distributions.get(id(impl.plugin)) or _distribution_of(impl.plugin) or impl.plugin_name
        # Plugins return module-level spec constants, so each call yields the registry's objects.
        for spec in impl.function():
            owners.setdefault(id(spec), owner)
    return owners


def _distribution_of(plugin: object) -> str | None:
    # A plugin registered at run time (register_plugin) from an installed package.
    package = getattr(plugin, "__name__", type(plugin).__module__).partition(".")[0]
    names = importlib.metadata.packages_distributions().get(package)
    return names[0] if names else None


# -- Markdown ------------------------------------------------------------------------------------
def render_markdown(models: Sequence[ModelSupport] | None = None) -> str:
    """The support tables as Markdown: model types x methods, then methods x composition blocks.

    ``models`` defaults to :func:`supported_models`. Refused methods are listed under the first
    table with the plugin's reason.
    """
    models = supported_models() if models is None else list(models)
    methods = _method_columns(models)
    lines = [
        "| model type | plugin | " + " | ".join(f"`{name}`" for name, _ in methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for model in models:
        cells = [YES if name in model.method_names else NO for name, _ in methods]
        lines.append(f"| `{model.model_type}` | {model.plugin} | " + " | ".join(cells) + " |")
    # One line per (method, reason), naming every model type that gives it.
    refusals: dict[tuple[str, str], list[str]] = {}
    for model in models:
        for method, reason in model.refused:
            refusals.setdefault((method, reason.rstrip(".")), []).append(model.model_type)
    if refusals:
        lines += ["", "Refused on purpose (`add_adapter` raises an `AdapterConfigError` with this reason):", ""]
        for (method, reason), model_types in refusals.items():
            lines.append(f"- {', '.join(f'`{t}`' for t in model_types)}: `{method}`, because {reason}.")
    lines += ["", "| method | " + " | ".join(block.__name__ for block in BLOCK_ORDER) + " |"]
    lines.append("|---|" + "---|" * len(BLOCK_ORDER))
    for name, blocks in methods:
        cells = [YES if block.__name__ in blocks else NO for block in BLOCK_ORDER]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _method_columns(models: Sequence[ModelSupport]) -> list[tuple[str, tuple[str, ...]]]:
    """Every registered method with its blocks, in registration order (also methods every model refuses)."""
    found = {support.method: support.blocks for model in models for support in model.methods}
    return [(m.name, found.get(m.name, _block_names(m.supported_blocks))) for m in get_registry().methods]


def replace_between_markers(text: str, table: str) -> str:
    """``text`` with the part between :data:`START_MARKER` and :data:`END_MARKER` replaced by ``table``."""
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"the file has no {START_MARKER!r} ... {END_MARKER!r} section to replace")
    return text[: start + len(START_MARKER)] + "\n\n" + table + "\n" + text[end:]


__all__ = [
    "BLOCK_ORDER",
    "MethodSupport",
    "ModelSupport",
    "render_markdown",
    "replace_between_markers",
    "supported_models",
]
