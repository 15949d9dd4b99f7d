"""An orthonormal-rows projection stored like ``torch.nn.utils.parametrizations.orthogonal``.

The reference library parametrizes LoReFT's ``R`` with torch's ``orthogonal`` (Householder map,
with trivialization), so its files hold ``projection.parametrizations.weight.original`` (the
Householder reflectors, whose diagonal is a vector of signs) and
``projection.parametrizations.weight.0.base`` (a full orthogonal matrix). We store the same
tensors and compute the same matrix, with one difference that makes LoReFT trainable:

torch reads the sign diagonal with ``.int()``, which truncates towards zero. Anything that moves
the diagonal off exactly +-1 (decoupled weight decay in ``torch.optim.AdamW``, whose default is
0.01, or noise added to the parameters) turns those signs into 0, so ``R`` becomes the zero
matrix, the intervention the identity, and no gradient ever reaches ``R`` again. With AdamW the
reference's LoReFT dies at the first optimizer step and the model stays at chance. Here a sign
is read as the sign of the stored value, and the state dict always holds exact +-1 signs, so
our files also work in the reference library.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

ORIGINAL_KEY = "parametrizations.weight.original"
_HALF = (torch.float16, torch.bfloat16)


class OrthonormalRows(nn.Module):
    """Parametrization of an (r x d) weight, r <= d, with orthonormal rows: ``(base @ H(A))^T``.

    ``A`` (the stored ``original``, transposed to d x r) holds Householder reflectors below its
    diagonal and signs on it; ``H(A)`` is their product's first r columns times the signs.
    """

    base: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("base", None)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        # Householder products and QR have no half-precision kernels (CUDA: "orgqr_cuda not
        # implemented for BFloat16"): compute R in float32 and hand it back in the parameter's dtype.
        if original.dtype in _HALF:
            return self._rows(original.float(), self.base.float()).to(original.dtype)
        return self._rows(original, self.base)

    @staticmethod
    def _rows(original: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        tall = original.mT
        reflectors = tall.tril(diagonal=-1)
        tau = 2.0 / (1.0 + (reflectors * reflectors).sum(dim=-2))
        q = torch.linalg.householder_product(reflectors, tau)
        # The signs carry no gradient (as in torch) and stay +-1 whatever the stored value is.
        q = q * _signs(tall.diagonal(dim1=-2, dim2=-1).detach()).unsqueeze(-2)
        return (base @ q).mT

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        # Complete weight^T to a d x d orthogonal basis (its first r columns span the rows of
        # weight); the reflectors start at zero and the signs at -1, which makes H the identity.
        d, r = weight.shape[1], weight.shape[0]
        work = torch.float32 if weight.dtype in _HALF else weight.dtype
        filler = torch.randn(d, d - r, dtype=work, device=weight.device)
        q, triangular = torch.linalg.qr(torch.cat([weight.mT.to(work), filler], dim=-1))
        self.base = (q * _signs(triangular.diagonal()).unsqueeze(-2)).to(weight.dtype)
        original = torch.zeros_like(weight)
        original.diagonal().fill_(-1.0)
        return original


def orthonormal_projection(in_features: int, r: int, dtype: torch.dtype | None = None) -> nn.Linear:
    """A bias-less ``Linear(in_features, r)`` whose weight has orthonormal rows.

    Starts from nn.Linear's own initialisation, orthonormalised (as the reference does).
    """
    if r > in_features:
        raise ValueError(f"an orthonormal projection needs r <= {in_features}, got r={r}")
    projection = nn.Linear(in_features, r, bias=False, dtype=dtype)
    parametrize.register_parametrization(projection, "weight", OrthonormalRows())
    return projection


def canonical_signs(original: torch.Tensor) -> torch.Tensor:
    """A copy of ``original`` whose diagonal is exactly +-1 (what readers of the file expect)."""
    fixed = original.detach().clone()
    diagonal = fixed.diagonal()
    diagonal.copy_(_signs(diagonal))
    return fixed


def _signs(diagonal: torch.Tensor) -> torch.Tensor:
    return torch.where(diagonal < 0, -1.0, 1.0).to(diagonal.dtype)
