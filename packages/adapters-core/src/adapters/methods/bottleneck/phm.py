"""Parameterized hypercomplex multiplication (PHM) layers: the projections of Compacter.

Mahabadi et al. (2021) build the weight of a linear layer as a sum of Kronecker products,
``H = sum_i A_i ⊗ W_i``, with ``n = phm_dim`` small "rules" ``A_i`` (n x n) and ``n`` blocks
``W_i`` ((in/n) x (out/n)); the layer computes ``y = x H + b``. ``W_i`` may be factorized into
``W_left_i W_right_i`` of rank ``phm_rank`` and the rules into ``left_i right_i`` (rank 1). The
rules (and optionally the W factors) can be shared by every layer of an adapter; shared tensors
live once under ``shared_parameters.<name>`` of the base model, as in the reference format.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...configs.bottleneck import BnConfig


def kronecker_sum(rules: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``sum_i kron(rules[i], blocks[i])`` for rules (n, a, b) and blocks (n, p, q): an (a*p, b*q) matrix."""
    _, a, b = rules.shape
    _, p, q = blocks.shape
    # kron(A, W)[i*p + k, j*q + l] = A[i, j] * W[k, l]; the einsum also sums over the n terms.
    return torch.einsum("nij,nkl->ikjl", rules, blocks).reshape(a * p, b * q)


def _register(module: nn.Module, name: str, tensor: torch.Tensor, trainable: bool) -> None:
    # A frozen rule (learn_phm=False) is a buffer: saved under the same key, never made trainable.
    if trainable:
        module.register_parameter(name, nn.Parameter(tensor))
    else:
        module.register_buffer(name, tensor)


def _init_blocks(tensor: torch.Tensor, config: BnConfig) -> None:
    """Initialise each of the n weight blocks by ``hypercomplex_nonlinearity``."""
    with torch.no_grad():
        for block in tensor:
            if config.hypercomplex_nonlinearity == "glorot-uniform":
                nn.init.xavier_uniform_(block)
            elif config.hypercomplex_nonlinearity == "normal":
                block.normal_(0.0, config.phm_init_range)
            else:  # "glorot-normal", and "phm" as in the reference library
                nn.init.xavier_normal_(block)


def _rule_tensors(config: BnConfig, shared: bool) -> dict[str, torch.Tensor]:
    """Fresh rule tensors, initialised as the reference library does (shared and per-layer differ)."""
    n = config.phm_dim
    shapes = {"phm_rule_left": (n, n, 1), "phm_rule_right": (n, 1, n)} if config.factorized_phm_rule else {}
    shapes = shapes or {"phm_rule": (n, n, n)}
    tensors = {}
    for name, shape in shapes.items():
        tensor = torch.empty(shape)
        if config.phm_c_init == "normal":
            tensor.normal_(0.0, config.phm_init_range if shared else 0.01)
        else:
            bound = 1.0 if shared else 0.01
            tensor.uniform_(-bound, bound)
        tensors[name] = tensor
    return tensors


def _block_tensors(config: BnConfig, in_features: int, out_features: int, suffix: str = "") -> dict[str, torch.Tensor]:
    n = config.phm_dim
    p, q = in_features // n, out_features // n
    if config.factorized_phm_W:
        shapes = {f"W{suffix}_left": (n, p, config.phm_rank), f"W{suffix}_right": (n, config.phm_rank, q)}
    else:
        shapes = {f"W{suffix}": (n, p, q)}
    tensors = {}
    for name, shape in shapes.items():
        tensors[name] = torch.empty(shape)
        _init_blocks(tensors[name], config)
    return tensors


class SharedPHMParameters(nn.Module):
    """The PHM tensors one adapter shares across all its layers (``shared_parameters.<name>``).

    Holds ``phm_rule`` (or ``phm_rule_left``/``phm_rule_right``) when ``shared_phm_rule`` and
    ``W_down[_left/_right]``/``W_up[_left/_right]`` when ``shared_W_phm``.

    Example:
        >>> from adapters import CompacterPlusPlusConfig
        >>> shared = SharedPHMParameters(CompacterPlusPlusConfig(), hidden_size=32, bottleneck_size=8)
        >>> [name for name, _ in shared.named_parameters()]
        ['phm_rule']
    """

    def __init__(self, config: BnConfig, hidden_size: int, bottleneck_size: int) -> None:
        super().__init__()
        if config.shared_W_phm:
            tensors = _block_tensors(config, hidden_size, bottleneck_size, "_down")
            tensors.update(_block_tensors(config, bottleneck_size, hidden_size, "_up"))
            for name, tensor in tensors.items():
                _register(self, name, tensor, trainable=True)
        if config.shared_phm_rule:
            for name, tensor in _rule_tensors(config, shared=True).items():
                _register(self, name, tensor, trainable=bool(config.learn_phm))

    def tensor(self, name: str) -> torch.Tensor:
        return getattr(self, name)


class PHMLayer(nn.Module):
    """``y = x @ (sum_i A_i ⊗ W_i) + b``, the PHM replacement of ``nn.Linear(in_features, out_features)``.

    Parameter names follow the reference format: ``W_left``/``W_right`` (or ``W``),
    ``phm_rule`` (or ``phm_rule_left``/``phm_rule_right``) and ``b``; tensors that the config
    shares across layers are read from ``shared`` (``position`` "down" or "up" picks the W's).

    Example:
        >>> import torch
        >>> from adapters import CompacterConfig
        >>> layer = PHMLayer(32, 8, CompacterConfig(shared_phm_rule=False), position="down")
        >>> layer(torch.randn(2, 5, 32)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: BnConfig,
        position: str,
        shared: SharedPHMParameters | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.factorized_W = bool(config.factorized_phm_W)
        self.factorized_rule = bool(config.factorized_phm_rule)
        self.shared_W = bool(config.shared_W_phm)
        self.shared_rule = bool(config.shared_phm_rule)
        self.position = position
        # Not a submodule: the shared tensors are saved once, under shared_parameters.<name>.
        object.__setattr__(self, "_shared", shared)
        if not self.shared_W:
            for name, tensor in _block_tensors(config, in_features, out_features).items():
                _register(self, name, tensor, trainable=True)
        if not self.shared_rule:
            for name, tensor in _rule_tensors(config, shared=False).items():
                _register(self, name, tensor, trainable=bool(config.learn_phm))
        if config.phm_bias:
            self.b = nn.Parameter(torch.zeros(out_features))
        else:
            self.register_parameter("b", None)

    def _get(self, name: str, shared: bool) -> torch.Tensor:
        return self._shared.tensor(name) if shared else getattr(self, name)

    def blocks(self) -> torch.Tensor:
        """The n weight blocks W_i, (n, in/n, out/n)."""
        suffix = f"_{self.position}" if self.shared_W else ""
        if self.factorized_W:
            left = self._get(f"W{suffix}_left", self.shared_W)
            return torch.bmm(left, self._get(f"W{suffix}_right", self.shared_W))
        return self._get(f"W{suffix}", self.shared_W)

    def rules(self) -> torch.Tensor:
        """The n rules A_i, (n, n, n)."""
        if self.factorized_rule:
            left = self._get("phm_rule_left", self.shared_rule)
            return torch.bmm(left, self._get("phm_rule_right", self.shared_rule))
        return self._get("phm_rule", self.shared_rule)

    def weight_matrix(self) -> torch.Tensor:
        """``H = sum_i A_i ⊗ W_i``, (in_features, out_features)."""
        return kronecker_sum(self.rules(), self.blocks())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.linear takes (out, in); the transposed view costs no copy.
        return F.linear(x, self.weight_matrix().t(), self.b)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
