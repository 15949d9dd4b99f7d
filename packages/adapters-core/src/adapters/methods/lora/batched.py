"""BatchSplit over plain LoRA adapters as two batched matrix multiplies.

Routing a batch across many LoRA adapters (one per tenant or task) is the common serving case.
Through the composition engine each adapter's slice is cut, updated and joined back, which copies
the layer output several times and launches a few kernels per adapter. Here the adapters' ``A``
and ``B`` are stacked and each example meets its adapter's pair in one ``bmm`` each: equal batch
sizes view the input as ``(adapters, rows, in)``; unequal ones pick each example's pair. The
result is added to the layer output in place when autograd does not need it.

Adapters of different ranks (multi-tenant serving mixes them) are stacked at the largest rank,
each pair padded with zero rows of ``A`` and zero columns of ``B``: the padding adds nothing to
any example's update, and the multiplies stay two.

Only the plain case takes this path: a top-level BatchSplit of adapter names, each a plain
unfused LoRA with no DoRA magnitude, gate or dropout, every one present at the layer. Anything
else runs through :class:`~.composition.ComposedLoRAs`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...composition.blocks import AdapterCompositionBlock, BatchSplit
from ...composition.engine import ExampleBranches
from ...errors import CompositionError
from ..base import AdapterDict
from .layer import LoRA


class BatchedLoRAs:
    """The forward hook of one linear layer under a BatchSplit of plain LoRA adapters.

    Example:
        >>> hook = BatchedLoRAs.build(linear, loras, BatchSplit("a", "b", batch_sizes=[2, 2]))  # doctest: +SKIP
        >>> handle = linear.register_forward_hook(hook)  # doctest: +SKIP
    """

    def __init__(self, block: BatchSplit, modules: tuple[LoRA, ...]) -> None:
        self.block = block
        self.modules = modules
        self.sizes = list(block.batch_sizes)
        self.total = sum(self.sizes)
        self.equal = len(set(self.sizes)) == 1
        self.example_branches = ExampleBranches(self.sizes)
        scalings = {m.scaling for m in modules}
        # One scaling for all: it goes into the multiply-add; otherwise into the stacked B.
        self.scaling = scalings.pop() if len(scalings) == 1 else None
        self._scalings = torch.tensor([m.scaling for m in modules]).view(-1, 1, 1)
        self.rank = max(m.config.r for m in modules)
        # (rows of A, columns of B) of zeros that bring each pair to the largest rank.
        self._padding = [self.rank - m.config.r for m in modules]
        self.mixed = any(self._padding)

    @classmethod
    def build(cls, linear: nn.Module, loras: AdapterDict, block: AdapterCompositionBlock) -> BatchedLoRAs | None:
        """The batched hook for ``block`` at this layer, or ``None`` when it does not apply."""
        if type(block) is not BatchSplit or not all(isinstance(c, str) for c in block):
            return None
        modules = tuple(loras._modules.get(name) for name in block)
        if not all(_plain(m) for m in modules):
            return None
        return cls(block, modules)

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        if x.shape[0] != self.total:
            raise CompositionError(
                f"{self.block!r} covers {self.total} but the input has batch size {x.shape[0]}; adjust its sizes."
            )
        a, b = self._stacked()  # (n, r, in), (n, r, out)
        if self.scaling is None:
            b = b * self._scalings.to(b.device, b.dtype)
        alpha = 1.0 if self.scaling is None else self.scaling
        n, width = len(self.modules), output.shape[-1]
        if self.equal:
            # Examples of one adapter are contiguous: (n, rows per adapter, features).
            low = torch.bmm(x.reshape(n, -1, x.shape[-1]), a.transpose(1, 2))
            target = output.view(n, -1, width) if output.is_contiguous() else None
        else:
            rows = self.example_branches(x.device)
            low = torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]), a[rows].transpose(1, 2))
            b = b[rows]
            target = output.view(x.shape[0], -1, width) if output.is_contiguous() else None
        if target is not None and not (torch.is_grad_enabled() and (output.requires_grad or b.requires_grad)):
            target.baddbmm_(low, b, alpha=alpha)
            return output
        update = torch.bmm(low, b)
        if alpha != 1.0:
            update = update * alpha
        return output + update.view_as(output)

    def _stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.mixed:
            a = torch.stack([m.lora_A for m in self.modules])
            return a, torch.stack([m.lora_B for m in self.modules]).transpose(1, 2)
        pairs = zip(self.modules, self._padding, strict=True)
        a = torch.stack([F.pad(m.lora_A, (0, 0, 0, pad)) for m, pad in pairs])
        pairs = zip(self.modules, self._padding, strict=True)
        return a, torch.stack([F.pad(m.lora_B, (0, pad)) for m, pad in pairs]).transpose(1, 2)


def _plain(module: nn.Module | None) -> bool:
    return (
        type(module) is LoRA
        and not module.fused
        and module.m is None
        and module.gate is None
        and isinstance(module.lora_dropout, nn.Identity)
    )
