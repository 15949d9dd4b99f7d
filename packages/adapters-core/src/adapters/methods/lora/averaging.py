"""LoRA-only ways of averaging adapters (``average_adapter`` strategies beyond ``linear``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .layer import LoRA


@torch.no_grad()
def negate_b_average(target: LoRA, sources: Sequence[LoRA], weights: Sequence[float]) -> None:
    """``A = sum |w_i| A_i`` and ``B = sum w_i B_i``: a negative weight flips only B (Zhang et al., 2023)."""
    target.lora_A.copy_(sum(abs(w) * s.lora_A for s, w in zip(sources, weights, strict=True)))
    target.lora_B.copy_(sum(w * s.lora_B for s, w in zip(sources, weights, strict=True)))


@torch.no_grad()
def svd_average(
    target: LoRA,
    sources: Sequence[LoRA],
    weights: Sequence[float],
    combine: Callable[[list[torch.Tensor], Sequence[float]], torch.Tensor] | None = None,
) -> None:
    """Factor the weighted sum of the sources' updates ``sum w_i * dW_i`` to the target's rank by SVD.

    As in the reference library ``A`` gets the right singular vectors and ``B`` the left ones
    times the singular values. Unlike the reference, the target's own ``scaling`` (``alpha / r``
    with the new rank) is divided out, so ``target.delta_weight()`` is the truncation of the
    weighted sum itself, and equals it when the rank is full. ``combine`` replaces the weighted
    sum of the scaled updates (PEFT's ``ties_svd``, ``dare_linear_svd``, ...).
    """
    rank = target.config.r
    compute = torch.float64 if target.lora_A.device.type == "cpu" else torch.float32
    per_source = [s.pair_weights() for s in sources]
    a_parts, b_parts = [], []
    for g in range(target.n_pairs):
        updates = [s.scaling * pairs[g].to(compute) for s, pairs in zip(sources, per_source, strict=True)]
        if combine is None:
            summed = sum(w * update for update, w in zip(updates, weights, strict=True))
        else:
            summed = combine(updates, weights)
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


# -- PEFT's merging methods (``add_weighted_adapter``) ------------------------------------------------
# Each combines task tensors t_i (stacked on dim 0) with weights w_i into one tensor. ``density`` is
# the fraction of each tensor's entries kept.


def keep_largest(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """``tensor`` with all but its ``int(density * numel)`` largest-magnitude entries set to zero."""
    if density >= 1:
        return tensor
    kept = int(density * tensor.numel())
    mask = torch.zeros(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
    mask[torch.topk(tensor.abs().reshape(-1), k=kept).indices] = 1
    return tensor * mask.view_as(tensor)


def drop_and_rescale(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """DARE (Yu et al., 2024): drop each entry with probability ``1 - density``, divide the rest by ``density``.

    The mask is drawn from torch's global random generator (``torch.manual_seed`` makes it reproducible).
    """
    if density >= 1:
        return tensor
    # Drawn in float32 whatever the tensor's dtype, so a seed gives the same mask in float64 (the
    # SVD strategies' updates) as in the weights' own dtype.
    keep = torch.bernoulli(torch.full(tensor.shape, density, dtype=torch.float32, device=tensor.device))
    return tensor * keep.to(tensor.dtype) / density


def elected_sign_mean(tensors: torch.Tensor, weights: torch.Tensor, sign_method: str) -> torch.Tensor:
    """TIES-Merging's elect and disjoint-merge steps (Yadav et al., 2023).

    Each entry's sign is elected from the (unweighted) task tensors: the sign of their sum
    (``total``) or the more frequent sign (``frequency``), positive on ties. The weighted entries
    that agree with it are averaged; an entry no tensor agrees with is zero.
    """
    signs = tensors.sign()
    votes = tensors.sum(dim=0) if sign_method == "total" else signs.sum(dim=0)
    elected = torch.where(votes >= 0, 1.0, -1.0).to(tensors.dtype)
    agree = (signs == elected).to(tensors.dtype)
    weighted = tensors * weights.view(-1, *([1] * (tensors.dim() - 1)))
    return (weighted * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1.0)


def merge_task_tensors(
    tensors: Sequence[torch.Tensor], weights: Sequence[float], method: str, density: float, sign_method: str
) -> torch.Tensor:
    """``method`` (``linear``, ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune``) of ``tensors``."""
    if method in ("ties", "magnitude_prune"):
        tensors = [keep_largest(t, density) for t in tensors]
    elif method in ("dare_linear", "dare_ties"):
        tensors = [drop_and_rescale(t, density) for t in tensors]
    stacked = torch.stack(list(tensors), dim=0)
    weight = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device)
    if method in ("ties", "dare_ties"):
        return elected_sign_mean(stacked, weight, sign_method)
    return (stacked * weight.view(-1, *([1] * (stacked.dim() - 1)))).sum(dim=0)


@torch.no_grad()
def factorwise_merge(
    target: LoRA, sources: Sequence[LoRA], weights: Sequence[float], method: str, density: float, sign_method: str
) -> None:
    """PEFT's ``linear``/``ties``/``dare_*``/``magnitude_prune`` for LoRA: ``A`` and ``B`` merged separately.

    As in PEFT's ``add_weighted_adapter``, source ``i`` enters both factors with
    ``sqrt(|w_i * scaling_i|)``, its sign on ``A`` only, so a negative weight subtracts the adapter.
    The product of merged factors is not the weighted sum of the updates (cross terms remain);
    ``cat`` and the ``*_svd`` methods combine the updates themselves.
    """
    scaled = [w * s.scaling for s, w in zip(sources, weights, strict=True)]
    a_weights = [math.copysign(math.sqrt(abs(v)), v) for v in scaled]
    b_weights = [math.sqrt(abs(v)) for v in scaled]
    merged_a = merge_task_tensors([s.lora_A for s in sources], a_weights, method, density, sign_method)
    merged_b = merge_task_tensors([s.lora_B for s in sources], b_weights, method, density, sign_method)
    target.lora_A.copy_(merged_a)
    # PEFT's merged adapter has scaling 1; the target keeps its config's, so B carries the difference.
    target.lora_B.copy_(merged_b / target.scaling)


@torch.no_grad()
def concatenate(target: LoRA, sources: Sequence[LoRA], weights: Sequence[float]) -> None:
    """PEFT's ``cat``: the sources' pairs side by side, so the update is exactly ``sum w_i * scaling_i * B_i A_i``.

    The target's rank is the sum of the sources' ranks; per slice of a fused linear,
    ``A = [w_1 s_1 A_1; w_2 s_2 A_2; ...] / scaling`` and ``B = [B_1, B_2, ...]``.
    """
    a_parts, b_parts = [], []
    for g in range(target.n_pairs):
        a_parts.append(
            torch.cat([w * s.scaling * _pair_a(s, g) for s, w in zip(sources, weights, strict=True)], dim=0)
            / target.scaling
        )
        b_parts.append(torch.cat([_pair_b(s, g) for s in sources], dim=1))
    target.lora_A.copy_(torch.cat(a_parts, dim=0))
    target.lora_B.copy_(torch.cat(b_parts, dim=0))


def _pair_a(module: LoRA, pair: int) -> torch.Tensor:
    rank = module.lora_A.shape[0] // module.n_pairs
    return module.lora_A[pair * rank : (pair + 1) * rank]


def _pair_b(module: LoRA, pair: int) -> torch.Tensor:
    rows = module.lora_B.shape[0] // module.n_pairs
    return module.lora_B[pair * rows : (pair + 1) * rows]
