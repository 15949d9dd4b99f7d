"""The AdapterFusion layer: attention of one query over the outputs of several adapters."""

from __future__ import annotations

import torch
from torch import nn

from ...configs.fusion import AdapterFusionConfig

# Temperature annealing of the reference library: start at 50, lower by T / 1000 per forward pass.
START_TEMPERATURE = 50.0


class FusionLayer(nn.Module):
    """AdapterFusion (Pfeiffer et al., 2021) at one place of one layer.

    For a query ``q`` (B, T, D), adapter outputs ``u`` (B, T, N, D) of the N fused adapters and
    the residual ``r`` (B, T, D)::

        scores = (W_q q) . (W_k u_n)         for each n          -> (B, T, N)
        p      = softmax(dropout(scores) / T)
        out    = sum_n p_n (W_v u_n) + r

    with the options of :class:`~adapters.configs.fusion.AdapterFusionConfig`. Parameter names
    (``query``, ``key``, ``value``; ``dense`` when none of them is learned) are the reference's
    weight keys.

    ``T`` is 1 unless ``config.temperature``; then it starts at 50 and every forward pass (training
    or not) lowers it by 0.05 until it reaches 1, as in the reference library. It is plain Python
    state: neither saved nor restored, and it moves on under ``torch.no_grad()`` too.

    Example:
        >>> import torch
        >>> from adapters.configs.fusion import AdapterFusionConfig
        >>> layer = FusionLayer(AdapterFusionConfig.load("dynamic"), 8, dropout_prob=0.0)
        >>> out, probs = layer(torch.randn(2, 3, 8), torch.randn(2, 3, 4, 8), torch.randn(2, 3, 8))
        >>> out.shape, probs.shape
        (torch.Size([2, 3, 8]), torch.Size([2, 3, 4]))
    """

    def __init__(self, config: AdapterFusionConfig, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.config = config
        self.dropout = nn.Dropout(dropout_prob)
        if not (config.query or config.key or config.value):
            # The reference creates (and saves) this projection for the all-off config but never
            # uses it; it exists here only so that such files load both ways.
            self.dense = nn.Linear(hidden_size, 1)
        if config.query:
            self.query = nn.Linear(hidden_size, hidden_size)
        if config.key:
            self.key = nn.Linear(hidden_size, hidden_size)
        if config.value:
            self.value = nn.Linear(hidden_size, hidden_size, bias=False)
        self.T = START_TEMPERATURE if config.temperature else 1.0
        self.reduction = self.T / 1000.0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for module in self.children():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, 0.02)
                    if module.bias is not None:
                        module.bias.zero_()
            if self.config.value and self.config.value_initialized:
                # Identity plus a tiny constant off the diagonal: fusion starts as a plain weighted sum.
                self.value.weight.fill_(1e-6).fill_diagonal_(1.0)

    def forward(
        self, query: torch.Tensor, outputs: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the fused output (B, T, D) and the attention probabilities (B, T, N)."""
        config = self.config
        if config.residual_before:
            # The reference adds the residual in place to a tensor that is its keys as well as its
            # values, so the keys include it too; kept, since trained fusions depend on it.
            outputs = outputs + residual.unsqueeze(2)
        q = self.query(query) if config.query else query
        keys = self.key(outputs) if config.key else outputs
        values = self.value(outputs) if config.value and config.value_before_softmax else outputs
        scores = torch.matmul(keys, q.unsqueeze(-1)).squeeze(-1)  # (B, T, N)
        probs = torch.softmax(self.dropout(scores) / self.T, dim=-1)
        # The reference anneals on every call; mutating here keeps its schedule (see the class doc).
        self.T = max(self.T - self.reduction, 1.0)
        fused = torch.matmul(probs.unsqueeze(-2), values).squeeze(-2)  # (B, T, D)
        if config.value and not config.value_before_softmax:
            fused = self.value(fused)
        if not config.residual_before:
            fused = fused + residual
        return fused, probs
