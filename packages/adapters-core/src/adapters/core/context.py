"""``AdapterSetup``: activate a setup only for the forward passes inside a ``with`` block."""

from __future__ import annotations

import contextvars
import weakref
from typing import Any

from torch import nn

from ..errors import AdapterNameError

_CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("adapters_setup", default=None)
_INITIALIZED: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_HANDLES: list = []
_DEPTH = 0


def track(model: nn.Module) -> None:
    """Remember an initialized model so that AdapterSetup can reach it."""
    _INITIALIZED.add(model)
    if _DEPTH:
        _hook(model)


class AdapterSetup:
    """Context manager that activates ``adapter_setup`` for forward passes inside it.

    The hooks that switch the setup exist only while some ``AdapterSetup`` is open, so models
    pay nothing for this feature otherwise. ``skip_layers`` (AdapterDrop, an addition to the
    reference's signature) bypasses the adapters in those layers for the passes inside; by
    default the layers skipped by ``set_active_adapters(..., skip_layers=...)`` stay skipped, as
    in the reference.

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
        global _DEPTH
        self._token = _CURRENT.set(self)
        if _DEPTH == 0:
            for model in list(_INITIALIZED):
                _hook(model)
        _DEPTH += 1
        return self

    def __exit__(self, *exc: object) -> None:
        global _DEPTH
        _CURRENT.reset(self._token)
        _DEPTH -= 1
        if _DEPTH == 0:
            for handle in _HANDLES:
                handle.remove()
            _HANDLES.clear()


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


def _hook(model: nn.Module) -> None:
    base = model.adapters_state.base_model
    _HANDLES.append(base.register_forward_pre_hook(_enter, with_kwargs=True))
    _HANDLES.append(base.register_forward_hook(_exit, always_call=True))


def _state_of(base: nn.Module):
    for model in _INITIALIZED:
        if model.adapters_state.base_model is base:
            return model.adapters_state
    return None


def _enter(base: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    context = _CURRENT.get()
    state = _state_of(base)
    if context is None or state is None:
        return
    try:
        block = state.resolve_setup(context.adapter_setup)
    except AdapterNameError:
        if context.ignore_empty:
            return
        raise
    skip = state.resolve_skip_layers(context.skip_layers) if context.skip_layers is not None else None
    state.context_stack.append((state.active_setup, state.skip_layers))
    state.apply_setup(block, skip)
    if state.parallel is not None:
        # Its own pre-hook was registered during this call's hooks, too late to see this forward.
        return state.parallel.start_forward(base, args, kwargs)
    return None


def _exit(base: nn.Module, args: tuple, output: Any) -> None:
    state = _state_of(base)
    if state is not None and state.context_stack:
        state.apply_setup(*state.context_stack.pop())
