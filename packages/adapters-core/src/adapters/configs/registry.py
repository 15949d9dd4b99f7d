"""Resolve configs from names, shorthand strings, dicts and files.

Shorthand grammar (REFERENCE §2): ``name[key=value,...]`` with ``|`` joining several into a
:class:`ConfigUnion`, e.g. ``"lora[r=4]|seq_bn[reduction_factor=8]"``. Names and config
classes come from the registered adapter methods (see :mod:`adapters.plugins`).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import AdapterConfigError
from .base import AdapterConfig
from .checks import check_nesting
from .union import ConfigUnion


def _named_configs() -> dict[str, AdapterConfig]:
    from ..plugins.manager import get_registry
    from .union import UNION_NAMES

    named = dict(get_registry().config_names)
    for name, union in UNION_NAMES.items():
        named.setdefault(name, union())
    return named


def _architecture_classes() -> dict[str | None, type[AdapterConfig]]:
    from ..plugins.manager import get_registry

    return get_registry().config_architectures


def config_from_dict(config: Mapping[str, Any]) -> AdapterConfig:
    """Build the right config class for a dict, using its ``architecture`` key."""
    if not isinstance(config, Mapping):
        raise AdapterConfigError(f"An adapter config is a dict of fields, got {type(config).__name__}.")
    # Unions nest configs: a hostile dict could nest them until the recursion below overflows.
    check_nesting(config)
    architecture = config.get("architecture")
    if architecture == "union":
        return ConfigUnion.from_dict(dict(config))
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
    return configs[0] if len(configs) == 1 else ConfigUnion(*configs)


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
            from ..io.jsonfile import read_json

            data = read_json(Path(path))
            resolved = config_from_dict(data.get("config", data) if isinstance(data, dict) else data)
        else:
            resolved = parse_config_string(path)
    else:
        raise AdapterConfigError(f"Cannot build an adapter config from {type(config).__name__}.")
    return resolved.replace(**overrides) if overrides else resolved
