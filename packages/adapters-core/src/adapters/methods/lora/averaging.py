"""LoRA-only ways of averaging adapters (``average_adapter`` strategies beyond ``linear``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .layer import LoRA


@torch.no_grad()
def negate_b_average(target: LoRA, sources: Sequence[LoRA], weights: Sequence[float]) -> None:
    """``A = sum |w_i| A_i`` and ``B = sum w_i B_i``: a negative weight flips only B (Zhang et al., 2023)."""
    target.lora_A.copy_(sum(abs(w) * s.lora_A for s, w in zip(sources, weights, strict=True)))
    target.lora_B.copy_(sum(w * s.lora_B for s, w in zip(sources, weights, strict=True)))


@torch.no_grad()
def svd_average(target: LoRA, sources: Sequence[LoRA], weights: Sequence[float]) -> None:
    """Factor the weighted sum of the sources' updates ``sum w_i * dW_i`` to the target's rank by SVD.

    As in the reference library ``A`` gets the right singular vectors and ``B`` the left ones
    times the singular values. Unlike the reference, the target's own ``scaling`` (``alpha / r``
    with the new rank) is divided out, so ``target.delta_weight()`` is the truncation of the
    weighted sum itself, and equals it when the rank is full.
    """
    rank = target.config.r
    compute = torch.float64 if target.lora_A.device.type == "cpu" else torch.float32
    per_source = [s.pair_weights() for s in sources]
    a_parts, b_parts = [], []
    for g in range(target.n_pairs):
        summed = sum(
            w * s.scaling * pairs[g].to(compute) for s, pairs, w in zip(sources, per_source, weights, strict=True)
        )
        u, singular, vh = torch.linalg.svd(summed, full_matrices=False)
        k = min(rank, singular.numel())
        a = summed.new_zeros(rank, summed.shape[1])
        b = summed.new_zeros(summed.shape[0], rank)
        a[:k] = vh[:k]
        b[:, :k] = u[:, :k] * singular[:k] / target.scaling
        a_parts.append(a)
        b_parts.append(b)
    target.lora_A.copy_(torch.cat(a_parts, dim=0))
    target.lora_B.copy_(torch.cat(b_parts, dim=0))
