"""VeRA (Kopiczko et al., 2024): shared frozen random matrices, trainable vectors per layer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...configs.lora import LoRAConfig
from ...errors import AdapterError, AdapterLoadError
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
    adapted output row): *vector mode*, the default for adapters created here.

    The reference library learns ``d`` and ``b`` as square matrices (``vera_D`` r x r, ``vera_B``
    out x out, initialised diagonal), so training moves their off-diagonal entries too. A file
    holding such matrices puts the module in *full mode* (:meth:`use_full_matrices`, chosen at load
    time for the whole adapter, see :func:`convert_saved_vera`): the update is then the
    reference's ``vera_B @ lora_B @ vera_D @ lora_A`` (times ``scaling``), and the module saves the
    square matrices back as the reference does. Computed as ``x -> (vera_B @ lora_B) ((vera_D @
    lora_A) x)``: the two small products are formed once per call, so each position costs
    ``r * (in + out)`` multiply-adds as in vector mode. On a fused linear (one pair per enabled
    slice, which the reference cannot run) full mode uses ``vera_D`` over the stacked ``d`` of all
    pairs and ``vera_B`` over all adapted rows, which is vector mode's update when both are diagonal.

    Example:
        >>> from adapters import VeraConfig
        >>> shared = VeRAShared(8, 16, 16, "vera")
        >>> vera = VeRA(16, 16, VeraConfig(), shared)
        >>> sum(p.numel() for p in vera.parameters())  # r + out values
        24
        >>> vera.use_full_matrices()
        >>> vera.vera_D.shape, vera.vera_B.shape  # the reference's square matrices
        (torch.Size([8, 8]), torch.Size([16, 16]))
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
        self.full = False
        self.vera_D = nn.Parameter(torch.full((config.r * self.n_pairs,), float(config.vera_d)))
        self.vera_B = nn.Parameter(torch.full((self.rows,), float(config.vera_b)))

    @property
    def shared(self) -> VeRAShared:
        return self._shared[0]

    def use_full_matrices(self) -> None:
        """Switch to full mode: ``vera_D``/``vera_B`` become square matrices (``diag`` of the vectors).

        The update is unchanged by the switch; from then on every entry of both matrices counts
        (and trains). ``requires_grad``, device and dtype are kept. Doing it twice changes nothing.
        """
        if self.full:
            return
        for key in ("vera_D", "vera_B"):
            old = getattr(self, key)
            square = torch.diag(old.detach()).clone()
            setattr(self, key, nn.Parameter(square, requires_grad=old.requires_grad))
        self.full = True

    def _matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        shared = self.shared
        return shared.lora_A[:, : self.in_features], shared.lora_B[: self.slice_size]

    def _vectors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        r, d = self.config.r, self.slice_size
        return [(self.vera_D[g * r : (g + 1) * r], self.vera_B[g * d : (g + 1) * d]) for g in range(self.n_pairs)]

    def _full_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Full mode: ``vera_D @ A`` (r*n x in) and ``vera_B @ B`` (rows x r*n), A and B per pair stacked."""
        a, b = self._matrices()
        if self.n_pairs > 1:
            a = a.repeat(self.n_pairs, 1)
            b = torch.block_diag(*([b] * self.n_pairs))
        return self.vera_D @ a, self.vera_B @ b

    def raw_update(self, x: torch.Tensor) -> torch.Tensor:
        if self.full:
            down, up = self._full_factors()
            return F.linear(F.linear(x, down), up)
        a, b = self._matrices()
        low = F.linear(x, a)
        if self.n_pairs == 1:
            return F.linear(low * self.vera_D, b) * self.vera_B
        return torch.cat([F.linear(low * dv, b) * bv for dv, bv in self._vectors()], dim=-1)

    def pair_weights(self) -> list[torch.Tensor]:
        if self.full:
            down, up = self._full_factors()
            return list(torch.split(up @ down, self.slice_size, dim=0))
        a, b = self._matrices()
        return [(bv.unsqueeze(1) * b) @ (dv.unsqueeze(1) * a) for dv, bv in self._vectors()]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        # average_adapter fills the new (vector-mode) adapter through load_state_dict; square matrices
        # arrive only if a full-mode adapter took part, and then any vector-mode one among the sources
        # was broadcast against them, which averages no function. So they are refused, not loaded.
        incoming = [state_dict.get(prefix + key) for key in ("vera_D", "vera_B")]
        if not self.full and any(t is not None and t.dim() == 2 for t in incoming):
            raise AdapterError(
                "A VeRA module that holds vectors got square d/b matrices through load_state_dict. That happens "
                "when average_adapter includes a VeRA adapter with full matrices (loaded from a file the reference "
                "library trained, whose off-diagonal entries are not zero): averaging combines the adapters tensor "
                "by tensor without knowing which hold full matrices and which hold vectors, so such adapters "
                "cannot be averaged. Average VeRA adapters created with this library; load reference files with "
                "load_adapter."
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)


def _off_diagonal(matrix: torch.Tensor, key: str) -> float:
    """The largest off-diagonal magnitude of a square VeRA matrix (refuses other shapes)."""
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise AdapterLoadError(f"{key} has shape {tuple(matrix.shape)}; expected a vector or a square matrix")
    if not matrix.numel():
        return 0.0
    return (matrix - torch.diag(torch.diagonal(matrix))).abs().max().item()


def convert_saved_vera(
    modules: list[tuple[VeRA, str, str]], tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Read the ``vera_D``/``vera_B`` of one adapter's file (``modules``: module, saved key of D, of B).

    This library's files hold vectors, which load as they are. The reference's hold square
    matrices: when every one of them is diagonal, their diagonals are the vectors (vector mode);
    when any has a non-zero off-diagonal entry (the reference trained them), every VeRA module of
    the adapter switches to full mode and takes the matrices as they are (a vector in such a file
    becomes its ``diag``). Returns the tensors to load; switches the modules in place.
    """
    tensors = dict(tensors)
    full = any(
        _off_diagonal(tensors[key], key) > 0
        for _, *keys in modules
        for key in keys
        if key in tensors and tensors[key].dim() != 1
    )
    for module, *keys in modules:
        if full:
            module.use_full_matrices()
        for key in keys:
            value = tensors.get(key)
            if value is None:
                continue
            if full and value.dim() == 1:
                tensors[key] = torch.diag(value)
            elif not full and value.dim() == 2:
                tensors[key] = torch.diagonal(value).clone()
    return tensors
