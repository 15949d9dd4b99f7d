"""LoRA config (Hu et al., 2021)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ..errors import AdapterConfigError
from .base import AdapterConfig

_ATTN_MATRICES = ("q", "k", "v")


@dataclasses.dataclass(frozen=True)
class LoRAConfig(AdapterConfig):
    """Low-rank update ``W + (alpha / r) * B @ A`` on selected linear layers.

    ``selfattn_lora`` with ``attn_matrices`` picks the attention projections, ``intermediate_lora``
    the FFN input and ``output_lora`` the FFN output projection.

    Example:
        >>> from adapters import LoRAConfig
        >>> LoRAConfig(r=4, alpha=16, attn_matrices=["q", "k", "v"]).attn_matrices
        ('q', 'k', 'v')
    """

    architecture: ClassVar[str | None] = "lora"

    selfattn_lora: bool = True
    intermediate_lora: bool = False
    output_lora: bool = False
    leave_out: tuple[int, ...] = ()
    r: int = 8
    alpha: int = 8
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

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.r < 1:
            raise AdapterConfigError(f"LoRA rank r must be >= 1, got {self.r}.")
        bad = [m for m in self.attn_matrices if m not in _ATTN_MATRICES]
        if bad:
            raise AdapterConfigError(f"attn_matrices {bad} unknown; choose from {_ATTN_MATRICES}.")
        if self.composition_mode != "add":
            raise AdapterConfigError(
                f"composition_mode={self.composition_mode!r} is IA3's mode; this release implements "
                "LoRA's additive mode only ('add')."
            )
        if self.init_weights not in ("lora", "bert"):
            raise AdapterConfigError(f"init_weights={self.init_weights!r}; choose 'lora' or 'bert'.")
        if self.use_dora or self.vera_d is not None or self.vera_b is not None:
            raise AdapterConfigError("DoRA and VeRA variants of LoRAConfig are not available in this release.")
        if self.use_gating:
            raise AdapterConfigError("LoRA gating (use_gating=True) belongs to UniPELT, which is not available yet.")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r
