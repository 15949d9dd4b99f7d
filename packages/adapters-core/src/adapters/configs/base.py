"""Immutable adapter configurations that also behave as read-only mappings, and their resolution.

The reference library treats a config both as an object (``config.r``) and as a dict
(``config["r"]``); published ``adapter_config.json`` files are plain dicts of the fields.
:func:`load_config` (``AdapterConfig.load``) resolves every accepted form: a config, a dict, a
JSON file, or the shorthand grammar ``name[key=value,...]`` with ``|`` joining several into a
union, e.g. ``"lora[r=4]|seq_bn[reduction_factor=8]"``. Names and config classes come from the
registered adapter methods (:mod:`adapters.plugins`); unions and named unions (``"mam"``) from the
config classes that declare them (``architecture = "union"``, ``shorthand``).
"""

from __future__ import annotations

import ast
import dataclasses
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..errors import AdapterConfigError
from ..files.jsonfile import check_nesting, read_json
from ..plugins.manager import get_registry
from .checks import Rule, check_fields

# Filled as the classes are defined (AdapterConfig.__init_subclass__): the union class
# (architecture "union") and the classes with a shorthand name ("mam" -> MAMConfig).
_UNION_CLASSES: dict[str, type[AdapterConfig]] = {}
_SHORTHAND_CLASSES: dict[str, type[AdapterConfig]] = {}


@dataclasses.dataclass(frozen=True)
class AdapterConfig(Mapping):
    """Base class of every adapter method config.

    Subclasses are frozen dataclasses; ``architecture`` names the method family in the
    on-disk format (``None`` for bottleneck adapters, as in the reference format).

    Example:
        >>> from adapters import LoRAConfig
        >>> config = LoRAConfig(r=4)
        >>> config["r"], config.replace(r=16).r
        (4, 16)
    """

    architecture: ClassVar[str | None] = None
    #: A name for this class's default config in config strings, for configs that no method names
    #: itself (the named unions: ``"mam"``); declared in the class body.
    shorthand: ClassVar[str | None] = None
    #: Range and value-set checks per field, beyond the type its annotation gives (see :mod:`.checks`);
    #: merged along the class hierarchy.
    field_rules: ClassVar[Mapping[str, Rule]] = {}
    # Fields this library has and the reference format does not: written only when not at their
    # default, so every file of a config the reference can express stays readable there.
    written_when_set: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("architecture") == "union":
            _UNION_CLASSES["union"] = cls
        if cls.__dict__.get("shorthand"):
            _SHORTHAND_CLASSES[cls.__dict__["shorthand"]] = cls

    # -- mapping protocol -------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key == "architecture":
            return self.architecture
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    # -- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-ready dict (the ``config`` field of adapter_config.json)."""
        out: dict[str, Any] = {}
        if self.architecture is not None:
            out["architecture"] = self.architecture
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in self.written_when_set and value == field.default:
                continue
            if isinstance(value, AdapterConfig):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[field.name] = value
        return out

    def replace(self, **changes: Any) -> AdapterConfig:
        """Return a copy with some fields changed (configs themselves never change)."""
        self._check_fields(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> AdapterConfig:
        """Build a config of this class from a dict; unknown keys raise a clear error."""
        values = dict(config)
        values.pop("architecture", None)
        cls._check_fields(values)
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.init and f.name not in values and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]  # fmt: skip
        if missing:
            raise AdapterConfigError(f"A {cls.__name__} needs the field(s) {missing}; the config gives none.")
        return cls(**values)

    @classmethod
    def _check_fields(cls, values: Mapping[str, Any]) -> None:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise AdapterConfigError(f"{cls.__name__} has no field(s) {unknown}. Valid fields: {sorted(known)}.")

    @classmethod
    def load(cls, config: Any, **overrides: Any) -> AdapterConfig:
        """Resolve a config from an instance, a dict, a shorthand string or a JSON file path.

        Example:
            >>> from adapters import AdapterConfig
            >>> AdapterConfig.load("seq_bn[reduction_factor=8]").reduction_factor
            8
        """
        return load_config(config, **overrides)

    def __post_init__(self) -> None:
        # Every field is type- and range-checked (configs come from files anyone may write); lists
        # from JSON become tuples, so that a frozen config is hashable and truly immutable.
        check_fields(self)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):
                object.__setattr__(self, field.name, tuple(value))


