"""Parallel and BatchSplit over plain bottleneck adapters as two batched matrix multiplies.

Serving several tasks in one pass (Parallel) or routing examples to their own adapter (BatchSplit)
through the composition engine cuts the block's state into one part per adapter, runs each adapter
on its part and joins the parts: a copy of the hidden state per join, a few kernels per adapter,
and under Parallel copies of ``h`` and ``x`` where the batch is replicated. Here all adapters run
at once. In the Pfeiffer, Houlsby and parallel placements a block's output is ``LN(branch(a) + h + x)``,
where the adapter input ``a`` is ``LN(h + x)`` (Pfeiffer), ``h`` (Houlsby) or ``x`` (parallel), and
``LN`` is the model's own,
shared by every adapter, so only the branch (down-projection, activation, up-projection) differs
per adapter: it becomes one ``bmm`` per projection over the
stacked weights. Where Parallel makes its copies, the copies come from broadcasting ``h + x`` in
the final addition, so nothing below is copied.

Only the plain case takes this path: a top-level Parallel or BatchSplit of adapter names, each a
:class:`Bottleneck` with linear projections of one size, one activation, one dropout, a fixed
scaling, no gate, no LayerNorm of its own and no stochastic depth, every one present at the block.
Anything else runs through :class:`~.composition.ComposedBottlenecks`.
"""

from __future__ import annotations

import torch
from torch import nn

from ...composition.blocks import AdapterCompositionBlock, BatchSplit, Parallel
from ...composition.engine import ExampleBranches, parallel_needs_copies
from ...errors import CompositionError
from ..base import AdapterDict
from .composition import PLACEMENT_FIELDS
from .layer import Bottleneck


class BatchedBottlenecks:
    """The block function of one residual block under a Parallel or BatchSplit of plain bottlenecks.

    Example:
        >>> fn = BatchedBottlenecks.build(place.adapters, Parallel("a", "b"), runtime)  # doctest: +SKIP
        >>> hooks.install(fn)  # doctest: +SKIP
    """

    def __init__(self, block: Parallel | BatchSplit, modules: tuple[Bottleneck, ...], parallel_runtime) -> None:
        self.block = block
        self.modules = modules
        self.parallel_runtime = parallel_runtime
        self.sizes = list(block.batch_sizes) if isinstance(block, BatchSplit) else None
        self.equal = self.sizes is None or len(set(self.sizes)) == 1
        self.example_branches = ExampleBranches(self.sizes or [])
        first = modules[0]
        self.activation = first.adapter_down[-1]
        self.dropout = first.dropout
        # Each adapter's fixed scaling goes into its stacked up-projection; all ones cost nothing.
        scalings = [float(m.scaling) for m in modules]
        self._scalings = None if all(s == 1.0 for s in scalings) else torch.tensor(scalings).view(-1, 1, 1)

    @classmethod
    def build(
        cls, adapters: AdapterDict, block: AdapterCompositionBlock, parallel_runtime=None
    ) -> BatchedBottlenecks | None:
        """The batched block function for ``block`` here, or ``None`` when it does not apply."""
        if type(block) not in (Parallel, BatchSplit) or not all(isinstance(c, str) for c in block):
            return None
        modules = tuple(adapters._modules.get(name) for name in block)
        if not all(_plain(m) for m in modules):
            return None
        first = modules[0]
        same = {
            (
                m.down_proj.out_features,
                m.config.non_linearity.lower(),
                m.config.dropout,
                *(m.config[f] for f in PLACEMENT_FIELDS),
            )
            for m in modules
        }
        if len(same) > 1 or first.down_proj.in_features != first.adapter_up.out_features:
            return None
        return cls(block, modules, parallel_runtime)

    def __call__(
        self, h: torch.Tensor, x: torch.Tensor, layer_norm, summed: torch.Tensor | None = None
    ) -> torch.Tensor:
        total = h + x if summed is None else summed
        batch = total.shape[0]
        copies = 1
        if isinstance(self.block, Parallel):
            runtime = self.parallel_runtime
            if parallel_needs_copies(self.block, batch, runtime):
                if layer_norm is None:
                    # The model adds x itself after this block, to a batch of the original size.
                    raise CompositionError(
                        f"{self.block!r} cannot make its copies at a pre-LN block; the layer input is copied instead."
                    )
                copies = len(self.block)
        elif sum(self.sizes) != batch:
            raise CompositionError(
                f"{self.block!r} covers {sum(self.sizes)} but the input has batch size {batch}; adjust its sizes."
            )
        up = self._branches(self.modules[0].input_from_sum(h, x, total, layer_norm), copies)
        if copies > 1:
            # (copies, batch * seq, width) + (batch * seq, width): the copies of h + x come from broadcasting.
            output = (up + total.reshape(1, -1, total.shape[-1])).view(copies * batch, *total.shape[1:])
        else:
            output = up.view_as(total).add_(total)
        return layer_norm(output) if layer_norm is not None else output

    def _branches(self, hidden: torch.Tensor, copies: int) -> torch.Tensor:
        """Every adapter's up-projection (after dropout), as ``(groups, rows, width)``."""
        n, width = len(self.modules), hidden.shape[-1]
        down_w = torch.stack([m.down_proj.weight for m in self.modules]).transpose(1, 2)  # (n, width, r)
        down_b = torch.stack([m.down_proj.bias for m in self.modules]).unsqueeze(1)  # (n, 1, r)
        up_w = torch.stack([m.adapter_up.weight for m in self.modules]).transpose(1, 2)  # (n, r, width)
        up_b = torch.stack([m.adapter_up.bias for m in self.modules]).unsqueeze(1)  # (n, 1, width)
        if self._scalings is not None:
            scalings = self._scalings.to(up_w.device, up_w.dtype)
            up_w, up_b = up_w * scalings, up_b * scalings
        if copies > 1:
            # One input for all adapters: one matmul against their down-projections side by side.
            rows = hidden.reshape(-1, width)
            down = torch.addmm(down_b.reshape(1, -1), rows, down_w.transpose(0, 1).reshape(width, -1))
            down = down.view(rows.shape[0], n, -1).transpose(0, 1)
        elif self.equal:
            down = torch.baddbmm(down_b, hidden.reshape(n, -1, width), down_w)
        else:
            rows = self.example_branches(hidden.device)
            down_w, down_b, up_w, up_b = down_w[rows], down_b[rows], up_w[rows], up_b[rows]
            down = torch.baddbmm(down_b, hidden.reshape(hidden.shape[0], -1, width), down_w)
        up = torch.baddbmm(up_b, self.activation(down), up_w)
        return self.dropout(up)


def _plain(module: nn.Module | None) -> bool:
    return (
        type(module) is Bottleneck
        and module._adds_into_sum
        and module._fold_scaling
        and not module.config.ln_before
        and not module.config.use_gating
        and not module.drop_path
    )
