"""Prefix tuning config (Li & Liang, 2021)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from . import checks
from .base import AdapterConfig
from .bottleneck import NON_LINEARITIES


@dataclasses.dataclass(frozen=True)
class PrefixTuningConfig(AdapterConfig):
    """Learned key/value prefixes of ``prefix_length`` positions in every self-attention layer.

    Unless ``flat``, the prefixes are reparametrized: an embedding table of ``prefix_length``
    rows goes through ``Linear(hidden, bottleneck_size) -> non_linearity -> Linear(bottleneck_size,
    n_layers * 2 * hidden)``, which yields the keys and values of all layers at once (the MLP can
    be dropped after training with ``model.eject_prefix_tuning(name)``). With ``flat`` the
    prefixes are trained directly. ``dropout`` applies to the prefix keys/values; ``use_gating``
    scales each layer's prefix keys and values by ``mean_t sigmoid(W h_t + b)`` over the
    attention's input ``h`` (one shared gate, or one for keys and one for values when
    ``shared_gating=False``), as UniPELT does. ``encoder_prefix``/``cross_prefix`` select the
    encoder self-attention and the cross-attention of encoder-decoder models; encoder-only models
    have neither kind, their self-attention layers always get prefixes.

    Example:
        >>> from adapters import PrefixTuningConfig
        >>> PrefixTuningConfig(prefix_length=10, bottleneck_size=256).flat
        False
    """

    architecture: ClassVar[str | None] = "prefix_tuning"

    encoder_prefix: bool = True
    cross_prefix: bool = True
    leave_out: tuple[int, ...] = ()
    flat: bool = False
    prefix_length: int = 30
    bottleneck_size: int = 512
    non_linearity: str = "tanh"
    dropout: float = 0.0
    use_gating: bool = False
    shared_gating: bool = True
    init_weights_seed: int | None = None

    field_rules: ClassVar[Mapping[str, checks.Rule]] = {
        "leave_out": checks.LAYER_INDICES,
        "prefix_length": checks.POSITIVE_INT,
        # Checked with flat=True too, where the MLP is gone: the size is kept (and saved) as it was.
        "bottleneck_size": checks.POSITIVE_INT,
        "non_linearity": checks.one_of(NON_LINEARITIES, ignore_case=True),
        "dropout": checks.PROBABILITY_BELOW_ONE,
        "init_weights_seed": checks.SEED,
    }
