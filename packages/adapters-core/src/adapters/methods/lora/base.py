"""What every LoRA-family module shares: fused-slice bookkeeping, dropout and the optional gate."""

from __future__ import annotations

import torch
from torch import nn

from ...configs.lora import LoRAConfig


class LoRAFamilyModule(nn.Module):
    """Base of the modules that adapt one linear layer (LoRA, VeRA, (IA)^3).

    On a fused linear (``slices`` given: one flag per contiguous, equal output slice, e.g. q/k/v)
    the module adapts the enabled slices only; ``rows`` is the number of output rows it adapts
    (``slice_size * n_enabled``), which is the first dimension of its per-row tensors, as in
    the reference format. With ``use_gating`` a linear layer ``gate`` (in -> one value per
    enabled slice) computes ``mean over positions of sigmoid(gate(x))`` per example; that gate
    replaces the fixed ``scaling`` (UniPELT).
    """

    def __init__(
        self, in_features: int, out_features: int, config: LoRAConfig, slices: tuple[bool, ...] | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.in_features = in_features
        self.out_features = out_features
        self.scaling = config.scaling
        self.slices = tuple(slices) if slices is not None else None
        self.n_pairs, self.slice_size = 1, out_features
        if self.slices is not None:
            if out_features % len(self.slices) or not any(self.slices):
                raise ValueError(f"cannot split {out_features} outputs into slices {self.slices}")
            self.slice_size = out_features // len(self.slices)
            self.n_pairs = sum(self.slices)
        self.rows = self.slice_size * self.n_pairs
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.gate: nn.Linear | None = None
        if config.use_gating:
            self.gate = nn.Linear(in_features, self.n_pairs)
            nn.init.normal_(self.gate.weight, std=0.02)

    @property
    def fused(self) -> bool:
        return self.slices is not None

    def expand_rows(self, values: torch.Tensor, fill: float) -> torch.Tensor:
        """Per-row values of the enabled slices (last dim ``rows``) to all ``out_features`` rows."""
        if not self.fused or self.rows == self.out_features:
            return values
        parts, g = [], 0
        for enabled in self.slices:
            if enabled:
                parts.append(values[..., g * self.slice_size : (g + 1) * self.slice_size])
                g += 1
            else:
                parts.append(values.new_full((*values.shape[:-1], self.slice_size), fill))
        return torch.cat(parts, dim=-1)

    def gate_values(self, layer_input: torch.Tensor) -> torch.Tensor:
        """The gate per example, shaped to broadcast against the layer output (fused: per row)."""
        gate = torch.sigmoid(self.gate(layer_input))
        if gate.dim() > 2:
            # The reference averages over the sequence positions (padding included).
            gate = gate.mean(dim=tuple(range(1, gate.dim() - 1)), keepdim=True)
        if not self.fused:
            return gate
        return self.expand_rows(gate.repeat_interleave(self.slice_size, dim=-1), fill=1.0)

    def factor(self, layer_input: torch.Tensor) -> torch.Tensor | float:
        """What multiplies the raw update: the gate when gated, else the fixed ``scaling``."""
        return self.gate_values(layer_input) if self.gate is not None else self.scaling