# -- resolution: names, shorthand strings, dicts and files -----------------------------------
def _named_configs() -> dict[str, AdapterConfig]:
    named = dict(get_registry().config_names)
    for name, union in _SHORTHAND_CLASSES.items():
        named.setdefault(name, union())
    return named


def _architecture_classes() -> dict[str | None, type[AdapterConfig]]:
    return get_registry().config_architectures


def _union(*configs: AdapterConfig) -> AdapterConfig:
    return _UNION_CLASSES["union"](*configs)


def config_from_dict(config: Mapping[str, Any]) -> AdapterConfig:
    """Build the right config class for a dict, using its ``architecture`` key."""
    if not isinstance(config, Mapping):
        raise AdapterConfigError(f"An adapter config is a dict of fields, got {type(config).__name__}.")
    # Unions nest configs: a hostile dict could nest them until the recursion below overflows.
    check_nesting(config)
    architecture = config.get("architecture")
    if architecture == "union":
        return _UNION_CLASSES["union"].from_dict(dict(config))
    classes = _architecture_classes()
    if architecture not in classes:
        raise AdapterConfigError(
            f"Unknown adapter architecture {architecture!r}. Installed methods know "
            f"{sorted(str(a) for a in classes)}; install the plugin that provides it."
        )
    # Bottleneck dicts carry no architecture key and every field, so BnConfig reads them all.
    return classes[architecture].from_dict(config)


def _split_top_level(text: str, sep: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in text:
        if char in "[({":
            depth += 1
        elif char in "])}":
            depth -= 1
        if char == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _parse_value(text: str) -> Any:
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        if text.lower() in ("none", "null"):
            return None
        return text


def _parse_single(text: str) -> AdapterConfig:
    text = text.strip()
    overrides: dict[str, Any] = {}
    name = text
    if "[" in text:
        if not text.endswith("]"):
            raise AdapterConfigError(f"Malformed config string {text!r}: expected name[key=value,...].")
        name, _, body = text[:-1].partition("[")
        for item in _split_top_level(body, ","):
            if not item.strip():
                continue
            key, eq, value = item.partition("=")
            if not eq:
                raise AdapterConfigError(f"Malformed override {item!r} in {text!r}: expected key=value.")
            overrides[key.strip()] = _parse_value(value)
    named = _named_configs()
    name = name.strip()
    if name not in named:
        raise AdapterConfigError(f"Unknown adapter config {name!r}. Valid names: {sorted(named)}.")
    base = named[name]
    return base.replace(**overrides) if overrides else base


def parse_config_string(text: str) -> AdapterConfig:
    """Parse the shorthand grammar into a config (a union when ``|`` is used)."""
    parts = [p for p in _split_top_level(text, "|")]
    if any(not p.strip() for p in parts):
        raise AdapterConfigError(f"Empty member in config string {text!r}.")
    configs = [_parse_single(p) for p in parts]
    return configs[0] if len(configs) == 1 else _union(*configs)


def load_config(config: Any, **overrides: Any) -> AdapterConfig:
    """Resolve any accepted config form, then apply ``overrides``."""
    if config is None:
        raise AdapterConfigError("No adapter config given; pass a name such as 'seq_bn' or a config object.")
    if isinstance(config, AdapterConfig):
        resolved = config
    elif isinstance(config, Mapping):
        resolved = config_from_dict(config)
    elif isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if os.path.isdir(path):
            path = os.path.join(path, "adapter_config.json")
        if os.path.isfile(path):
            data = read_json(Path(path))
            resolved = config_from_dict(data.get("config", data) if isinstance(data, dict) else data)
        else:
            resolved = parse_config_string(path)
    else:
        raise AdapterConfigError(f"Cannot build an adapter config from {type(config).__name__}.")
    return resolved.replace(**overrides) if overrides else resolved
