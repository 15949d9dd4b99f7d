"""``AdapterSetup``: activate a setup only for the forward passes inside a ``with`` block.

The block sets a context variable, so it is private to the thread (and the asyncio task) that
opened it: passes of other threads on the same model run their own setups meanwhile. Every
initialized model has a pre-hook and a forward hook (on the model and on its body) that open and
close the pass's frame (:mod:`adapters.core.activation`): the frame fixes the pass's setup (the
open ``AdapterSetup``'s, else the model-wide one) and holds the model's guard shared, so that
changes to the model's adapters wait for the pass to return.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any

import torch._dynamo
from torch import nn
from torch.compiler import is_compiling

from ..errors import AdapterNameError
from . import activation as _activation
from .four_bit_layout import restore_training_layout

_CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("adapters_setup", default=None)


class AdapterSetup:
    """Context manager that activates ``adapter_setup`` for forward passes inside it.

    The setup applies to the passes of the thread (or asyncio task) that opened the block, and to
    threads that inherit its context (``asyncio.to_thread``, ``contextvars.copy_context().run``);
    other threads keep their own setups or the model-wide one. ``skip_layers`` (AdapterDrop, an
    addition to the reference's signature) bypasses the adapters in those layers for the passes
    inside; by default the layers skipped by ``set_active_adapters(..., skip_layers=...)`` stay
    skipped, as in the reference.

    Example:
        >>> import adapters
        >>> with adapters.AdapterSetup("sst2"):  # doctest: +SKIP
        ...     outputs = model(**batch)
        >>> with adapters.AdapterSetup("sst2", skip_layers=[0, 1]):  # doctest: +SKIP
        ...     faster = model(**batch)
    """

    def __init__(
        self,
        adapter_setup: Any,
        head_setup: Any = None,
        ignore_empty: bool = False,
        skip_layers: list[int] | None = None,
    ) -> None:
        self.adapter_setup = adapter_setup
        self.head_setup = head_setup
        self.ignore_empty = ignore_empty
        self.skip_layers = skip_layers
        self._token: contextvars.Token | None = None

    def __enter__(self) -> AdapterSetup:
        self._token = _CURRENT.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _CURRENT.reset(self._token)


def setup_for_next_forward(state: Any) -> Any:
    """The setup a forward pass would run now: the open AdapterSetup's, else the model's active one."""
    context = _CURRENT.get()
    if context is None:
        return state.active_setup
    try:
        return state.resolve_setup(context.adapter_setup)
    except AdapterNameError:
        if context.ignore_empty:
            return state.active_setup
        raise


def track(model: nn.Module) -> None:
    """Give an initialized model (and its body) the hooks that open and close each forward pass."""
    state = model.adapters_state
    modules = [state.model] if state.base_model is state.model else [state.model, state.base_model]
    for module in modules:
        # Registered first, so every other pre-hook of the module runs inside the pass.
        module.register_forward_pre_hook(functools.partial(_enter, state), with_kwargs=True)
        module.register_forward_hook(functools.partial(_exit, state), always_call=True)
    # torch.compile: the hooks read the model's active setup, and dynamo by default installs no guards
    # on what module hooks read (skip_nnmodule_hook_guards), so a compiled model would keep the setup
    # it was compiled with. With the guards, changing the setup (set_active_adapters) recompiles.
    torch._dynamo.config.skip_nnmodule_hook_guards = False


class PassHookHandle:
    """Removes a pre-hook registered with :func:`register_pass_pre_hook` (like torch's handles)."""

    def __init__(self, hooks: list[Any], hook: Any) -> None:
        self.hooks = hooks
        self.hook = hook

    def remove(self) -> None:
        if self.hook in self.hooks:
            self.hooks.remove(self.hook)


def register_pass_pre_hook(state: Any, module: nn.Module, hook: Any) -> PassHookHandle:
    """``module.register_forward_pre_hook(hook, with_kwargs=True)`` for the model or its body.

    The hook runs inside the pass's own pre-hook there, in registration order, after the pass is
    open and before any hook registered on the module directly. A pass that waited for a change
    of the adapters (another thread's ``add_adapter``) runs the hooks as they are after it: torch
    takes the list of a module's hooks before the first of them runs, which would be stale.
    """
    hooks = state.pass_pre_hooks(module)
    hooks.append(hook)
    return PassHookHandle(hooks, hook)


def is_pass_hook(hook: Any) -> bool:
    """Whether ``hook`` is one of the two hooks that open and close the passes of a model (see :func:`track`)."""
    return isinstance(hook, functools.partial) and hook.func in (_enter, _exit)


def adapter_hooks(module: nn.Module, state: Any = None) -> list[Any]:
    """The forward (pre-)hooks adapters placed on ``module``, besides those opening and closing passes.

    For the model or its body this includes the methods' pre-hooks run by the pass's own
    (:func:`register_pass_pre_hook`); ``state`` defaults to the module's own.
    """
    state = state if state is not None else getattr(module, "adapters_state", None)
    hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]
    found = [hook for hook in hooks if not is_pass_hook(hook)]
    if state is not None and (module is state.model or module is state.base_model):
        found = [*state.pass_pre_hooks(module), *found]
    return found


def enter_pass(state: Any, module: nn.Module) -> _activation.Frame | None:
    """Open the frame of a forward pass entering ``module`` (``None``: a pass of this model is open).

    The model's own pre-hook calls it; so does ``generate()`` around an encoder it runs by itself.
    """
    frame = _activation.current_frame(state)
    if frame is not None:
        if frame.opener is not module:
            return None  # the body inside the model's pass
        # A module does not run inside itself: this frame belongs to a pass that never returned
        # (interrupted by a KeyboardInterrupt, which skips the closing hook). Let go of it.
        _close(state, frame)
    state.guard.hold()
    try:
        activation = state.activation_for(_CURRENT.get())
    except BaseException:
        state.guard.release()
        raise
    return _activation.open_frame(state, activation, module)


def leave_pass(state: Any, module: nn.Module) -> None:
    """Close the frame that ``module``'s pass opened (nothing for a nested module)."""
    frame = _activation.current_frame(state)
    if frame is not None and frame.opener is module:
        _close(state, frame)


def _close(state: Any, frame: _activation.Frame) -> None:
    _activation.close_frame(frame)
    state.guard.release()


def _enter(state: Any, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    if not is_compiling():
        enter_pass(state, module)
        if state.four_bit_layers and module.training:
            restore_training_layout(state.four_bit_layers)
    changed = False
    for hook in tuple(state.pass_pre_hooks(module)):
        result = hook(module, args, kwargs)
        if result is not None:
            (args, kwargs), changed = result, True
    if module is state.base_model:
        # The pass's Parallel runtime starts last, so the inputs it copies are final (prompt tuning's
        # placeholders inserted). Here, not as a hook of its own: an AdapterSetup's Parallel setup
        # may be built by enter_pass above, after torch took the list of this module's hooks.
        runtime = _activation.current(state).parallel
        result = runtime.start_forward(module, args, kwargs) if runtime is not None else None
        if result is not None:
            (args, kwargs), changed = result, True
    return (args, kwargs) if changed else None


def _exit(state: Any, module: nn.Module, args: tuple, output: Any) -> None:
    if not is_compiling():
        leave_pass(state, module)
