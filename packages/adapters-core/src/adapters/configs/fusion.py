"""AdapterFusion configs (Pfeiffer et al., 2021): how the fusion attention over adapter outputs is built.

The fields and their meaning follow the reference format (``adapter_fusion_config.json``):
every field is saved, and a file written by the reference library loads into these classes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..errors import AdapterConfigError
from ..files.jsonfile import read_json
from . import checks
from .base import AdapterConfig


@dataclasses.dataclass(frozen=True)
class AdapterFusionConfig(AdapterConfig):
    """The architecture of an AdapterFusion layer; use ``"static"``, ``"dynamic"`` or a full dict.

    Fields: learned ``query``, ``key`` and ``value`` projections (``value`` without bias,
    initialised to the identity when ``value_initialized``; applied before the softmax-weighted
    sum when ``value_before_softmax``, otherwise after it); ``query_before_ln``: the query is the
    sub-block output before the layer's own LayerNorm instead of the adapters' input;
    ``residual_before``: the residual is added to the adapter outputs before attention instead of
    to the fused output; ``temperature``: softmax temperature annealed from 50 to 1 (by 0.05 per
    forward pass); ``regularization``: :meth:`get_fusion_regularization_loss` pulls the value
    matrix towards the identity; ``dropout_prob``: dropout on the attention scores (``None``: the
    model's ``attention_probs_dropout_prob``).

    Example:
        >>> from adapters.configs.fusion import AdapterFusionConfig
        >>> config = AdapterFusionConfig.load("dynamic", temperature=True)
        >>> config.value, config.temperature
        (True, True)
    """

    key: bool
    query: bool
    value: bool
    query_before_ln: bool
    regularization: bool
    residual_before: bool
    temperature: bool
    value_before_softmax: bool
    # A bool in practice; the reference types it as str and tests only its truth value.
    value_initialized: bool | str
    dropout_prob: float | None

    field_rules: ClassVar[Mapping[str, checks.Rule]] = {"dropout_prob": checks.PROBABILITY}

    @classmethod
    def load(cls, config: Any = "dynamic", **overrides: Any) -> AdapterFusionConfig:
        """Resolve ``"static"``/``"dynamic"``, a dict of every field, a config, or a JSON file or folder.

        A folder is one written by ``save_adapter_fusion`` (its ``adapter_fusion_config.json``).
        """
        if config is None:
            config = "dynamic"
        if isinstance(config, AdapterFusionConfig):
            resolved = config
        elif isinstance(config, Mapping):
            resolved = _from_mapping(config)
        elif isinstance(config, (str, os.PathLike)):
            resolved = _from_name_or_path(os.fspath(config))
        else:
            raise AdapterConfigError(f"Cannot build an AdapterFusion config from {type(config).__name__}.")
        return resolved.replace(**overrides) if overrides else resolved


@dataclasses.dataclass(frozen=True)
class StaticAdapterFusionConfig(AdapterFusionConfig):
    """AdapterFusion without a value matrix (``"static"``).

    Example:
        >>> StaticAdapterFusionConfig().value
        False
    """

    key: bool = True
    query: bool = True
    value: bool = False
    query_before_ln: bool = False
    regularization: bool = False
    residual_before: bool = False
    temperature: bool = False
    value_before_softmax: bool = True
    value_initialized: bool | str = False
    dropout_prob: float | None = None


@dataclasses.dataclass(frozen=True)
class DynamicAdapterFusionConfig(AdapterFusionConfig):
    """AdapterFusion with an identity-initialised value matrix and its regularization (``"dynamic"``).

    Example:
        >>> DynamicAdapterFusionConfig().value, DynamicAdapterFusionConfig().regularization
        (True, True)
    """

    key: bool = True
    query: bool = True
    value: bool = True
    query_before_ln: bool = False
    regularization: bool = True
    residual_before: bool = False
    temperature: bool = False
    value_before_softmax: bool = True
    value_initialized: bool | str = True
    dropout_prob: float | None = None


FUSION_CONFIG_NAMES: dict[str, AdapterFusionConfig] = {
    "static": StaticAdapterFusionConfig(),
    "dynamic": DynamicAdapterFusionConfig(),
}


def _from_mapping(config: Mapping[str, Any]) -> AdapterFusionConfig:
    values = dict(config)
    values.pop("architecture", None)
    missing = sorted({f.name for f in dataclasses.fields(AdapterFusionConfig)} - set(values))
    if missing:
        raise AdapterConfigError(
            f"An AdapterFusion config dict needs every field; missing {missing}. Start from a named config "
            "instead, e.g. AdapterFusionConfig.load('dynamic', temperature=True) "
            f"(names: {sorted(FUSION_CONFIG_NAMES)})."
        )
    return AdapterFusionConfig.from_dict(values)


def _from_name_or_path(text: str) -> AdapterFusionConfig:
    if text in FUSION_CONFIG_NAMES:
        return FUSION_CONFIG_NAMES[text]
    path = os.path.join(text, "adapter_fusion_config.json") if os.path.isdir(text) else text
    if not os.path.isfile(path):
        raise AdapterConfigError(
            f"Unknown AdapterFusion config {text!r}: use one of {sorted(FUSION_CONFIG_NAMES)}, a dict of every "
            "field, or the path of an adapter_fusion_config.json."
        )
    data = read_json(Path(path), "AdapterFusion config")
    if not isinstance(data, dict):
        raise AdapterConfigError(f"{path} does not hold an AdapterFusion config object.")
    inner = data.get("config", data)
    if not isinstance(inner, Mapping):
        raise AdapterConfigError(f"{path} has no 'config' object; it is not an AdapterFusion config file.")
    return _from_mapping(inner)
