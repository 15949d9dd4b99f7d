"""VeRA (Kopiczko et al., 2024): shared frozen random matrices, trainable vectors per layer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...configs.lora import LoRAConfig
from .layer import AdditiveModule

SHARED_CONTAINER = "shared_parameters"


class VeRAShared(nn.Module):
    """The random ``lora_A`` (r x in) and ``lora_B`` (out x r) that all layers of one VeRA adapter use.

    They are buffers, not parameters: frozen and never counted as trainable, but saved with the
    adapter (under ``shared_parameters.<name>.``) so that a reloaded adapter computes the same.
    Layers with fewer inputs or outputs use the leading columns of ``A`` or rows of ``B``. With
    ``init_weights="vera"`` both are Kaiming-uniform, drawn A then B, as the reference library
    draws them (so a reference adapter with ``init_weights_seed`` can be rebuilt).

    Example:
        >>> shared = VeRAShared(r=4, in_features=16, out_features=8, init_weights="vera")
        >>> shared.lora_A.shape, shared.lora_B.shape, len(list(shared.parameters()))
        (torch.Size([4, 16]), torch.Size([8, 4]), 0)
    """

    def __init__(self, r: int, in_features: int, out_features: int, init_weights: str) -> None:
        super().__init__()
        self.register_buffer("lora_A", torch.zeros(r, in_features))
        self.register_buffer("lora_B", torch.zeros(out_features, r))
        if init_weights == "vera":
            nn.init.kaiming_uniform_(self.lora_A)
            nn.init.kaiming_uniform_(self.lora_B)
        elif init_weights == "lora":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        elif init_weights == "bert":
            nn.init.normal_(self.lora_A, std=0.02)
            nn.init.normal_(self.lora_B, std=0.02)
        else:  # "ia3"
            nn.init.ones_(self.lora_A)
            nn.init.ones_(self.lora_B)


class VeRA(AdditiveModule):
    """One layer's VeRA update ``diag(b) B diag(d) A`` (times ``scaling``), with ``d``/``b`` trainable vectors.

    ``vera_D`` holds ``d`` (r values per enabled slice) and ``vera_B`` holds ``b`` (one value per
    adapted output row). The reference library stores both as full square matrices; such files
    are converted on load when the matrices are diagonal (see :func:`diagonal_to_vector`).

    Example:
        >>> from adapters import VeraConfig
        >>> shared = VeRAShared(8, 16, 16, "vera")
        >>> vera = VeRA(16, 16, VeraConfig(), shared)
        >>> sum(p.numel() for p in vera.parameters())  # r + out values
        24
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: LoRAConfig,
        shared: VeRAShared,
        slices: tuple[bool, ...] | None = None,
        weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__(in_features, out_features, config, slices, weight)
        # A tuple keeps the shared module out of this module's children: it is saved once, not per layer.
        self._shared = (shared,)
        self.vera_D = nn.Parameter(torch.full((config.r * self.n_pairs,), float(config.vera_d)))
        self.vera_B = nn.Parameter(torch.full((self.rows,), float(config.vera_b)))

    @property
    def shared(self) -> VeRAShared:
        return self._shared[0]

    def _matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        shared = self.shared
        return shared.lora_A[:, : self.in_features], shared.lora_B[: self.slice_size]

    def _vectors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        r, d = self.config.r, self.slice_size
        return [(self.vera_D[g * r : (g + 1) * r], self.vera_B[g * d : (g + 1) * d]) for g in range(self.n_pairs)]

    def raw_update(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self._matrices()
        low = F.linear(x, a)
        if self.n_pairs == 1:
            return F.linear(low * self.vera_D, b) * self.vera_B
        return torch.cat([F.linear(low * dv, b) * bv for dv, bv in self._vectors()], dim=-1)

    def pair_weights(self) -> list[torch.Tensor]:
        a, b = self._matrices()
        return [(bv.unsqueeze(1) * b) @ (dv.unsqueeze(1) * a) for dv, bv in self._vectors()]


def diagonal_to_vector(matrix: torch.Tensor, key: str) -> torch.Tensor:
    """The diagonal of a reference VeRA matrix (``vera_D``/``vera_B``); refuse if it is not diagonal.

    The reference library trains ``d`` and ``b`` as full square matrices, so training may fill
    their off-diagonal entries; such an adapter is no VeRA adapter and has no vector form.
    """
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{key} has shape {tuple(matrix.shape)}; expected a vector or a square matrix")
    diagonal = torch.diagonal(matrix)
    off = (matrix - torch.diag(diagonal)).abs().max().item() if matrix.numel() else 0.0
    if off > 0:
        raise ValueError(
            f"{key} is a full matrix with non-zero off-diagonal entries (max {off:.3g}): it was trained by the "
            "reference library, which learns VeRA's d and b as square matrices. VeRA learns vectors, so this "
            "adapter cannot be represented here; retrain it with this library."
        )
    return diagonal.clone()
