"""Immutable adapter configurations that also behave as read-only mappings.

The reference library treats a config both as an object (``config.r``) and as a dict
(``config["r"]``); published ``adapter_config.json`` files are plain dicts of the fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from ..errors import AdapterConfigError
from .checks import Rule, check_fields


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
    #: Range and value-set checks per field, beyond the type its annotation gives (see :mod:`.checks`);
    #: merged along the class hierarchy.
    field_rules: ClassVar[Mapping[str, Rule]] = {}

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
        from .registry import load_config

        return load_config(config, **overrides)

    def __post_init__(self) -> None:
        # Every field is type- and range-checked (configs come from files anyone may write); lists
        # from JSON become tuples, so that a frozen config is hashable and truly immutable.
        check_fields(self)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):
                object.__setattr__(self, field.name, tuple(value))
