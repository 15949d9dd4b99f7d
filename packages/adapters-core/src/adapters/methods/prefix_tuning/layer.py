"""Prefix modules: reparametrized (an MLP over an embedding table) or flat (the prefixes themselves).

One module holds the prefixes of all layers of one kind of attention place (``self_prefix``), as
in the reference library, whose weight keys these modules reproduce: ``prefix_tunings.NAME.
self_prefix.{wte.weight, control_trans.0.weight, ...}`` (reparametrized) or ``...self_prefix.
control_trans`` (flat). Its output, viewed ``(prefix_length, n_layers * 2, heads, head_dim)``,
holds layer ``i``'s keys at index ``2 i`` and its values at ``2 i + 1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...configs.prefix_tuning import PrefixTuningConfig
from ..bottleneck.layer import activation


class _Prefixes(nn.Module):
    """Shapes shared by both forms; subclasses define :meth:`layer_key_values`."""

    def __init__(self, n_layers: int, n_heads: int, input_size: int, head_dim: int, config: PrefixTuningConfig):
        super().__init__()
        self.n_layers, self.n_heads, self.input_size, self.head_dim = n_layers, n_heads, input_size, head_dim
        self.config = config
        self.dropout = nn.Dropout(config.dropout)

    @property
    def layer_width(self) -> int:
        """Output features of one layer: its keys and values, ``2 * heads * head_dim``."""
        return 2 * self.n_heads * self.head_dim

    def _split(self, key_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (prefix_length, 2 * heads * head_dim) -> keys and values, each (heads, prefix_length, head_dim)
        key_values = key_values.view(-1, 2, self.n_heads, self.head_dim)
        return key_values[:, 0].transpose(0, 1), key_values[:, 1].transpose(0, 1)

    def layer_key_values(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the ``index``-th layer holding this prefix, each ``(heads, length, head_dim)``."""
        raise NotImplementedError

    def flat_weights(self) -> torch.Tensor:
        """All layers' prefixes as one vector, the layout of :class:`FlatPrefixTuning`'s parameter."""
        raise NotImplementedError


class PrefixTuning(_Prefixes):
    """Reparametrized prefixes (Li & Liang, 2021): ``MLP(wte)`` gives every layer's keys and values.

    ``wte`` is an embedding table of ``prefix_length`` rows; ``control_trans`` is
    ``Linear(input_size, bottleneck_size) -> non_linearity -> Linear(bottleneck_size,
    n_layers * 2 * heads * head_dim)``.

    Example:
        >>> from adapters import PrefixTuningConfig
        >>> prefix = PrefixTuning(2, 4, 32, 8, PrefixTuningConfig(prefix_length=5, bottleneck_size=16))
        >>> [tuple(t.shape) for t in prefix.layer_key_values(1)]
        [(4, 5, 8), (4, 5, 8)]
    """

    def __init__(self, n_layers: int, n_heads: int, input_size: int, head_dim: int, config: PrefixTuningConfig):
        super().__init__(n_layers, n_heads, input_size, head_dim, config)
        self.wte = nn.Embedding(config.prefix_length, input_size)
        self.control_trans = nn.Sequential(
            nn.Linear(input_size, config.bottleneck_size),
            activation(config.non_linearity),
            nn.Linear(config.bottleneck_size, n_layers * self.layer_width),
        )
        # Without autograd the prefix depends on the parameters only: each layer's keys and values are
        # computed once and reused until a parameter changes (generation calls the model once per token,
        # and the MLP costs as much as a fair part of a small decoder's step).
        self._no_grad_cache: dict[tuple[int, bool], tuple[tuple, tuple[torch.Tensor, torch.Tensor]]] = {}

    def _hidden(self) -> torch.Tensor:
        # wte(arange(prefix_length)) is the whole table, in order.
        return self.control_trans[1](self.control_trans[0](self.wte.weight))

    def layer_key_values(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self._layer_key_values(index)
        # A parameter changed in place (an optimizer step, a load) bumps its version; .to() moves its data.
        stamp = tuple((p._version, p.data_ptr(), p.dtype) for p in self.parameters())
        key = (index, torch.is_inference_mode_enabled())  # inference tensors are no use outside inference mode
        cached = self._no_grad_cache.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        result = self._layer_key_values(index)
        self._no_grad_cache[key] = (stamp, result)
        return result

    def _layer_key_values(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Only this layer's rows of the output projection: each layer costs 1/n_layers of the MLP.
        out = self.control_trans[2]
        rows = slice(index * self.layer_width, (index + 1) * self.layer_width)
        return self._split(F.linear(self._hidden(), out.weight[rows], out.bias[rows]))

    def flat_weights(self) -> torch.Tensor:
        return self.control_trans[2](self._hidden()).reshape(-1)


class FlatPrefixTuning(_Prefixes):
    """Prefixes trained directly: one parameter ``control_trans`` of all layers' keys and values.

    Example:
        >>> from adapters import PrefixTuningConfig
        >>> prefix = FlatPrefixTuning(2, 4, 32, 8, PrefixTuningConfig(prefix_length=5, flat=True))
        >>> tuple(prefix.control_trans.shape)
        (640,)
    """

    def __init__(self, n_layers: int, n_heads: int, input_size: int, head_dim: int, config: PrefixTuningConfig):
        super().__init__(n_layers, n_heads, input_size, head_dim, config)
        self.control_trans = nn.Parameter(torch.randn(config.prefix_length * n_layers * self.layer_width))

    def layer_key_values(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        table = self.control_trans.view(self.config.prefix_length, self.n_layers * self.layer_width)
        return self._split(table[:, index * self.layer_width : (index + 1) * self.layer_width])

    def flat_weights(self) -> torch.Tensor:
        return self.control_trans


class PrefixTuningGroup(nn.ModuleDict):
    """The prefixes of one adapter: one module per kind of attention place (``self_prefix``; in
    encoder-decoder models ``encoder_prefix``, ``self_prefix`` and ``cross_prefix``).

    ``layer_ids`` maps each place kind to the model layers holding its prefix, in the order of that
    prefix module's per-layer slices (``leave_out`` layers are skipped, as in the reference library).
    """

    def __init__(self, layer_ids: dict[str, tuple[int, ...]]) -> None:
        super().__init__()
        self.layer_ids = layer_ids


class PrefixTuningPool(nn.Module):
    """``base_model.prefix_tuning``: holds every adapter's :class:`PrefixTuningGroup` in ``prefix_tunings``."""
