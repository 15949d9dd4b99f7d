"""Invertible adapters (MAD-X, Pfeiffer et al. 2020): coupling blocks with an exact inverse.

An invertible adapter transforms the embedding output and its inverse is applied to the hidden
states right before the (tied) output embeddings. The hidden size ``C`` is split into
``x1 = x[..., :C//2]`` and ``x2 = x[..., C//2:]``; each ``subnet`` is
``Linear(d, d // reduction) -> activation -> Linear(d // reduction, d_out)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ...configs.bottleneck import bottleneck_size
from .layer import activation


def _subnet(d_in: int, d_out: int, non_linearity: str, reduction_factor: float) -> nn.Sequential:
    hidden = bottleneck_size(d_in, reduction_factor, "inv_adapter_reduction_factor")
    return nn.Sequential(nn.Linear(d_in, hidden), activation(non_linearity), nn.Linear(hidden, d_out))


def _init_bert(module: nn.Module) -> None:
    # The reference initialises invertible adapters like BERT: N(0, 0.02) weights, zero biases.
    with torch.no_grad():
        for child in module.modules():
            if isinstance(child, nn.Linear):
                child.weight.normal_(0.0, 0.02)
                child.bias.zero_()


class InvertibleAdapter(nn.Module):
    """Base class: ``forward`` is the transform after the embeddings, ``inverse`` undoes it."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.split = size // 2

    def _halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[..., : self.split], x[..., self.split :]

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class NICECoupling(InvertibleAdapter):
    """NICE additive coupling (Dinh et al., 2015): ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``.

    The inverse is ``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``; weight keys ``F.0``, ``F.2``,
    ``G.0``, ``G.2`` as in the reference format.

    Example:
        >>> import torch
        >>> block = NICECoupling(32, "relu", 2)
        >>> x = torch.randn(2, 5, 32)
        >>> torch.allclose(block.inverse(block(x)), x, atol=1e-6)
        True
    """

    def __init__(self, size: int, non_linearity: str, reduction_factor: float) -> None:
        super().__init__(size)
        rest = size - self.split
        self.F = _subnet(rest, self.split, non_linearity, reduction_factor)
        self.G = _subnet(self.split, rest, non_linearity, reduction_factor)
        _init_bert(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self._halves(x)
        y1 = x1 + self.F(x2)
        return torch.cat((y1, x2 + self.G(y1)), dim=-1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = self._halves(y)
        x2 = y2 - self.G(y1)
        return torch.cat((y1 - self.F(x2), x2), dim=-1)


class GLOWCoupling(InvertibleAdapter):
    """GLOW affine coupling (Kingma & Dhariwal, 2018), soft-clamped as in FrEIA.

    ``[s2, t2] = S2(x2)``, ``y1 = e(s2) * x1 + t2``; ``[s1, t1] = S1(y1)``,
    ``y2 = e(s1) * x2 + t1`` with ``e(s) = exp(clamp * 0.636 * atan(s / clamp))``. The inverse
    runs the steps backwards. Weight keys ``s1.*``, ``s2.*`` and shapes are those of the reference
    format; the reference library's own GLOW forward fails on (batch, seq, hidden) inputs, so its
    outputs cannot be compared.

    Example:
        >>> import torch
        >>> block = GLOWCoupling(32, "relu", 2)
        >>> x = torch.randn(2, 5, 32)
        >>> torch.allclose(block.inverse(block(x)), x, atol=1e-6)
        True
    """

    clamp = 5.0

    def __init__(self, size: int, non_linearity: str, reduction_factor: float) -> None:
        super().__init__(size)
        self.rest = size - self.split
        self.s1 = _subnet(self.split, 2 * self.rest, non_linearity, reduction_factor)
        self.s2 = _subnet(self.rest, 2 * self.split, non_linearity, reduction_factor)
        _init_bert(self)

    def _log_e(self, s: torch.Tensor) -> torch.Tensor:
        return self.clamp * 0.636 * torch.atan(s / self.clamp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self._halves(x)
        s2, t2 = self.s2(x2).split((self.split, self.split), dim=-1)
        y1 = torch.exp(self._log_e(s2)) * x1 + t2
        s1, t1 = self.s1(y1).split((self.rest, self.rest), dim=-1)
        return torch.cat((y1, torch.exp(self._log_e(s1)) * x2 + t1), dim=-1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = self._halves(y)
        s1, t1 = self.s1(y1).split((self.rest, self.rest), dim=-1)
        x2 = (y2 - t1) * torch.exp(-self._log_e(s1))
        s2, t2 = self.s2(x2).split((self.split, self.split), dim=-1)
        return torch.cat(((y1 - t2) * torch.exp(-self._log_e(s2)), x2), dim=-1)


INVERTIBLE_ADAPTERS: dict[str, type[InvertibleAdapter]] = {"nice": NICECoupling, "glow": GLOWCoupling}


def invertible_adapter(kind: str, size: int, non_linearity: str, reduction_factor: float) -> InvertibleAdapter:
    """Build the invertible adapter ``kind`` ("nice" or "glow") for hidden states of ``size``."""
    return INVERTIBLE_ADAPTERS[kind](size, non_linearity, reduction_factor)
