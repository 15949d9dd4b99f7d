"""The LoRA module: ``delta(x) = (alpha / r) * B @ A @ dropout(x)``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...configs.lora import LoRAConfig


class LoRA(nn.Module):
    """Low-rank update of one linear layer; ``lora_A`` is (r x in), ``lora_B`` (out x r).

    On a fused linear (``slices`` given: one flag per contiguous, equal output slice, e.g. q/k/v)
    there is one low-rank pair per enabled slice, stored as in the reference library: ``lora_A``
    is (r * n_enabled x in) and ``lora_B`` (slice_size * n_enabled x r); pair ``g`` is
    ``lora_B[g*d:(g+1)*d] @ lora_A[g*r:(g+1)*r]`` and updates the g-th enabled slice only.
    """

    def __init__(
        self, in_features: int, out_features: int, config: LoRAConfig, slices: tuple[bool, ...] | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.scaling = config.alpha / config.r
        self.slices = tuple(slices) if slices is not None else None
        n_pairs, out_rows = 1, out_features
        if self.slices is not None:
            if out_features % len(self.slices) or not any(self.slices):
                raise ValueError(f"cannot split {out_features} outputs into slices {self.slices}")
            self.slice_size = out_features // len(self.slices)
            n_pairs, out_rows = sum(self.slices), self.slice_size * sum(self.slices)
        self.out_features = out_features
        self.lora_A = nn.Parameter(torch.empty(config.r * n_pairs, in_features))
        self.lora_B = nn.Parameter(torch.empty(out_rows, config.r))
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.config.init_weights == "lora":
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
                nn.init.zeros_(self.lora_B)
            else:  # "bert"
                nn.init.normal_(self.lora_A, std=0.02)
                nn.init.normal_(self.lora_B, std=0.02)

    @property
    def fused(self) -> bool:
        return self.slices is not None

    def _pairs(self) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """(A_g, B_g) for each output slice of a fused linear, None where the slice is disabled."""
        r, d = self.config.r, self.slice_size
        pairs, g = [], 0
        for enabled in self.slices:
            if enabled:
                pairs.append((self.lora_A[g * r : (g + 1) * r], self.lora_B[g * d : (g + 1) * d]))
                g += 1
            else:
                pairs.append(None)
        return pairs

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The update to add to the linear layer's output (scaling included)."""
        x = self.lora_dropout(x)
        if not self.fused:
            return F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling
        parts = [
            F.linear(F.linear(x, pair[0]), pair[1]) if pair is not None else x.new_zeros(*x.shape[:-1], self.slice_size)
            for pair in self._pairs()
        ]
        return torch.cat(parts, dim=-1) * self.scaling

    def add_delta(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``output + delta(x)`` as one multiply-add on the rank-r product (in place without autograd)."""
        if self.fused:
            return output + self.delta(x)
        low = F.linear(self.lora_dropout(x), self.lora_A)
        flat_out = output.reshape(-1, output.shape[-1])
        flat_low = low.reshape(-1, low.shape[-1])
        if not output.is_contiguous() or (
            torch.is_grad_enabled() and (output.requires_grad or self.lora_B.requires_grad)
        ):
            return torch.addmm(flat_out, flat_low, self.lora_B.t(), alpha=self.scaling).view_as(output)
        flat_out.addmm_(flat_low, self.lora_B.t(), alpha=self.scaling)
        return output

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B @ A``, the update in weight space (out x in)."""
        if not self.fused:
            return (self.lora_B @ self.lora_A) * self.scaling
        in_features = self.lora_A.shape[1]
        parts = [
            pair[1] @ pair[0] if pair is not None else self.lora_A.new_zeros(self.slice_size, in_features)
            for pair in self._pairs()
        ]
        return torch.cat(parts, dim=0) * self.scaling
