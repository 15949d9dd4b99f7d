"""Type and range checks of config fields; every refusal names the field and what it allows.

Types come from the dataclass annotations (``r: int``, ``dropout: float``, ``leave_out:
tuple[int, ...]``), ranges from each class's ``field_rules``. Values arrive from Python code,
shorthand strings and JSON files written by anyone, so the checks are strict:

* ``bool`` fields take ``True``/``False`` only (not ``0``/``1`` or ``"yes"``).
* ``int`` fields take integers, not bools; a float with an integral value (``8.0``, which some
  JSON writers produce for every number) is accepted and stored as the int ``8``; ``4.5`` is refused.
* ``float`` fields take ints or floats, not bools, and never NaN or infinity (Python's ``json``
  reads ``NaN`` and ``Infinity`` from files).
* Sizes and layer indices stay within int32 (:data:`INT_MAX`): larger ones fit no model and only
  overflow shape arithmetic.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import AdapterConfigError

if TYPE_CHECKING:
    from .base import AdapterConfig

INT_MAX = 2**31 - 1
# torch.manual_seed takes [-2**63, 2**64).
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a field allows beyond its type: ``allowed`` describes it, ``test`` checks a typed, non-None value."""

    allowed: str
    test: Callable[[Any], bool]
    label: str = ""  # how the message names the field, when not by its name


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def int_range(low: int, high: int = INT_MAX, label: str = "") -> Rule:
    return Rule(f"an integer from {low} to {high}", lambda v: _number(v) and low <= v <= high, label)


POSITIVE_INT = int_range(1)
NON_NEGATIVE_INT = int_range(0)
SEED = int_range(_SEED_MIN, _SEED_MAX)
POSITIVE_NUMBER = Rule("a finite number > 0", lambda v: _number(v) and v > 0)
NON_NEGATIVE_NUMBER = Rule("a finite number >= 0", lambda v: _number(v) and v >= 0)
PROBABILITY = Rule("a probability from 0 to 1", lambda v: _number(v) and 0 <= v <= 1)
PROBABILITY_BELOW_ONE = Rule("a probability from 0 up to (not including) 1", lambda v: _number(v) and 0 <= v < 1)
LAYER_INDICES = Rule(
    f"a list of layer indices (integers from 0 to {INT_MAX})",
    lambda v: isinstance(v, tuple) and all(_number(i) and 0 <= i <= INT_MAX for i in v),
)


def one_of(values: Collection[Any], ignore_case: bool = False) -> Rule:
    shown = sorted(values, key=str)
    if ignore_case:
        lowered = {str(v).lower() for v in values}
        return Rule(f"one of {shown} (any case)", lambda v: isinstance(v, str) and v.lower() in lowered)
    return Rule(f"one of {shown}", lambda v: v in values and type(v) in {type(x) for x in values})


def positive_factors(label: str = "") -> Rule:
    """A reduction factor: a positive number, or a mapping of layer keys to positive numbers."""

    def test(value: Any) -> bool:
        if isinstance(value, Mapping):
            return bool(value) and all(_number(v) and v > 0 for v in value.values())
        return _number(value) and value > 0

    return Rule("a finite number > 0, or a mapping of layer indices and 'default' to such numbers", test, label)


# -- types from annotations ----------------------------------------------------------------------
_MISMATCH = object()


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        return f"a mapping of strings to {_describe(typing.get_args(hint)[1]).removeprefix('a ')}s"
    return {
        bool: "true or false",
        int: "an integer",
        float: "a finite number",
        str: "a string",
        type(None): "null",
    }.get(hint, getattr(hint, "__name__", str(hint)))


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as a value of type ``hint`` (lists become tuples, ``8.0`` becomes ``8``), or ``_MISMATCH``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            coerced = _coerce(value, arg)
            if coerced is not _MISMATCH:
                return coerced
        return _MISMATCH
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return _MISMATCH
        items = [_coerce(item, typing.get_args(hint)[0]) for item in value]
        return _MISMATCH if any(item is _MISMATCH for item in items) else tuple(items)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            return _MISMATCH
        items = {k: _coerce(v, typing.get_args(hint)[1]) for k, v in value.items()}
        return _MISMATCH if any(v is _MISMATCH for v in items.values()) else value
    if hint is bool:
        return value if type(value) is bool else _MISMATCH
    if hint is int:
        if isinstance(value, bool):
            return _MISMATCH
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        return _MISMATCH
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return _MISMATCH
        return value if isinstance(value, int) or math.isfinite(value) else _MISMATCH
    if hint is str:
        return value if isinstance(value, str) else _MISMATCH
    if hint is type(None):
        return value if value is None else _MISMATCH
    return value  # Any, nested configs: checked by their owner


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):
        # A plugin's config whose annotations do not resolve: its fields get their rules only.
        return {}


@functools.cache
def _rules(cls: type) -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    for klass in reversed(cls.__mro__):
        rules.update(klass.__dict__.get("field_rules", {}))
    return rules


def _refuse(config: AdapterConfig, field: str, value: Any, allowed: str, label: str = "") -> AdapterConfigError:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return AdapterConfigError(
        f"{type(config).__name__}: {field}={shown} is not allowed; {label or field} must be {allowed}."
    )


def check_fields(config: AdapterConfig) -> None:
    """Check (and normalise in place) every field of a freshly built, frozen config."""
    hints, rules = _hints(type(config)), _rules(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        rule = rules.get(field.name)
        hint = hints.get(field.name, Any)
        coerced = _coerce(value, hint)
        nullable = type(None) in typing.get_args(hint)
        if coerced is _MISMATCH:
            # A rule's description says the type too, and more precisely.
            allowed = _describe(hint) if rule is None else rule.allowed + (" or null" if nullable else "")
            raise _refuse(config, field.name, value, allowed, rule.label if rule else "")
        if rule is not None and coerced is not None and not rule.test(coerced):
            raise _refuse(config, field.name, value, rule.allowed + (" or null" if nullable else ""), rule.label)
        if coerced is not value:
            object.__setattr__(config, field.name, coerced)


# Fields that set the size of an adapter's tensors, named in messages about sizes.
SIZE_FIELDS = (
    "r", "reduction_factor", "inv_adapter_reduction_factor", "phm_dim", "phm_rank", "bottleneck_size",
    "prefix_length", "prompt_length",
)  # fmt: skip


_SIZE_FIELD_USED: dict[str, Callable[[Any], bool]] = {
    "inv_adapter_reduction_factor": lambda c: c.inv_adapter is not None,
    "phm_dim": lambda c: c.phm_layer,
    "phm_rank": lambda c: c.phm_layer and c.factorized_phm_W,
    "bottleneck_size": lambda c: not c.flat,
}


def size_summary(config: AdapterConfig) -> str:
    """``"r=8"``, ``"reduction_factor=16, phm_dim=4"``: the size fields of a config (of each union member)."""
    members = getattr(config, "configs", None) or (config,)
    parts = []
    for member in members:
        for field in SIZE_FIELDS:
            value = getattr(member, field, None)
            if value is not None and _SIZE_FIELD_USED.get(field, lambda c: True)(member):
                parts.append(f"{field}={value!r}")
    return ", ".join(dict.fromkeys(parts))
