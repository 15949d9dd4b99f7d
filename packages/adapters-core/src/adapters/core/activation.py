"""Which adapters act in a forward pass, chosen per thread and per asyncio task.

A setup is not installed into the model. Activating one *builds* an :class:`Activation`: every
place of every method records what it would run under that setup (its *plan*: a block function,
a hook, a prompt plan), and the places whose hooks it needs are attached once. The hooks look up
their plan in the activation of the forward pass that runs them (:func:`current`), so passes
under different setups can run at the same time on one model: ``set_active_adapters`` makes an
activation the model-wide default, ``AdapterSetup`` picks another one for the passes it
encloses. Activations of ``AdapterSetup`` blocks are cached per model.

Each pass opens a :class:`Frame` in a context variable when it enters the model (or its body)
and closes it when it returns; the frame fixes the pass's activation for its whole duration, so
a concurrent ``set_active_adapters`` affects only the passes started after it. State a pass
carries from one hook to the next (a captured residual, the batch size a Parallel block copies)
lives in :class:`PerThread` attributes: a pass runs in one thread from start to end.

Changes to a model's adapters (adding, deleting, loading, merging, activating) take the model's
:class:`ForwardGuard` exclusively and so wait for the passes in flight; passes take it shared.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import copy
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from torch.compiler import is_compiling

if TYPE_CHECKING:
    from ..composition.blocks import AdapterCompositionBlock
    from .state import AdapterState


class Attachable(Protocol):
    """A place whose hooks an activation needs; attached while some activation of its model uses it."""

    def attach_hooks(self, state: AdapterState) -> None: ...

    def detach_hooks(self) -> None: ...


class PerThread(threading.local):
    """Attributes each thread sees on its own, starting from ``defaults`` (copied per thread).

    For the state a forward pass carries between its hooks. Copies of the owner (``copy.deepcopy``
    of a model, pickling) start afresh.

    Example:
        >>> now = PerThread(batch_size=None)
        >>> now.batch_size = 4  # seen by this thread only
    """

    def __init__(self, **defaults: Any) -> None:
        self.__dict__["_defaults"] = defaults
        self.__dict__.update({key: copy.copy(value) for key, value in defaults.items()})

    def __deepcopy__(self, memo: dict) -> PerThread:
        return type(self)(**self._defaults)

    def __reduce__(self) -> tuple:
        return _fresh, (type(self), self._defaults)


def _fresh(cls: type, defaults: dict) -> PerThread:
    return cls(**defaults)


class Activation:
    """One setup as built for one model: each place's plan and the attachments it needs.

    ``plans`` maps a place (any object) to what it runs under this setup; a place without an
    entry does nothing. ``parallel`` is the setup's Parallel runtime, if it has a Parallel block.
    """

    __slots__ = ("attachments", "fixups", "parallel", "plans", "setup", "skip_layers")

    def __init__(self, setup: AdapterCompositionBlock | None, skip_layers: frozenset[int]) -> None:
        self.setup = setup
        self.skip_layers = skip_layers
        self.plans: dict[Any, Any] = {}
        # Insertion-ordered: attached in the order the methods activated (hooks run in that order).
        self.attachments: dict[Attachable, None] = {}
        # Changes to the model's hooks that only an exclusive hold may make (re-hooking an LM head).
        self.fixups: list[Any] = []
        self.parallel: Any = None

    def add(self, place: Any, plan: Any, attach: Attachable | None = None) -> None:
        """Record ``place``'s plan (and the object whose hooks must be attached for it to run)."""
        self.plans[place] = plan
        if attach is not None:
            self.attachments[attach] = None


_BUILDING: contextvars.ContextVar[Activation | None] = contextvars.ContextVar("adapters_building", default=None)


def building() -> Activation:
    """The activation being built (in ``AdapterMethod.activate``): places record their plans in it."""
    activation = _BUILDING.get()
    if activation is None:
        raise RuntimeError("Places record their plans only while an activation is built (AdapterState.build).")
    return activation


@contextlib.contextmanager
def build_into(activation: Activation) -> Iterator[Activation]:
    token = _BUILDING.set(activation)
    try:
        yield activation
    finally:
        _BUILDING.reset(token)


