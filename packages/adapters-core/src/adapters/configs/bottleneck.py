"""Bottleneck adapter configs: Houlsby, Pfeiffer, He et al. (parallel), Compacter, AdapterPlus, MAD-X."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from ..errors import AdapterConfigError
from . import checks
from .base import AdapterConfig

_INIT_MODES = ("bert", "mam_adapter", "houlsby")
_RESIDUAL_MODES = (True, False, "post_add")
_INV_ADAPTERS = (None, "nice", "glow")
_PHM_W_INITS = ("phm", "glorot-normal", "glorot-uniform", "normal")
_PHM_C_INITS = ("normal", "uniform")
#: The activations of bottleneck, invertible and prefix-tuning MLPs (any case), as the modules build them.
NON_LINEARITIES = (
    "relu", "gelu", "gelu_new", "gelu_orig", "swish", "silu", "tanh", "sigmoid", "leakyrelu", "identity",
)  # fmt: skip


def bottleneck_size(hidden_size: int, reduction_factor: float, field: str = "reduction_factor") -> int:
    """``hidden_size // reduction_factor`` (at least 1), refusing a factor so small that no model can hold it."""
    size = hidden_size / reduction_factor
    if not size < checks.INT_MAX:
        raise AdapterConfigError(
            f"{field}={reduction_factor!r} makes a bottleneck of {size:.3g} units for hidden size {hidden_size}; "
            f"use a larger {field} (the bottleneck is hidden_size // {field})."
        )
    return max(1, int(hidden_size // reduction_factor))


@dataclasses.dataclass(frozen=True)
class BnConfig(AdapterConfig):
    """A bottleneck adapter: ``up(act(down(x)))`` added around a sub-block of each layer.

    Placement (``mh_adapter`` after attention, ``output_adapter`` after the FFN), how the layer's
    own LayerNorm is used (``original_ln_before``/``original_ln_after``), where the residual is
    taken (``residual_before_ln``), extra LayerNorms (``ln_before``/``ln_after``), sequential or
    parallel (``is_parallel``) and a fixed, ``"learned"`` (one scalar) or ``"channel"`` (one per
    hidden unit) output ``scaling``. ``reduction_factor`` may differ per layer:
    ``{"0": 8, "default": 16}``. ``phm_layer`` makes both projections parameterized hypercomplex
    multiplications (Compacter; the ``phm_*`` options), ``inv_adapter`` adds an invertible adapter
    after the embeddings (MAD-X) and ``stochastic_depth`` drops the adapter branch per example
    while training (AdapterPlus).

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

    field_rules: ClassVar[Mapping[str, checks.Rule]] = {
        "reduction_factor": checks.positive_factors(),
        "non_linearity": checks.one_of(NON_LINEARITIES, ignore_case=True),
        "init_weights": checks.one_of(_INIT_MODES),
        "scaling": checks.Rule(
            "a finite number, 'learned' or 'channel'", lambda v: not isinstance(v, str) or v in ("learned", "channel")
        ),
        "residual_before_ln": checks.one_of(_RESIDUAL_MODES),
        "inv_adapter": checks.one_of(_INV_ADAPTERS[1:]),
        "inv_adapter_reduction_factor": checks.POSITIVE_NUMBER,
        "leave_out": checks.LAYER_INDICES,
        "dropout": checks.PROBABILITY,
        "phm_dim": checks.POSITIVE_INT,
        "phm_c_init": checks.one_of(_PHM_C_INITS),
        "phm_init_range": checks.NON_NEGATIVE_NUMBER,
        "hypercomplex_nonlinearity": checks.one_of(_PHM_W_INITS),
        "phm_rank": checks.POSITIVE_INT,
        "stochastic_depth": checks.PROBABILITY,
        "init_weights_seed": checks.SEED,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.reduction_factor, Mapping) and "default" not in self.reduction_factor:
            keys = [k for k in self.reduction_factor if not str(k).isdigit()]
            if keys:
                raise AdapterConfigError(f"reduction_factor keys must be layer indices or 'default', got {keys}.")
        self._check_inv_adapter()
        if self.phm_layer:
            self._check_phm()

    def _check_inv_adapter(self) -> None:
        if self.inv_adapter not in _INV_ADAPTERS:
            raise AdapterConfigError(f"inv_adapter={self.inv_adapter!r}; choose 'nice', 'glow' or None.")
        factor = self.inv_adapter_reduction_factor
        if self.inv_adapter is not None and not (isinstance(factor, (int, float)) and factor > 0):
            raise AdapterConfigError(
                f"inv_adapter={self.inv_adapter!r} needs a positive inv_adapter_reduction_factor (e.g. 2), "
                f"got {factor!r}."
            )

    def _check_phm(self) -> None:
        # (Types and ranges of the phm_* fields are checked for every config, see field_rules.)
        if self.hypercomplex_nonlinearity is None or self.phm_c_init is None:
            raise AdapterConfigError(
                f"phm_layer=True needs hypercomplex_nonlinearity (one of {_PHM_W_INITS}) and phm_c_init (one of "
                f"{_PHM_C_INITS}); got {self.hypercomplex_nonlinearity!r} and {self.phm_c_init!r}."
            )
        if self.phm_init_range is None:
            raise AdapterConfigError("phm_layer=True needs phm_init_range (a number >= 0, e.g. 0.0001); got None.")
        if self.factorized_phm_W and not (isinstance(self.phm_rank, int) and self.phm_rank >= 1):
            raise AdapterConfigError(f"phm_rank={self.phm_rank!r}; factorized_phm_W needs a positive integer rank.")
        if self.init_weights != "bert":
            # PHM layers take their initialisation from hypercomplex_nonlinearity and phm_c_init; the
            # reference library fails on these modes too (its PHM layers have no .weight to initialise).
            raise AdapterConfigError(
                f"phm_layer=True works with init_weights='bert' only (got {self.init_weights!r}); PHM weights are "
                "initialised by hypercomplex_nonlinearity and phm_c_init."
            )

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> AdapterConfig:
        """Also reads version-1 files, which nest the invertible adapter as ``invertible_adapter``."""
        values = dict(config)
        legacy = values.pop("invertible_adapter", None)
        if legacy:
            values["inv_adapter"] = legacy.get("block_type")
            values["inv_adapter_reduction_factor"] = legacy.get("reduction_factor")
        return super().from_dict(values)

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


@dataclasses.dataclass(frozen=True)
class SeqBnInvConfig(SeqBnConfig):
    """Pfeiffer et al. (2020, MAD-X): ``seq_bn`` plus a NICE invertible adapter after the embeddings.

    Example:
        >>> from adapters import SeqBnInvConfig
        >>> SeqBnInvConfig().inv_adapter, SeqBnInvConfig(inv_adapter="glow").inv_adapter_reduction_factor
        ('nice', 2)
    """

    inv_adapter: str | None = "nice"
    inv_adapter_reduction_factor: float | None = 2


@dataclasses.dataclass(frozen=True)
class DoubleSeqBnInvConfig(DoubleSeqBnConfig):
    """``double_seq_bn`` plus a NICE invertible adapter after the embeddings.

    Example:
        >>> from adapters import DoubleSeqBnInvConfig
        >>> DoubleSeqBnInvConfig().mh_adapter, DoubleSeqBnInvConfig().inv_adapter
        (True, 'nice')
    """

    inv_adapter: str | None = "nice"
    inv_adapter_reduction_factor: float | None = 2


@dataclasses.dataclass(frozen=True)
class CompacterConfig(DoubleSeqBnConfig):
    """Mahabadi et al. (2021), Compacter: PHM projections after attention and after the FFN.

    Example:
        >>> from adapters import CompacterConfig
        >>> config = CompacterConfig()
        >>> config.phm_layer, config.phm_dim, config.reduction_factor, config.non_linearity
        (True, 4, 32, 'gelu')
    """

    phm_layer: bool = True
    reduction_factor: float | Mapping[str, float] = 32
    non_linearity: str = "gelu"


@dataclasses.dataclass(frozen=True)
class CompacterPlusPlusConfig(SeqBnConfig):
    """Mahabadi et al. (2021), Compacter++: one PHM bottleneck after the FFN.

    Example:
        >>> from adapters import CompacterPlusPlusConfig
        >>> CompacterPlusPlusConfig().mh_adapter, CompacterPlusPlusConfig().output_adapter
        (False, True)
    """

    phm_layer: bool = True
    reduction_factor: float | Mapping[str, float] = 32
    non_linearity: str = "gelu"


@dataclasses.dataclass(frozen=True)
class AdapterPlusConfig(BnConfig):
    """Steitz & Roth (2024), AdapterPlus: channel-wise scaling, Houlsby init, stochastic depth.

    One bottleneck after the FFN reading the LayerNorm-ed FFN output, with its residual taken
    after that LayerNorm and no LayerNorm after it; the adapter branch is scaled per hidden unit
    and, while training, dropped for a whole example with probability ``stochastic_depth``.

    Example:
        >>> from adapters import AdapterPlusConfig
        >>> config = AdapterPlusConfig()
        >>> config.scaling, config.stochastic_depth, config.reduction_factor
        ('channel', 0.1, 96)
    """

    mh_adapter: bool = False
    output_adapter: bool = True
    reduction_factor: float | Mapping[str, float] = 96
    non_linearity: str = "gelu"
    original_ln_before: bool = True
    original_ln_after: bool = False
    residual_before_ln: bool | str = False
    init_weights: str = "houlsby"
    scaling: float | str = "channel"
    stochastic_depth: float | None = 0.1
