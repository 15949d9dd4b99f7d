"""LoRA-family configs: LoRA (Hu et al., 2021), (IA)^3, VeRA, DoRA and DoRA on VeRA.

All of them are one config class in the on-disk format (``"architecture": "lora"``); the
variants differ in field values only, so a reference ``IA3Config`` file loads as a
:class:`LoRAConfig` with ``composition_mode="scale"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from ..errors import AdapterConfigError
from . import checks
from .base import AdapterConfig

_ATTN_MATRICES = ("q", "k", "v", "o")
_COMPOSITION_MODES = ("add", "scale")
_INIT_MODES = ("lora", "bert", "ia3", "vera")
_DTYPES = ("float32", "float64", "float16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class LoRAConfig(AdapterConfig):
    """Low-rank update ``W + (alpha / r) * B @ A`` on selected linear layers.

    ``selfattn_lora`` with ``attn_matrices`` picks the attention projections (``"q"``, ``"k"``,
    ``"v"``, and ``"o"``, the output projection, where the model's spec declares one), ``intermediate_lora``
    the FFN input and ``output_lora`` the FFN output projection, ``gate_lora`` a gated FFN's gate
    projection (as PEFT's ``target_modules="all-linear"`` adapts it). ``composition_mode="scale"``
    turns the update into a learned output scaling (IA)^3, ``use_dora`` into DoRA and
    ``vera_d``/``vera_b`` into VeRA; ``use_gating`` replaces ``alpha / r`` by a learned,
    input-dependent gate (UniPELT).

    Example:
        >>> from adapters import LoRAConfig
        >>> LoRAConfig(r=4, alpha=16, attn_matrices=["q", "k", "v"]).attn_matrices
        ('q', 'k', 'v')
        >>> every_linear = dict(intermediate_lora=True, output_lora=True, gate_lora=True)  # as PEFT's "all-linear"
        >>> LoRAConfig(attn_matrices=["q", "k", "v", "o"], **every_linear).gate_lora
        True
    """

    architecture: ClassVar[str | None] = "lora"

    selfattn_lora: bool = True
    intermediate_lora: bool = False
    output_lora: bool = False
    # The gate projection of a gated FFN (Llama's gate_proj), where the model's spec declares one.
    gate_lora: bool = False
    leave_out: tuple[int, ...] = ()
    r: int = 8
    # Typed int in the reference format, but only alpha / r is used: any positive number works.
    alpha: float = 8
    dropout: float = 0.0
    attn_matrices: tuple[str, ...] = ("q", "v")
    composition_mode: str = "add"
    init_weights: str = "lora"
    use_gating: bool = False
    use_dora: bool = False
    vera_d: float | None = None
    vera_b: float | None = None
    dtype: str | None = None
    init_weights_seed: int | None = None

    written_when_set: ClassVar[frozenset[str]] = frozenset({"gate_lora"})
    field_rules: ClassVar[Mapping[str, checks.Rule]] = {
        "leave_out": checks.LAYER_INDICES,
        "r": checks.int_range(1, label="the LoRA rank r"),
        "alpha": checks.POSITIVE_NUMBER,
        "dropout": checks.PROBABILITY,
        "attn_matrices": checks.Rule(
            f"a list of {list(_ATTN_MATRICES)}", lambda v: all(m in _ATTN_MATRICES for m in v)
        ),
        "composition_mode": checks.one_of(_COMPOSITION_MODES),
        "init_weights": checks.one_of(_INIT_MODES),
        "dtype": checks.one_of(_DTYPES),
        "init_weights_seed": checks.SEED,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.vera_d is None) != (self.vera_b is None):
            raise AdapterConfigError(
                f"VeRA needs both vera_d and vera_b (got vera_d={self.vera_d}, vera_b={self.vera_b}); "
                "set both (VeraConfig uses 0.1 and 0.0) or neither."
            )
        if self.is_vera:
            # JSON and shorthands may give ints; the values initialise float vectors.
            object.__setattr__(self, "vera_d", float(self.vera_d))
            object.__setattr__(self, "vera_b", float(self.vera_b))
        if self.composition_mode == "scale":
            self._check_scale_mode()

    def _check_scale_mode(self) -> None:
        problems = []
        if self.r != 1:
            problems.append(f"r must be 1 (got {self.r})")
        if self.dropout > 0:
            problems.append(f"dropout must be 0 (got {self.dropout})")
        if self.use_dora:
            problems.append("use_dora must be False")
        if self.is_vera:
            problems.append("vera_d/vera_b must be None")
        if self.init_weights == "vera":
            problems.append("init_weights must not be 'vera'")
        if problems:
            raise AdapterConfigError(
                "composition_mode='scale' ((IA)^3) learns one scaling vector per layer, so "
                + "; ".join(problems)
                + ". Use IA3Config() for the defaults."
            )

    @property
    def is_vera(self) -> bool:
        """VeRA: frozen random ``A``/``B`` shared by all layers, trainable vectors ``d``/``b`` per layer."""
        return self.vera_d is not None

    @property
    def scaling(self) -> float:
        """The update's fixed factor: ``alpha`` for (IA)^3, ``alpha / r`` otherwise."""
        return float(self.alpha) if self.composition_mode == "scale" else self.alpha / self.r


@dataclasses.dataclass(frozen=True)
class IA3Config(LoRAConfig):
    """(IA)^3 (Liu et al., 2022): learned vectors that rescale the outputs of k, v and the FFN input.

    The output ``y = W x + b`` of each targeted linear becomes ``y * (alpha * l)`` with ``l``
    initialised to ones (stored as ``lora_B``, shape out x 1, as in the reference format).

    Example:
        >>> from adapters import IA3Config
        >>> c = IA3Config()
        >>> c.composition_mode, c.attn_matrices, c.intermediate_lora, c.r
        ('scale', ('k', 'v'), True, 1)
    """

    intermediate_lora: bool = True
    r: int = 1
    alpha: float = 1
    attn_matrices: tuple[str, ...] = ("k", "v")
    composition_mode: str = "scale"
    init_weights: str = "ia3"


@dataclasses.dataclass(frozen=True)
class VeraConfig(LoRAConfig):
    """VeRA (Kopiczko et al., 2024): ``delta W = (alpha / r) * diag(b) B diag(d) A``.

    ``A`` (r x in) and ``B`` (out x r) are random, frozen and shared by every layer of the
    adapter; each layer trains only ``d`` (r values, initialised to ``vera_d``) and ``b`` (out
    values, initialised to ``vera_b``).

    Example:
        >>> from adapters import VeraConfig
        >>> VeraConfig().vera_d, VeraConfig().vera_b
        (0.1, 0.0)
    """

    vera_d: float | None = 0.1
    vera_b: float | None = 0.0
    init_weights: str = "vera"


@dataclasses.dataclass(frozen=True)
class DoRAConfig(LoRAConfig):
    """DoRA (Liu et al., 2024): LoRA plus a learned magnitude ``m`` per output row.

    The adapted output is ``m / ||W + B A||_row * (W x + b + (alpha / r) * B A x)``, as in
    the reference library; ``m`` starts at the row norms of ``W``, so a new adapter is a no-op.

    Example:
        >>> from adapters import DoRAConfig
        >>> DoRAConfig().use_dora
        True
    """

    use_dora: bool = True


@dataclasses.dataclass(frozen=True)
class DvoRAConfig(LoRAConfig):
    """DoRA on top of VeRA: VeRA's shared random update with a learned magnitude per output row.

    Example:
        >>> from adapters import DvoRAConfig
        >>> DvoRAConfig().use_dora, DvoRAConfig().is_vera
        (True, True)
    """

    vera_d: float | None = 0.1
    vera_b: float | None = 0.0
    init_weights: str = "vera"
    use_dora: bool = True
