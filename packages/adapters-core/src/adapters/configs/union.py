"""Several method configs under one adapter name (e.g. MAM = prefix tuning + parallel bottleneck)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

from ..errors import AdapterConfigError
from .base import AdapterConfig, config_from_dict
from .bottleneck import BnConfig, ParBnConfig, SeqBnConfig
from .lora import LoRAConfig
from .prefix_tuning import PrefixTuningConfig


@dataclasses.dataclass(frozen=True, init=False)
class ConfigUnion(AdapterConfig):
    """Combine configs of different methods (or bottlenecks at different places) in one adapter.

    Example:
        >>> from adapters import ConfigUnion, LoRAConfig, SeqBnConfig
        >>> union = ConfigUnion(LoRAConfig(r=4), SeqBnConfig())
        >>> [type(c).__name__ for c in union.configs]
        ['LoRAConfig', 'SeqBnConfig']
    """

    architecture: ClassVar[str | None] = "union"
    configs: tuple[AdapterConfig, ...]

    def __init__(self, *configs: AdapterConfig) -> None:
        flat: list[AdapterConfig] = []
        for config in configs:
            flat.extend(config.configs if isinstance(config, ConfigUnion) else [config])
        object.__setattr__(self, "configs", tuple(flat))
        self.validate(self.configs)

    @staticmethod
    def validate(configs: tuple[AdapterConfig, ...]) -> None:
        """Two configs of one kind conflict unless they act at different places."""
        for i, a in enumerate(configs):
            if not isinstance(a, AdapterConfig):
                raise AdapterConfigError(f"ConfigUnion takes AdapterConfig objects, got {type(a).__name__}.")
            for b in configs[i + 1 :]:
                if a.architecture != b.architecture:
                    continue
                if isinstance(a, BnConfig) and isinstance(b, BnConfig):
                    overlap = (a.mh_adapter and b.mh_adapter) or (a.output_adapter and b.output_adapter)
                    if not overlap:
                        continue
                raise AdapterConfigError(
                    f"ConfigUnion: {type(a).__name__} and {type(b).__name__} act at the same place; "
                    "combine configs of different methods, or bottlenecks with disjoint "
                    "mh_adapter/output_adapter placement."
                )

    def __iter__(self) -> Iterator[str]:
        return iter(("architecture", "configs"))

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": "union", "configs": [c.to_dict() for c in self.configs]}

    def replace(self, **changes: Any) -> ConfigUnion:
        """Apply the changes to every member config that has those fields."""
        updated = []
        for config in self.configs:
            fields = {f.name for f in dataclasses.fields(config)}
            updated.append(config.replace(**{k: v for k, v in changes.items() if k in fields}))
        return ConfigUnion(*updated)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> ConfigUnion:
        members = config.get("configs")
        if not isinstance(members, (list, tuple)):
            raise AdapterConfigError(f"A union config needs a list 'configs' of member configs, got {members!r:.80}.")
        return cls(*(config_from_dict(c) for c in members))


class MAMConfig(ConfigUnion):
    """Mix-and-Match adapter (He et al., 2022): prefix tuning (bottleneck 800) + a parallel bottleneck.

    Example:
        >>> from adapters import MAMConfig
        >>> [type(c).__name__ for c in MAMConfig().configs]
        ['PrefixTuningConfig', 'ParBnConfig']
    """

    shorthand: ClassVar[str | None] = "mam"

    def __init__(self, prefix_tuning: AdapterConfig | None = None, adapter: AdapterConfig | None = None) -> None:
        super().__init__(prefix_tuning or PrefixTuningConfig(bottleneck_size=800), adapter or ParBnConfig())


class UniPELTConfig(ConfigUnion):
    """UniPELT (Mao et al., 2022): gated prefix tuning, sequential bottleneck and LoRA in one adapter.

    Every member gets ``use_gating=True``, so each learns how much it contributes.

    Example:
        >>> from adapters import UniPELTConfig
        >>> all(c.use_gating for c in UniPELTConfig().configs)
        True
    """

    shorthand: ClassVar[str | None] = "unipelt"

    def __init__(
        self,
        prefix_tuning: AdapterConfig | None = None,
        adapter: AdapterConfig | None = None,
        lora: AdapterConfig | None = None,
    ) -> None:
        members = (
            prefix_tuning or PrefixTuningConfig(prefix_length=10),
            adapter or SeqBnConfig(reduction_factor=16),
            lora or LoRAConfig(r=8),
        )
        super().__init__(*(member.replace(use_gating=True) for member in members))

