"""Build an adapter for real only after a trial build on the ``meta`` device says it fits.

A config names sizes (``r``, ``reduction_factor``, ``prefix_length``...) and a file may name any
size: ``r=10**9`` in a 500-byte ``adapter_config.json`` asks for terabytes. So every adapter is
first built with all its tensors on PyTorch's ``meta`` device, which records shapes and dtypes
and allocates nothing. That trial build, by the methods' own code (no per-method size formulas
to keep in step), gives

* the parameter count, refused above ``max(PARAMETER_FACTOR x the model's own parameters,
  PARAMETER_FLOOR)`` with a message naming the config's size fields, and
* the shapes and dtypes that a loader compares with the weights file (``check``), so a config
  that does not fit its file is refused before anything of its size exists.

Then the trial modules are removed, the model is restored exactly (module tree and the methods'
bookkeeping), and the adapter is built for real. A method whose code cannot run on ``meta``
(a plugin's, say) is built for real without the trial; the built-in methods all run on it.

Every build, trial or real, that fails leaves the model as it was: its modules, including
containers created on the way, and the methods' per-place records.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from ..configs.base import AdapterConfig
from ..configs.checks import size_summary
from ..errors import AdapterConfigError, AdapterError
from ..methods.init import initial_values_unneeded

if TYPE_CHECKING:
    from ..core.state import AdapterState
    from ..methods.base import AdapterMethod

logger = logging.getLogger(__name__)

#: An adapter may have at most this many times the parameters of the model it is added to...
PARAMETER_FACTOR = 10
#: ...or this many (2**24, 64 MiB in float32), whichever is more: tiny test models take ordinary configs.
PARAMETER_FLOOR = 1 << 24

_META = torch.device("meta")


class _OnMeta(TorchFunctionMode):
    """Every tensor made while active is a meta tensor, also where code asks for a device or moves one."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in _device_constructors():
            kwargs["device"] = _META
        elif func is torch.Tensor.to:
            # .to(device, dtype), .to(dtype), .to(other_tensor), .to(device=...): keep the dtype, not the device.
            args = tuple(
                _META if isinstance(a, (torch.device, str)) else a.dtype if i and isinstance(a, torch.Tensor) else a
                for i, a in enumerate(args)
            )
            if kwargs.get("device") is not None:
                kwargs["device"] = _META
        return func(*args, **kwargs)


class ModelSnapshot:
    """The module tree of a model and the methods' records, to undo a failed or trial build exactly."""

    def __init__(self, state: AdapterState) -> None:
        self.children = [(module, dict(module._modules)) for module in state.model.modules()]
        self.method_data = {
            key: dict(value) if isinstance(value, dict) else None for key, value in state.method_data.items()
        }

    def restore(self, state: AdapterState) -> None:
        # Containers and places that the build created go; what existed before stays as it was.
        for module, children in self.children:
            if module._modules != children:
                module._modules.clear()
                module._modules.update(children)
        for key in [k for k in state.method_data if k not in self.method_data]:
            del state.method_data[key]
        for key, entries in self.method_data.items():
            value = state.method_data.get(key)
            if entries is not None and isinstance(value, dict):
                for inner in [k for k in value if k not in entries]:
                    del value[inner]


Parts = Iterable[tuple["AdapterMethod", AdapterConfig]]


def _remove(state: AdapterState, name: str, parts: Parts, snapshot: ModelSnapshot) -> None:
    for method, _ in parts:
        method.delete(state, name)
    state.configs.pop(name, None)
    state.modules.pop(name, None)
    snapshot.restore(state)


def build(state: AdapterState, name: str, config: AdapterConfig, parts: Parts, training: bool) -> None:
    """Create the adapter's modules (by each method of ``parts``); on any error leave the model as it was."""
    parts = list(parts)
    snapshot = ModelSnapshot(state)
    state.configs[name] = config
    try:
        for method, part in parts:
            method.add(state, name, part)
        if not state.modules_of(name):
            raise AdapterConfigError(
                f"Adapter {name!r} would have no modules in this model: its leave_out covers every one of "
                f"the layers {[i for i, _ in state.layers]}. Leave out fewer layers."
            )
        # New modules start in the model's mode, so dropout stays off in a model in eval().
        for module in state.modules_of(name).values():
            module.train(training)
    except BaseException:
        _remove(state, name, parts, snapshot)
        raise


def parameter_count(modules: Iterable[torch.nn.Module]) -> int:
    """Elements of every parameter and buffer of ``modules`` (shared ones once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            seen[id(tensor)] = tensor.numel()
    return sum(seen.values())


def _model_parameters(state: AdapterState) -> int:
    adapter_ids = {id(p) for name in state.configs for _, p in state.parameters_of(name)}
    return sum(p.numel() for p in state.base_model.parameters() if id(p) not in adapter_ids)


def trial(
    state: AdapterState,
    name: str,
    config: AdapterConfig,
    parts: Parts,
    training: bool,
    check: Callable[[AdapterState, str], None] | None = None,
) -> None:
    """Build the adapter on ``meta``, refuse it if too large or if ``check(state, name)`` raises, then undo it.

    ``check`` sees the trial modules (shapes and dtypes, no values) under the adapter's name.
    """
    parts = list(parts)
    snapshot = ModelSnapshot(state)
    # The trial draws no random numbers from the real generators and says nothing the real build will say.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with _OnMeta(), initial_values_unneeded():
                build(state, name, config, parts, training)
        except AdapterError:
            raise
        except Exception as error:  # code that needs real tensors: build for real, unchecked
            logger.debug(
                "Adapter %r cannot be built on the meta device (%r); building it without the trial.", name, error
            )
            return
        try:
            # The file's own refusal first: it names the tensor and the config field that disagree.
            if check is not None:
                check(state, name)
            _check_size(state, name, config)
        finally:
            _remove(state, name, parts, snapshot)


def _check_size(state: AdapterState, name: str, config: AdapterConfig) -> None:
    count = parameter_count(state.modules_of(name).values())
    model = _model_parameters(state)
    limit = max(PARAMETER_FACTOR * model, PARAMETER_FLOOR)
    if count > limit:
        raise AdapterConfigError(
            f"Adapter {name!r} ({type(config).__name__}, {size_summary(config)}) would have {count:,} parameters, "
            f"more than {PARAMETER_FACTOR} times the model's own {model:,} (at most {limit:,}). Such a config is a "
            "mistake or a hostile file: lower its sizes. (If you mean it, raise "
            "adapters.model.dry_run.PARAMETER_FACTOR.)"
        )
