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
is read as the sign of the stored value, times a per-row integer ``scale`` (a buffer that is not
saved; 1 for a new adapter), so weight decay cannot switch ``R`` off.

Files still mean what torch makes of them. A saved diagonal ``d`` is split on load into its sign
(kept in ``original``) and ``|trunc(d)|`` (the scale), so a reference file whose diagonal was
trained with weight decay (``-0.93``: row 0) or noised (``2.5``: row doubled) computes here what
it computes in the reference; the state dict holds ``sign * scale``, integers that torch's
``.int()`` reads back exactly, so our files compute in the reference what they compute here.
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
    diagonal and signs on it; ``H(A)`` is their product's first r columns times the signs and
    ``scale`` (integers, not saved: see :func:`split_saved_diagonal`).
    """

    base: torch.Tensor
    scale: torch.Tensor

    def __init__(self, r: int) -> None:
        super().__init__()
        self.register_buffer("base", None)
        # An integer buffer: model.half() and friends leave it alone.
        self.register_buffer("scale", torch.ones(r, dtype=torch.int32), persistent=False)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        # Householder products and QR have no half-precision kernels (CUDA: "orgqr_cuda not
        # implemented for BFloat16"): compute R in float32 and hand it back in the parameter's dtype.
        if original.dtype in _HALF:
            return self._rows(original.float(), self.base.float(), self.scale).to(original.dtype)
        return self._rows(original, self.base, self.scale)

    @staticmethod
    def _rows(original: torch.Tensor, base: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        tall = original.mT
        reflectors = tall.tril(diagonal=-1)
        tau = 2.0 / (1.0 + (reflectors * reflectors).sum(dim=-2))
        q = torch.linalg.householder_product(reflectors, tau)
        # The signs carry no gradient (as in torch) and stay +-1 whatever the stored value is.
        factors = _signs(tall.diagonal(dim1=-2, dim2=-1).detach()) * scale.to(q.dtype)
        return (base @ (q * factors.unsqueeze(-2))).mT

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
    parametrize.register_parametrization(projection, "weight", OrthonormalRows(r))
    return projection


def saved_original(original: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A copy of ``original`` with ``sign * scale`` on its diagonal: integers, which torch's ``.int()`` reads back."""
    fixed = original.detach().clone()
    diagonal = fixed.diagonal()
    diagonal.copy_(_signs(diagonal) * scale.to(device=diagonal.device, dtype=diagonal.dtype))
    return fixed


@torch.no_grad()
def split_saved_diagonal(original: torch.Tensor, scale: torch.Tensor) -> None:
    """Read a loaded ``original`` as torch does: its diagonal ``d`` gives row i of R the factor ``trunc(d_i)``.

    Keeps ``sign(d)`` on the diagonal of ``original`` and writes ``|trunc(d)|`` into ``scale`` (both in place).
    """
    diagonal = original.diagonal()
    scale.copy_(diagonal.trunc().abs().to(scale.dtype))
    diagonal.copy_(_signs(diagonal))


def _signs(diagonal: torch.Tensor) -> torch.Tensor:
    return torch.where(diagonal < 0, -1.0, 1.0).to(diagonal.dtype)
