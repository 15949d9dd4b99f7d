"""Intercept a residual sub-block of a layer from the outside.

Methods that act "around" a sub-block (bottleneck adapters and their relatives) need three
things the model never exposes together: the sub-block output ``h`` before the residual
addition, the residual input ``x`` and the post-LN module. :class:`ResidualBlockHooks` captures
them with forward hooks on the modules a :class:`~adapters.plugins.ResidualBlock` names and
hands them to one function that returns the block's new output. The function is the block's
plan in the activation of the pass running (see :mod:`adapters.core.activation`): passes of other
threads may run other functions at the same block, or none. The hooks are attached while some
activation has a plan here; what they capture during a pass is per thread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from ..plugins.spec import InputOf, ResidualBlock
from .activation import PerThread, building, current
from .hook_order import HookStage, register_staged_forward_hook

#: ``fn(h, x, layer_norm, summed)`` -> the block output. ``summed`` is the model's own ``h + x`` where
#: the block closes with a post-LN (it arrives as the LayerNorm's input), else ``None``.
BlockFn = Callable[
    [torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor] | None, torch.Tensor | None], torch.Tensor
]
#: ``fn(h, x)`` -> the block output minus ``x``, for a block without a post-LN (the model adds ``x``).
WithoutResidualFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ResidualBlockHooks:
    """Routes one residual block of one layer through ``fn(h, x, layer_norm, summed)`` in the passes whose
    activation installed ``fn`` here."""

    def __init__(self, layer: nn.Module, block: ResidualBlock) -> None:
        # x is read at one place, or summed from several (parallel blocks such as GPT-J's), or (a hooked
        # block without a residual) nowhere: x is zero.
        if block.residual is None:
            sources: tuple = ()
        else:
            sources = block.residual if isinstance(block.residual, tuple) else (block.residual,)
        self.hooked = block.hooked
        self._layer = layer
        self.residual_sources = [(source, layer.get_submodule(source.path)) for source in sources]
        self._first_source = sources[0] if sources else None
        # What this thread's pass captured so far in the current layer call.
        self._now = PerThread(x=None, h=None, parts=[None] * len(sources))
        # h normally leaves the sublayer; a spec may read it from a module's input instead.
        self.h_from_input = isinstance(block.sublayer, InputOf)
        self.h_source = block.sublayer
        # No sublayer: the model adds h functionally (BART's F.dropout) and h is read off the post-LN's
        # input as (h + x) - x, so that h is what the model adds, its dropout included.
        self.h_from_sum = block.sublayer is None
        self.sublayer = (
            None
            if self.h_from_sum
            else layer.get_submodule(block.sublayer.path if self.h_from_input else block.sublayer)
        )
        self.layer_norm = layer.get_submodule(block.layer_norm) if block.layer_norm else None
        # The LayerNorm's own computation, callable while its forward is rerouted to the block.
        self._layer_norm_fn = (
            functools.partial(type(self.layer_norm).forward, self.layer_norm) if self.layer_norm is not None else None
        )
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._state = None

    def install(self, fn: BlockFn, without_residual: WithoutResidualFn | None = None) -> None:
        """Route the block through ``fn`` under the activation being built.

        ``without_residual(h, x)``, when given, is ``fn(h, x, None, None) - x`` computed without adding
        and subtracting ``x``: what a block without a post-LN hands back (the model adds ``x`` itself).
        """
        building().add(self, (fn, without_residual), attach=self)

    def remove(self) -> None:
        """Leave the block alone under the activation being built (it records no plan here)."""

    def _plan(self) -> tuple[BlockFn, WithoutResidualFn | None] | None:
        return current(self._state).plans.get(self)

    @property
    def _fn(self) -> BlockFn | None:
        """The block function of the activation running here now (``None``: the block is left alone)."""
        plan = self._plan() if self._state is not None else None
        return plan[0] if plan is not None else None

    def attach_hooks(self, state) -> None:
        self._state = state
        # Each layer call starts afresh: a forward pass that stopped midway (an exception) must not
        # leave an x or h behind that a later call would take for its own.
        self._handles.append(self._layer.register_forward_pre_hook(self._forget))
        for index, (source, module) in enumerate(self.residual_sources):
            if len(self.residual_sources) == 1:
                capture = self._capture_residual if isinstance(source, InputOf) else self._capture_residual_output
            else:
                capture = functools.partial(
                    self._capture_part_input if isinstance(source, InputOf) else self._capture_part_output, index
                )
            if isinstance(source, InputOf):
                self._handles.append(module.register_forward_pre_hook(capture, with_kwargs=True))
            else:
                self._handles.append(module.register_forward_hook(capture))
        if self.hooked:
            # The adapters replace the sublayer's output; its layer_norm is the adapters' to call, not rerouted.
            self._handles.append(register_staged_forward_hook(self.sublayer, self._hooked_output, HookStage.REPLACE))
        elif self.layer_norm is not None:
            if self.h_from_sum:
                pass
            elif self.h_from_input:
                self._handles.append(
                    self.sublayer.register_forward_pre_hook(self._capture_sublayer_input, with_kwargs=True)
                )
            else:
                self._handles.append(self.sublayer.register_forward_hook(self._capture_sublayer_output))
            # The block's output is computed in place of the post-LN, which receives h + x.
            self.layer_norm.forward = self._post_ln_forward
        else:
            # Ahead of the readers of the module's output, so that an OutputOf source of another block
            # (GPT-J's FFN reads the attention output) sees the output this block hands back; after a
            # LoRA update of the sub-layer itself (mBART's fc2), which h must include.
            self._handles.append(register_staged_forward_hook(self.sublayer, self._pre_ln_output, HookStage.REPLACE))

    def detach_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.layer_norm is not None and not self.hooked:
            self.layer_norm.__dict__.pop("forward", None)
        self._now = PerThread(x=None, h=None, parts=[None] * len(self.residual_sources))

    # -- hooks ----------------------------------------------------------------------------
    # Captures happen only in passes with a plan here: others leave no tensor behind.
    def _forget(self, module: nn.Module, args: tuple) -> None:
        now = self._now
        now.x = now.h = None
        if len(now.parts) > 1:
            now.parts = [None] * len(now.parts)

    def _capture_residual(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._plan() is not None:
            self._now.x = _input_of(self._first_source, args, kwargs)

    def _capture_residual_output(self, module: nn.Module, args: tuple, output) -> None:
        if self._plan() is not None:
            self._now.x = output[0] if isinstance(output, tuple) else output

    def _capture_part_input(self, index: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._plan() is not None:
            self._now.parts[index] = _input_of(self.residual_sources[index][0], args, kwargs)
            self._sum_parts()

    def _capture_part_output(self, index: int, module: nn.Module, args: tuple, output) -> None:
        if self._plan() is not None:
            self._now.parts[index] = output[0] if isinstance(output, tuple) else output
            self._sum_parts()

    def _sum_parts(self) -> None:
        # x is ready once every source was seen in this forward pass.
        now = self._now
        if all(part is not None for part in now.parts):
            now.x = sum(now.parts[1:], now.parts[0])
            now.parts = [None] * len(now.parts)

    def _capture_sublayer_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._plan() is not None:
            self._now.h = _input_of(self.h_source, args, kwargs)

    def _capture_sublayer_output(self, module: nn.Module, args: tuple, output) -> None:
        if self._plan() is not None:
            self._now.h = output[0] if isinstance(output, tuple) else output

    def _post_ln_forward(self, summed: torch.Tensor) -> torch.Tensor:
        plan = self._plan()
        now = self._now
        h, x = now.h, now.x
        if self.h_from_sum and x is not None:
            h = summed - x
        if plan is None or h is None or x is None:
            # The model calls this LayerNorm somewhere else too (X-MOD reuses it around its
            # language adapters): only the call that closes the block is the block's output.
            return self._layer_norm_fn(summed)
        now.h = now.x = None
        return plan[0](h, x, self._layer_norm_fn, summed)

    def _pre_ln_output(self, module: nn.Module, args: tuple, output):
        now = self._now
        x, now.x = now.x, None
        plan = self._plan() if x is not None else None
        if plan is None:
            # One module closes both blocks of the layer (ViT's shared dropout, BEiT's drop_path):
            # only the call after this block's x was captured is this block's output.
            return None
        h = output[0] if isinstance(output, tuple) else output
        fn, without_residual = plan
        # The model adds x itself after this module, so hand back (new block output - x).
        if without_residual is not None:
            new_h = without_residual(h, x)
        else:
            new_h = fn(h, x, None, None) - x
        return (new_h, *output[1:]) if isinstance(output, tuple) else new_h


    def _hooked_output(self, module: nn.Module, args: tuple, output):
        now = self._now
        x, now.x = now.x, None
        plan = self._plan()
        h = output[0] if isinstance(output, tuple) else output
        if plan is None or (x is None and self.residual_sources):
            return None
        if x is None:
            x = torch.zeros_like(h)
        # The adapters' output as it is (no x added: the model adds its residual after this module).
        new_h = plan[0](h, x, self._layer_norm_fn, None)
        return (new_h, *output[1:]) if isinstance(output, tuple) else new_h


def _input_of(where: InputOf, args: tuple, kwargs: dict) -> torch.Tensor:
    if len(args) > where.index:
        return args[where.index]
    return kwargs[where.keyword]


# -- where residual-block adapters sit (bottleneck adapters and the fusion layers beside them) ----------
#: Config flag -> the ``LayerSpec`` field of the residual block it places adapters at.
LOCATIONS = {"mh_adapter": "attention_block", "output_adapter": "ffn_block", "cross_adapter": "cross_attention_block"}


def config_flag_of(block, location: str) -> str | None:
    """The config flag that places adapters at ``block`` (``None``: the model has no such block)."""
    if block is None:
        return None
    return block.config_flag or location


def holder_module(layer: nn.Module, path: str) -> nn.Module:
    # A model without a module at the holder path gets an empty container there, so weight keys
    # read e.g. "transformer.layer.0.output_adapters.adapters.NAME..." as in the reference.
    parent = layer
    for part in path.split("."):
        child = parent._modules.get(part)
        if child is None:
            child = nn.Module()
            parent.add_module(part, child)
        parent = child
    return parent
