"""Forward hooks of one module in a fixed order, whatever order the methods were activated in.

Several methods hook the same module: LoRA adds its update to a linear layer's output, a
pre-LN residual block hands back its adapted output from the sub-layer that closes it, and
other hooks only read the output (a bottleneck capturing ``h``, prefix tuning reading keys and
values, transformers recording hidden states). PyTorch runs forward hooks in registration
order, and registration follows activation order, so a reader registered first would see the
output without LoRA's update. Hooks registered here carry a :class:`HookStage` and are kept
ahead of every later stage; hooks registered any other way count as readers.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from torch import nn
from torch.utils.hooks import RemovableHandle

# The stages of a module's hooks, by hook id; kept on the module itself so that it dies with it.
_STAGES_ATTRIBUTE = "_adapters_hook_stages"


class HookStage(enum.IntEnum):
    """When a forward hook runs among the module's hooks: lower stages first."""

    #: Part of the module's own computation (LoRA's update of a linear layer's output).
    COMPUTE = 0
    #: Turns the module's final output into something else (a residual block's adapted output).
    REPLACE = 1
    #: Reads the output the rest of the model receives; every hook not registered here.
    READ = 2


def register_staged_forward_hook(module: nn.Module, hook: Callable, stage: HookStage) -> RemovableHandle:
    """``module.register_forward_hook(hook)``, run before every hook of a later stage.

    Within a stage, hooks run in registration order.

    Example:
        >>> import torch
        >>> linear = torch.nn.Linear(2, 2)
        >>> seen = []
        >>> reader = linear.register_forward_hook(lambda m, args, out: seen.append(out.sum().item()))
        >>> handle = register_staged_forward_hook(linear, lambda m, args, out: out * 0, HookStage.COMPUTE)
        >>> _ = linear(torch.ones(1, 2))
        >>> seen
        [0.0]
    """
    handle = module.register_forward_hook(hook)
    stages: dict[int, HookStage] = module.__dict__.setdefault(_STAGES_ATTRIBUTE, {})
    hooks = module._forward_hooks
    for stale in [hook_id for hook_id in stages if hook_id not in hooks]:
        del stages[stale]
    stages[handle.id] = stage
    # A stable sort: registration order within a stage. move_to_end is how PyTorch's own prepend= works.
    for hook_id in sorted(hooks, key=lambda hook_id: stages.get(hook_id, HookStage.READ)):
        hooks.move_to_end(hook_id)
    return handle
