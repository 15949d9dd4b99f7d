"""(IA)^3 (Liu et al., 2022): a learned vector rescales a linear layer's output."""

from __future__ import annotations

import torch
from torch import nn

from ...configs.lora import LoRAConfig
from .base import LoRAFamilyModule


class IA3(LoRAFamilyModule):
    """``y = (W x + b) * (alpha * l)``, with ``l`` stored as ``lora_B`` (rows x 1) as in the reference format.

    As in the reference library the scaling acts on the linear's output (bias included); on the
    FFN input that is before the activation. With a gate, ``alpha`` is replaced by the gate.

    Example:
        >>> from adapters import IA3Config
        >>> ia3 = IA3(16, 8, IA3Config())
        >>> ia3.lora_B.shape, bool((ia3.weight_scale() == 1).all())
        (torch.Size([8, 1]), True)
    """

    composition_mode = "scale"

    def __init__(
        self, in_features: int, out_features: int, config: LoRAConfig, slices: tuple[bool, ...] | None = None
    ) -> None:
        super().__init__(in_features, out_features, config, slices)
        self.lora_B = nn.Parameter(torch.empty(self.rows, 1))
        with torch.no_grad():
            if config.init_weights == "ia3":
                nn.init.ones_(self.lora_B)
            elif config.init_weights == "bert":
                nn.init.normal_(self.lora_B, std=0.02)
            else:  # "lora": zeros, as the reference does for this (unusual) choice
                nn.init.zeros_(self.lora_B)

    def scale_vector(self, layer_input: torch.Tensor) -> torch.Tensor:
        """What the output is multiplied by (per row; per example too when gated)."""
        vector = self.lora_B.view(-1)
        if self.gate is not None:
            return self.expand_rows(vector, fill=1.0) * self.gate_values(layer_input)
        return self.expand_rows(vector * self.scaling, fill=1.0)

    def weight_scale(self) -> torch.Tensor:
        """The per-row factor that merging multiplies the weight and bias by (ungated only)."""
        return self.expand_rows(self.lora_B.view(-1) * self.scaling, fill=1.0)

    def apply(self, output: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        scale = self.scale_vector(x)
        if torch.is_grad_enabled() and (output.requires_grad or scale.requires_grad):
            return output * scale
        return output.mul_(scale)
