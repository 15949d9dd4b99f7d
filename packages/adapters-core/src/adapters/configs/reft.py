"""ReFT configs (Wu et al., 2024, "ReFT: Representation Finetuning for Language Models")."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from ..errors import AdapterConfigError
from . import checks
from .base import AdapterConfig

_DTYPES = ("float32", "float64", "float16", "bfloat16")


def _activation_names() -> list[str]:
    from transformers.activations import ACT2FN

    return sorted([*ACT2FN, "leakyrelu"])


@dataclasses.dataclass(frozen=True)
class ReftConfig(AdapterConfig):
    """Interventions ``h + R^T(act(W h + b) - R h)`` on the hidden states leaving each layer.

    They act on the first ``prefix_positions`` and the last ``suffix_positions`` non-padding
    positions of every sequence, in the layers named by ``layers`` (``"all"`` or indices) minus
    ``leave_out``. ``R`` (r x hidden) has orthonormal rows when ``orthogonality`` is set;
    ``subtract_projection=False`` drops the ``- R h`` term (DiReFT). Prefix and suffix positions
    have their own intervention unless ``tied_weights``. ``dropout`` applies (in training) to the
    intervention's edit ``R^T(...)``, ``dtype`` (e.g. ``"float32"``) sets its parameter dtype.

    ``leave_out`` is an extension of this library: the reference library reads the key but
    ignores it (it knows only ``layers``), so give the layers through ``layers`` for files that
    the reference library must read the same way.

    Example:
        >>> from adapters import ReftConfig
        >>> config = ReftConfig(layers="all", prefix_positions=3, suffix_positions=0, r=1, orthogonality=True)
        >>> config.architecture, config.subtract_projection
        ('reft', True)
    """

    architecture: ClassVar[str | None] = "reft"

    layers: str | tuple[int, ...]
    prefix_positions: int
    suffix_positions: int
    r: int
    orthogonality: bool
    tied_weights: bool = False
    # Files of the reference library do not store this field (it is no dataclass field there), and
    # the reference reads every such file with True; a missing key therefore means True here too.
    subtract_projection: bool = True
    dropout: float = 0.05
    non_linearity: str | None = None
    dtype: str | None = None
    output_reft: bool = True
    init_weights_seed: int | None = None
    leave_out: tuple[int, ...] = ()

    field_rules: ClassVar[Mapping[str, checks.Rule]] = {
        "layers": checks.Rule(
            "'all' or a list of layer indices",
            lambda v: v == "all" or checks.LAYER_INDICES.test(v),
            label="ReFT layers",
        ),
        "prefix_positions": checks.NON_NEGATIVE_INT,
        "suffix_positions": checks.NON_NEGATIVE_INT,
        "r": checks.int_range(1, label="the ReFT rank r"),
        "dropout": checks.PROBABILITY_BELOW_ONE,
        "dtype": checks.one_of(_DTYPES),
        "init_weights_seed": checks.SEED,
        "leave_out": checks.LAYER_INDICES,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prefix_positions == 0 and self.suffix_positions == 0:
            raise AdapterConfigError(
                "ReFT with prefix_positions=0 and suffix_positions=0 intervenes nowhere; set at least one of them."
            )
        if self.non_linearity is not None and self.non_linearity.lower() not in _activation_names():
            raise AdapterConfigError(
                f"ReFT non_linearity={self.non_linearity!r} is unknown; use None or one of {_activation_names()}."
            )
        if not self.output_reft:
            raise AdapterConfigError("ReFT intervenes on layer outputs only; output_reft must be True.")

    def uses_layer(self, layer_idx: int) -> bool:
        """Whether this config puts an intervention after layer ``layer_idx``."""
        selected = self.layers == "all" or layer_idx in self.layers
        return selected and layer_idx not in self.leave_out


@dataclasses.dataclass(frozen=True)
class LoReftConfig(ReftConfig):
    """LoReFT: low-rank linear subspace ReFT with an orthonormal projection ``R``.

    Example:
        >>> from adapters import LoReftConfig
        >>> LoReftConfig(suffix_positions=2, tied_weights=True).r
        1
    """

    layers: str | tuple[int, ...] = "all"
    prefix_positions: int = 3
    suffix_positions: int = 0
    r: int = 1
    orthogonality: bool = True


@dataclasses.dataclass(frozen=True)
class NoReftConfig(ReftConfig):
    """NoReFT: LoReFT without the orthogonality constraint on ``R``.

    Example:
        >>> from adapters import NoReftConfig
        >>> NoReftConfig().orthogonality
        False
    """

    layers: str | tuple[int, ...] = "all"
    prefix_positions: int = 3
    suffix_positions: int = 0
    r: int = 1
    orthogonality: bool = False


@dataclasses.dataclass(frozen=True)
class DiReftConfig(ReftConfig):
    """DiReFT: no orthogonality and no subtraction of the projection, ``h + R^T act(W h + b)``.

    Example:
        >>> from adapters import DiReftConfig
        >>> DiReftConfig().subtract_projection
        False
    """

    layers: str | tuple[int, ...] = "all"
    prefix_positions: int = 3
    suffix_positions: int = 0
    r: int = 1
    orthogonality: bool = False
    subtract_projection: bool = False
