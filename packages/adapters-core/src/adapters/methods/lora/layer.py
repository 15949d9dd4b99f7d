"""Additive updates of a linear layer: LoRA, and the DoRA rescaling any additive update may carry."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...configs.lora import LoRAConfig
from .base import LoRAFamilyModule


class Magnitude(nn.Module):
    """DoRA's magnitude vector, stored as the reference does: ``m.weight`` of shape (rows x 1)."""

    def __init__(self, row_norms: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(row_norms.detach().clone().unsqueeze(1))


class AdditiveModule(LoRAFamilyModule):
    """An update ``delta(x)`` added to the linear's output; with DoRA (``m``) the sum is rescaled.

    Subclasses define the raw update (``raw_update``) and its weight-space form per enabled
    slice (``pair_weights``), both without ``scaling``. DoRA follows the reference library:
    ``y = m / ||W + dW||_row * (W x + b + scaling * dW x)`` with ``dW`` the unscaled update and
    the norm not detached (so the bias is rescaled too, and the norm uses ``dW`` without
    ``scaling``; both matter only when a bias exists or ``alpha != r``). ``W`` is always taken as
    ``(out, in)``, so the norms are over each output's weights for ``Conv1D`` layers too.
    """

    composition_mode = "add"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: LoRAConfig,
        slices: tuple[bool, ...] | None = None,
        weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__(in_features, out_features, config, slices)
        self.m: Magnitude | None = None
        if config.use_dora:
            if weight is None:
                raise ValueError("DoRA needs the linear layer's weight to initialise its magnitude")
            # m starts at ||W||_row, so with a zero update the adapter is a no-op.
            self.m = Magnitude(torch.linalg.norm(self.select_rows(weight.detach().float()), dim=1).to(weight.dtype))

    # -- to define in subclasses -------------------------------------------------------------
    def raw_update(self, x: torch.Tensor) -> torch.Tensor:
        """The unscaled update of the enabled rows (last dim ``rows``)."""
        raise NotImplementedError

    def pair_weights(self) -> list[torch.Tensor]:
        """The unscaled weight update of each enabled slice (``slice_size x in`` each)."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------
    def select_rows(self, full: torch.Tensor) -> torch.Tensor:
        """The enabled slices' rows of a (out x ...) tensor."""
        if not self.fused:
            return full
        size = self.slice_size
        return torch.cat([full[i * size : (i + 1) * size] for i, on in enumerate(self.slices) if on], dim=0)

    def delta(self, x: torch.Tensor, layer_input: torch.Tensor | None = None) -> torch.Tensor:
        """The update to add to the linear layer's output (``scaling`` or gate included).

        ``layer_input`` is the linear's own input, which drives the gate; in a Stack ``x`` is
        the previous adapter's update instead.
        """
        update = self.expand_rows(self.raw_update(self.lora_dropout(x)), fill=0.0)
        return update * self.factor(x if layer_input is None else layer_input)

    def delta_weight(self, scaled: bool = True) -> torch.Tensor:
        """The update in weight space (out x in; zero rows for disabled slices)."""
        rows = torch.cat(self.pair_weights(), dim=0)
        full = self.expand_rows(rows.t(), fill=0.0).t()
        return full * self.scaling if scaled else full

    def dora_scale(self, weight: torch.Tensor) -> torch.Tensor:
        """``m / ||W + dW||_row`` for every output row (1 for rows of disabled slices)."""
        norm = torch.linalg.norm(self.select_rows(weight) + torch.cat(self.pair_weights(), dim=0), dim=1)
        return self.expand_rows(self.m.weight.view(-1) / norm, fill=1.0)

    def apply(self, output: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The adapted output of the linear layer, given its plain output, input and weight."""
        if self.m is not None:
            return (output + self.delta(x)) * self.dora_scale(weight)
        return output + self.delta(x)


class LoRA(AdditiveModule):
    """Low-rank update ``scaling * B @ A``; ``lora_A`` is (r x in), ``lora_B`` (out x r).

    On a fused linear there is one low-rank pair per enabled slice, stored as in the reference
    library: ``lora_A`` is (r * n_enabled x in) and ``lora_B`` (slice_size * n_enabled x r);
    pair ``g`` is ``lora_B[g*d:(g+1)*d] @ lora_A[g*r:(g+1)*r]``.

    Example:
        >>> from adapters import LoRAConfig
        >>> lora = LoRA(16, 8, LoRAConfig(r=2))
        >>> lora.lora_A.shape, lora.lora_B.shape, lora.delta_weight().shape
        (torch.Size([2, 16]), torch.Size([8, 2]), torch.Size([8, 16]))
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: LoRAConfig,
        slices: tuple[bool, ...] | None = None,
        weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__(in_features, out_features, config, slices, weight)
        self.lora_A = nn.Parameter(torch.empty(config.r * self.n_pairs, in_features))
        self.lora_B = nn.Parameter(torch.empty(self.rows, config.r))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            init = self.config.init_weights
            if init == "lora":
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
                nn.init.zeros_(self.lora_B)
            elif init == "bert":
                nn.init.normal_(self.lora_A, std=0.02)
                nn.init.normal_(self.lora_B, std=0.02)
            elif init == "ia3":
                nn.init.ones_(self.lora_A)
                nn.init.ones_(self.lora_B)
            else:  # "vera": both random, as the reference initialises them
                nn.init.kaiming_uniform_(self.lora_A)
                nn.init.kaiming_uniform_(self.lora_B)

    def _pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        r, d = self.config.r, self.slice_size
        return [(self.lora_A[g * r : (g + 1) * r], self.lora_B[g * d : (g + 1) * d]) for g in range(self.n_pairs)]

    def raw_update(self, x: torch.Tensor) -> torch.Tensor:
        if self.n_pairs == 1:
            return F.linear(F.linear(x, self.lora_A), self.lora_B)
        return torch.cat([F.linear(F.linear(x, a), b) for a, b in self._pairs()], dim=-1)

    def pair_weights(self) -> list[torch.Tensor]:
        if self.n_pairs == 1:
            return [self.lora_B @ self.lora_A]
        return [b @ a for a, b in self._pairs()]

    def apply(self, output: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.fused or self.m is not None or self.gate is not None:
            return super().apply(output, x, weight)
        # Plain LoRA: one multiply-add on the rank-r product (in place when autograd is off).
        low = F.linear(self.lora_dropout(x), self.lora_A)
        flat_out = output.reshape(-1, output.shape[-1])
        flat_low = low.reshape(-1, low.shape[-1])
        if not output.is_contiguous() or (
            torch.is_grad_enabled() and (output.requires_grad or self.lora_B.requires_grad)
        ):
            return torch.addmm(flat_out, flat_low, self.lora_B.t(), alpha=self.scaling).view_as(output)
        flat_out.addmm_(flat_low, self.lora_B.t(), alpha=self.scaling)
        return output
