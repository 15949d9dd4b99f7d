"""Bottleneck adapter configs (Houlsby, Pfeiffer, He et al. parallel adapters)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..errors import AdapterConfigError
from .base import AdapterConfig

_INIT_MODES = ("bert", "mam_adapter", "houlsby")
_RESIDUAL_MODES = (True, False, "post_add")


@dataclasses.dataclass(frozen=True)
class BnConfig(AdapterConfig):
    """A bottleneck adapter: ``up(act(down(x)))`` added around a sub-block of each layer.

    Placement (``mh_adapter`` after attention, ``output_adapter`` after the FFN), how the layer's
    own LayerNorm is used (``original_ln_before``/``original_ln_after``), where the residual is
    taken (``residual_before_ln``), extra LayerNorms (``ln_before``/``ln_after``), sequential or
    parallel (``is_parallel``) and a fixed or learned output ``scaling``. ``reduction_factor``
    may differ per layer: ``{"0": 8, "default": 16}``.

    Example:
        >>> from adapters import BnConfig
        >>> BnConfig(mh_adapter=False, output_adapter=True, reduction_factor=16,
        ...          non_linearity="relu").is_parallel
        False
    """

    mh_adapter: bool
    output_adapter: bool
    reduction_factor: float | Mapping[str, float]
    non_linearity: str
    original_ln_before: bool = False
    original_ln_after: bool = True
    ln_before: bool = False
    ln_after: bool = False
    init_weights: str = "bert"
    is_parallel: bool = False
    scaling: float | str = 1.0
    use_gating: bool = False
    residual_before_ln: bool | str = True
    adapter_residual_before_ln: bool = False
    inv_adapter: str | None = None
    inv_adapter_reduction_factor: float | None = None
    cross_adapter: bool = False
    leave_out: tuple[int, ...] = ()
    dropout: float = 0.0
    phm_layer: bool = False
    phm_dim: int = 4
    factorized_phm_W: bool | None = True
    shared_W_phm: bool | None = False
    shared_phm_rule: bool | None = True
    factorized_phm_rule: bool | None = False
    phm_c_init: str | None = "normal"
    phm_init_range: float | None = 0.0001
    learn_phm: bool | None = True
    hypercomplex_nonlinearity: str | None = "glorot-uniform"
    phm_rank: int | None = 1
    phm_bias: bool | None = True
    stochastic_depth: float | None = 0.0
    init_weights_seed: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_weights not in _INIT_MODES:
            raise AdapterConfigError(f"init_weights={self.init_weights!r}; choose one of {_INIT_MODES}.")
        if self.residual_before_ln not in _RESIDUAL_MODES:
            raise AdapterConfigError(
                f"residual_before_ln={self.residual_before_ln!r}; choose True, False or 'post_add'."
            )
        if not (isinstance(self.scaling, (int, float)) or self.scaling == "learned"):
            raise AdapterConfigError(f"scaling={self.scaling!r}; use a number or 'learned'.")
        if isinstance(self.reduction_factor, Mapping) and "default" not in self.reduction_factor:
            keys = [k for k in self.reduction_factor if not str(k).isdigit()]
            if keys:
                raise AdapterConfigError(f"reduction_factor keys must be layer indices or 'default', got {keys}.")

    def reduction_for_layer(self, layer_idx: int) -> float:
        """The reduction factor of one layer (per-layer dicts fall back to ``default``)."""
        factor: Any = self.reduction_factor
        if isinstance(factor, Mapping):
            if str(layer_idx) in factor:
                return factor[str(layer_idx)]
            if "default" not in factor:
                raise AdapterConfigError(f"reduction_factor has no entry for layer {layer_idx} and no 'default'.")
            return factor["default"]
        return factor


@dataclasses.dataclass(frozen=True)
class SeqBnConfig(BnConfig):
    """Pfeiffer et al. (2020): one bottleneck after the FFN, the layer's LayerNorm before it."""

    mh_adapter: bool = False
    output_adapter: bool = True
    reduction_factor: float | Mapping[str, float] = 16
    non_linearity: str = "relu"
    original_ln_before: bool = True
    original_ln_after: bool = True
    residual_before_ln: bool | str = True


@dataclasses.dataclass(frozen=True)
class DoubleSeqBnConfig(BnConfig):
    """Houlsby et al. (2019): bottlenecks after attention and after the FFN."""

    mh_adapter: bool = True
    output_adapter: bool = True
    reduction_factor: float | Mapping[str, float] = 16
    non_linearity: str = "swish"
    original_ln_before: bool = False
    original_ln_after: bool = True
    residual_before_ln: bool | str = True


@dataclasses.dataclass(frozen=True)
class ParBnConfig(BnConfig):
    """He et al. (2021): a scaled bottleneck in parallel to the FFN."""

    mh_adapter: bool = False
    output_adapter: bool = True
    reduction_factor: float | Mapping[str, float] = 2
    non_linearity: str = "relu"
    original_ln_before: bool = False
    original_ln_after: bool = True
    residual_before_ln: bool | str = True
    init_weights: str = "mam_adapter"
    is_parallel: bool = True
    scaling: float | str = 4.0