class Frame:
    """One forward pass of one model: its activation; opened by ``opener``'s pre-hook."""

    __slots__ = ("activation", "opener", "state", "token")

    def __init__(self, state: AdapterState, activation: Activation, opener: Any) -> None:
        self.state = state
        self.activation = activation
        self.opener = opener
        self.token: contextvars.Token | None = None


_FRAME: contextvars.ContextVar[Frame | None] = contextvars.ContextVar("adapters_forward", default=None)


def current(state: AdapterState) -> Activation:
    """The activation of the forward pass of ``state``'s model running here (else the model-wide one).

    The one lookup every hook makes: a context variable and an identity check.
    """
    if is_compiling():
        return state.activation
    frame = _FRAME.get()
    if frame is not None and frame.state is state:
        return frame.activation
    return state.activation


def current_frame(state: AdapterState) -> Frame | None:
    if is_compiling():
        return None
    frame = _FRAME.get()
    return frame if frame is not None and frame.state is state else None


def open_frame(state: AdapterState, activation: Activation, opener: Any) -> Frame:
    frame = Frame(state, activation, opener)
    frame.token = _FRAME.set(frame)
    return frame


def close_frame(frame: Frame) -> None:
    try:
        _FRAME.reset(frame.token)
    except ValueError:  # set in another context (a pass abandoned midway there): forget it here
        _FRAME.set(None)


class ForwardGuard:
    """A readers-writer lock of one model: forward passes hold it shared, changes exclusively.

    Holds are counted per thread, so a thread's nested passes never wait for each other, and a
    thread taking the exclusive hold waits only for other threads' passes (a change made from
    inside a pass in the same thread does not deadlock). Waiting writers go first: passes that
    start while a change waits, wait for it.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._readers: dict[int, int] = {}
        self._writer: int | None = None
        self._writer_depth = 0
        self._waiting_writers = 0
        #: Serializes builds of activations (which read the places that a build may add to the cache).
        self.building = threading.RLock()

    def __deepcopy__(self, memo: dict) -> ForwardGuard:
        return ForwardGuard()

    def __reduce__(self) -> tuple:
        return ForwardGuard, ()

    def hold(self) -> None:
        """Take a shared hold (a forward pass starts)."""
        me = threading.get_ident()
        with self._lock:
            held = self._readers.get(me, 0)
            if not held and self._writer != me:
                while self._writer is not None or self._waiting_writers:
                    self._lock.wait()
            self._readers[me] = held + 1

    def release(self) -> None:
        """Give back a shared hold (the pass returned)."""
        me = threading.get_ident()
        with self._lock:
            held = self._readers.get(me, 0) - 1
            if held > 0:
                self._readers[me] = held
                return
            self._readers.pop(me, None)
            if self._waiting_writers:
                self._lock.notify_all()

    def holds(self) -> int:
        """How many shared holds this thread has."""
        return self._readers.get(threading.get_ident(), 0)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model exclusively: no other thread's pass runs meanwhile (re-entrant)."""
        me = threading.get_ident()
        with self._lock:
            if self._writer == me:
                self._writer_depth += 1
            else:
                self._waiting_writers += 1
                try:
                    while self._writer is not None or any(thread != me for thread in self._readers):
                        self._lock.wait()
                finally:
                    self._waiting_writers -= 1
                self._writer, self._writer_depth = me, 1
        try:
            yield
        finally:
            with self._lock:
                self._writer_depth -= 1
                if not self._writer_depth:
                    self._writer = None
                    self._lock.notify_all()

    def is_exclusive(self) -> bool:
        return self._writer == threading.get_ident()


class ActivationCache:
    """The activations built for ``AdapterSetup`` blocks of one model, the most recent ``size``."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._entries: collections.OrderedDict[tuple, Activation] = collections.OrderedDict()

    def __deepcopy__(self, memo: dict) -> ActivationCache:
        return ActivationCache(self.size)

    def get(self, key: tuple) -> Activation | None:
        return self._entries.get(key)

    def put(self, key: tuple, activation: Activation) -> None:
        self._entries[key] = activation
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def values(self) -> list[Activation]:
        return list(self._entries.values())
