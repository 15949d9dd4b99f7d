"""The LoRA module: ``delta(x) = (alpha / r) * B @ A @ dropout(x)``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...configs.lora import LoRAConfig


class LoRA(nn.Module):
    """Low-rank update of one linear layer; ``lora_A`` is (r x in), ``lora_B`` (out x r)."""

    def __init__(self, in_features: int, out_features: int, config: LoRAConfig) -> None:
        super().__init__()
        self.config = config
        self.scaling = config.alpha / config.r
        self.lora_A = nn.Parameter(torch.empty(config.r, in_features))
        self.lora_B = nn.Parameter(torch.empty(out_features, config.r))
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

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The update to add to the linear layer's output (scaling included)."""
        return F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B @ A``, the update in weight space (out x in)."""
        return (self.lora_B @ self.lora_A) * self.scaling
