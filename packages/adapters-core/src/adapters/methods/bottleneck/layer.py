"""The bottleneck adapter module and its forward, as defined by Houlsby, Pfeiffer and He et al."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ...configs.bottleneck import BnConfig
from ...errors import AdapterConfigError
from .phm import PHMLayer, SharedPHMParameters

LayerNormFn = Callable[[torch.Tensor], torch.Tensor] | None

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_orig": nn.GELU,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leakyrelu": nn.LeakyReLU,
    "identity": nn.Identity,
}


def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Stochastic depth (Huang et al., 2016) per example: zero the whole branch of an example with
    probability ``p``, scale the kept ones by ``1 / (1 - p)`` (torchvision's ``mode="row"``)."""
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    if keep > 0.0:
        mask.div_(keep)
    return x * mask


def activation(name: str) -> nn.Module:
    key = name.lower()
    if key not in _ACTIVATIONS:
        raise AdapterConfigError(f"Unknown non_linearity {name!r}; choose from {sorted(_ACTIVATIONS)}.")
    return _ACTIVATIONS[key]()


class Bottleneck(nn.Module):
    """``up(act(down(x))) * scaling`` with the residual and LayerNorm placement of its config.

    ``down``/``up`` are linears, or PHM layers with ``phm_layer`` (Compacter; tensors shared
    across layers come in ``shared_phm``). ``scaling`` is a number, one learned scalar or one
    learned value per hidden unit ("channel", AdapterPlus); with ``stochastic_depth`` the branch
    is dropped per example while training.

    The block around it hands over ``h`` (the sub-block output before the residual addition),
    ``x`` (the residual input) and the block's own LayerNorm; see :meth:`pre_forward`,
    :meth:`forward` and :meth:`post_forward`.
    """

    def __init__(
        self,
        hidden_size: int,
        bottleneck_size: int,
        config: BnConfig,
        shared_phm: SharedPHMParameters | None = None,
        hooked: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        # At a hooked block (ResidualBlock.hooked) the model adds the residual and applies its norms
        # after the adapter, so the adapter's own post_forward does neither (as in the reference).
        self.original_ln_after = config.original_ln_after and not hooked
        self.is_parallel = config.is_parallel
        self.residual_before_ln = config.residual_before_ln
        layers: list[nn.Module] = []
        if config.ln_before:
            self.adapter_norm_before = nn.LayerNorm(hidden_size)
            layers.append(self.adapter_norm_before)
        if config.phm_layer:
            down: nn.Module = PHMLayer(hidden_size, bottleneck_size, config, "down", shared_phm)
            self.adapter_up: nn.Module = PHMLayer(bottleneck_size, hidden_size, config, "up", shared_phm)
        else:
            down = nn.Linear(hidden_size, bottleneck_size)
            self.adapter_up = nn.Linear(bottleneck_size, hidden_size)
        self.adapter_down = nn.Sequential(*layers, down, activation(config.non_linearity))
        if config.scaling == "learned":
            self.scaling = nn.Parameter(torch.ones(1))
        elif config.scaling == "channel":
            self.scaling = nn.Parameter(torch.ones(hidden_size))
        else:
            self.scaling = float(config.scaling)
        # Only plain linears with a fixed scaling fold it into the up-projection's multiply-add.
        self._fold_scaling = isinstance(self.adapter_up, nn.Linear) and not isinstance(self.scaling, torch.Tensor)
        if config.ln_after:
            self.adapter_norm_after = nn.LayerNorm(hidden_size)
        if config.use_gating:
            self.gate = nn.Linear(hidden_size, 1)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.drop_path = float(config.stochastic_depth or 0.0)
        # Pfeiffer, Houlsby and He et al.'s parallel placement: the block output is
        # LN(adapter branch + h + x), and the model has already formed h + x, so one addition
        # closes the block (see block_output).
        self._adds_into_sum = (
            (config.is_parallel or config.residual_before_ln is True)
            and self.original_ln_after
            and not config.ln_after
        )
        # Pfeiffer's plain branch at inference: the up-projection can overwrite its own input LN(h + x).
        self._overwrites_input = (
            self._adds_into_sum
            and not config.is_parallel
            and config.original_ln_before
            and self._fold_scaling
            and not config.ln_before
            and not config.use_gating
        )
        self.reset_parameters()

    @property
    def down_proj(self) -> nn.Linear:
        return self.adapter_down[1 if self.config.ln_before else 0]

    def reset_parameters(self) -> None:
        mode = self.config.init_weights
        # PHM projections initialise themselves (hypercomplex_nonlinearity, phm_c_init); the config
        # allows them only with mode "bert", which leaves them as they are, like the reference.
        projections = [] if self.config.phm_layer else [self.down_proj, self.adapter_up]
        linears = projections + ([self.gate] if self.config.use_gating else [])
        with torch.no_grad():
            if mode == "bert":
                for linear in linears:
                    linear.weight.normal_(0.0, 0.02)
                    linear.bias.zero_()
            elif mode == "mam_adapter":
                nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
                nn.init.zeros_(self.down_proj.bias)
                nn.init.zeros_(self.adapter_up.weight)
                nn.init.zeros_(self.adapter_up.bias)
                if self.config.use_gating:
                    nn.init.kaiming_uniform_(self.gate.weight, a=math.sqrt(5))
                    nn.init.zeros_(self.gate.bias)
            elif mode == "houlsby":
                for linear in linears:
                    nn.init.trunc_normal_(linear.weight, std=1e-2, a=-2e-2, b=2e-2)
                    nn.init.zeros_(linear.bias)

    def _up(self, down: torch.Tensor) -> torch.Tensor:
        if not self._fold_scaling:
            up = self.adapter_up(down)
            return up if isinstance(self.scaling, float) and self.scaling == 1.0 else up * self.scaling
        if self.scaling == 1.0:
            return self.adapter_up(down)
        # A fixed scaling folds into the up-projection's multiply-add: s * (W d + b) in one kernel.
        flat = down.reshape(-1, down.shape[-1])
        up = torch.addmm(self.adapter_up.bias, flat, self.adapter_up.weight.t(), beta=self.scaling, alpha=self.scaling)
        return up.view(*down.shape[:-1], up.shape[-1])

    def block_output(
        self, h: torch.Tensor, x: torch.Tensor, layer_norm: LayerNormFn, summed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The residual block's output with this adapter alone: pre_forward, forward, post_forward.

        ``summed`` is the model's own ``h + x`` when the block closes with a post-LN.

        >>> import torch
        >>> from adapters import SeqBnConfig
        >>> adapter = Bottleneck(8, 2, SeqBnConfig())
        >>> h, x = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
        >>> adapter.block_output(h, x, None).shape
        torch.Size([1, 3, 8])
        """
        if self._adds_into_sum:
            # The adapter's residual (h, or nothing for a parallel adapter) and the block's x add up to h + x.
            total = h + x if summed is None else summed
            if self._overwrites_input and layer_norm is not None and not (self.training or torch.is_grad_enabled()):
                return layer_norm(self._branch_into_input(layer_norm(total), total))
            # Fresh from the adapter's last projection and needed by no backward: added to in place.
            output = self.branch(self.input_from_sum(h, x, total, layer_norm)).add_(total)
            return layer_norm(output) if layer_norm is not None else output
        hidden, residual = self.pre_forward(h, x, layer_norm, summed)
        return self.post_forward(self(hidden, residual), h, x, layer_norm)

    def block_output_without_residual(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``block_output(h, x, None) - x``: the block output of a block without a post-LN, less the ``x``
        the model adds after it (pre-LN models), with ``x`` neither added nor subtracted where it cancels.

        >>> import torch
        >>> from adapters import SeqBnConfig
        >>> adapter = Bottleneck(8, 2, SeqBnConfig())
        >>> h, x = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
        >>> torch.allclose(adapter.block_output_without_residual(h, x), adapter.block_output(h, x, None) - x)
        True
        """
        if not self._adds_into_sum:
            return self.block_output(h, x, None) - x
        # block_output is branch(input) + h + x here.
        return self.branch(self.input_from_sum(h, x, None, None)).add_(h)

    def _branch_into_input(self, hidden: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """``total + branch(hidden)`` written over ``hidden`` (no autograd, no dropout): no new hidden-size tensor."""
        down = self.adapter_down(hidden)
        up = self.adapter_up
        out = hidden.view(-1, hidden.shape[-1])
        torch.addmm(total.reshape(out.shape), down.view(-1, down.shape[-1]), up.weight.t(), alpha=self.scaling, out=out)
        return hidden.add_(up.bias, alpha=self.scaling)

    def input_from_sum(
        self, h: torch.Tensor, x: torch.Tensor, total: torch.Tensor | None, layer_norm: LayerNormFn
    ) -> torch.Tensor:
        """The adapter's input, as :meth:`pre_forward` reads it, given ``total = h + x`` (or None: formed here)."""
        if self.is_parallel:
            return x
        if not self.config.original_ln_before:
            return h
        if total is None:
            total = h + x
        return layer_norm(total) if layer_norm is not None else total

    # -- the three steps --------------------------------------------------------------------
    def pre_forward(
        self, h: torch.Tensor, x: torch.Tensor, layer_norm: LayerNormFn, summed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (adapter input, residual to add to its output).

        ``summed``, when given, is ``h + x`` already computed (by the model, before its post-LN).
        """
        if self.is_parallel:
            # He et al.: the adapter reads the block input, in parallel to the sub-block.
            return x, x
        residual = h if self.residual_before_ln is True else None
        if self.config.original_ln_before:
            h = h + x if summed is None else summed
            if self.residual_before_ln == "post_add":
                residual = h
            if layer_norm is not None:
                h = layer_norm(h)
        if residual is None:
            residual = h
        return h, residual

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.finish(self.project(hidden), hidden, residual)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """The scaled up-projection output (before dropout, gating and residual): what AdapterFusion attends over."""
        up = self._up(self.adapter_down(hidden))
        if self.drop_path and self.training:
            up = drop_path(up, self.drop_path)
        return up

    def branch(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the adapter adds to its residual: the up-projection after dropout and gating."""
        return self._gated(self.dropout(self.project(hidden)), hidden)

    def _gated(self, output: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        if self.config.use_gating:
            gate = torch.sigmoid(self.gate(hidden)).mean(dim=1, keepdim=True)
            output = output * gate
        return output

    def finish(self, up: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """The adapter output from :meth:`project`'s ``up``, its input ``hidden`` and ``residual``."""
        output = self._gated(self.dropout(up), hidden)
        if self.is_parallel:
            return self.adapter_norm_after(output) if self.config.ln_after else output
        if self.config.adapter_residual_before_ln:
            output = output + residual
        if self.config.ln_after:
            output = self.adapter_norm_after(output)
        if not self.config.adapter_residual_before_ln:
            output = output + residual
        return output

    def post_forward(
        self, hidden: torch.Tensor, h: torch.Tensor, x: torch.Tensor, layer_norm: LayerNormFn
    ) -> torch.Tensor:
        """Turn the adapter output into the block output."""
        if self.is_parallel:
            hidden = hidden + h
        if self.original_ln_after:
            hidden = hidden + x
            if layer_norm is not None:
                hidden = layer_norm(hidden)
        return hidden
