"""Check a ModelSpec against a model, and say in plain words what does not match.

A wrong module path in a spec otherwise surfaces deep inside ``add_adapter`` as
``AttributeError: TinyMLP has no attribute `fc_inn```, which names neither the spec field nor the
fix. :func:`spec_problems` resolves every path a spec names against a model (each layer with its
stack's view of the spec) and returns one sentence per mismatch, such as::

    ModelSpec.linears['ffn_in'] = 'mlp.fc_inn' is not a module of layer 0 (TinyTransformerLayer):
    'mlp' (TinyMLP) has no submodule 'fc_inn'; it has: fc_in, fc_out, dropout.

The conformance suite runs it before its other checks (``test_spec_matches_the_model``), and
``adapters.init(model, spec=...)`` runs it on a spec a user gives.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping

from torch import nn

from ..plugins import spec as spec_module
from ..plugins.spec import FusedLinear, InputOf, KVProjections, ModelSpec, OutputOf, ResidualBlock, SelfAttention

# Fields that describe one layer (paths relative to it); the spec module lists them once it has per-stack overrides.
_LAYER_FIELDS = ("attention_block", "ffn_block", "linears", "fused_linears", "self_attention")
# Fields whose paths are relative to the base model.
_MODEL_FIELDS = ("embeddings", "prompt_embeddings", "padding_mask")


def spec_problems(model: nn.Module) -> list[str]:
    """Every path of ``model``'s spec that does not resolve in ``model``, as sentences (empty: all match).

    ``model`` has been through ``adapters.init``; its ``adapters_state.spec`` is the spec as the
    plugin set it for this checkpoint (``adapters_post_init`` may replace it).

    Example:
        >>> import adapters
        >>> from adapters.testing.spec_check import spec_problems
        >>> adapters.init(model)  # doctest: +SKIP
        >>> spec_problems(model)  # doctest: +SKIP
        []
    """
    state = model.adapters_state
    spec: ModelSpec = state.spec
    problems: list[str] = []
    for field in _MODEL_FIELDS:
        value = getattr(spec, field, None)
        for label, where in _paths(f"ModelSpec.{field}", value):
            problems += _check(label, where, state.base_model, "the base model", strict_keyword=True)
    layer_fields = getattr(spec_module, "LAYER_FIELDS", _LAYER_FIELDS)
    seen: set[tuple[str, str]] = set()
    layer_spec = getattr(state, "layer_spec", lambda index: spec)
    for index, layer in state.layers:
        for field in layer_fields:
            for label, where in _paths(f"ModelSpec.{field}", getattr(layer_spec(index), field, None)):
                # One sentence per path and layer class, not one per layer.
                key = (label, type(layer).__name__)
                if key in seen:
                    continue
                found = _check(label, where, layer, f"layer {index}")
                if found:
                    seen.add(key)
                    problems += found
    return problems


def _paths(label: str, value: object):
    """``(label, path or InputOf/OutputOf)`` for every module reference inside a spec value."""
    if value is None:
        return
    if isinstance(value, str):
        yield label, value
    elif isinstance(value, (InputOf, OutputOf)):
        yield label, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _paths(f"{label}[{key!r}]", item)
    elif isinstance(value, (tuple, list)):
        for position, item in enumerate(value):
            yield from _paths(f"{label}[{position}]", item)
    elif isinstance(value, ResidualBlock):
        # The holder is created as an empty container when the model has no module there.
        yield from _paths(f"{label}.residual", value.residual)
        yield from _paths(f"{label}.sublayer", value.sublayer)
        yield from _paths(f"{label}.layer_norm", value.layer_norm)
    elif isinstance(value, FusedLinear):
        yield label + ".path", value.path
    elif isinstance(value, SelfAttention):
        yield label + ".path", value.path
        # hidden_states and projections are relative to the attention module.
        yield label + ".hidden_states", _Under(value.path, value.hidden_states)
        if value.projections is not None:
            yield from _projection_paths(f"{label}.projections", value.path, value.projections)
    # Other values (names of methods or parameters, flags) are no module paths.


def _projection_paths(label: str, attention: str, projections: KVProjections):
    for name in ("key", "value", "fused_qkv"):
        path = getattr(projections, name)
        if path is not None:
            yield f"{label}.{name}", _join(attention, path)
    yield f"{label}.attention_mask", _Under(attention, projections.attention_mask)


@dataclasses.dataclass(frozen=True)
class _Under:
    """A path or InputOf relative to the module at ``prefix``."""

    prefix: str
    where: InputOf | OutputOf | str


def _join(prefix: str, path: str) -> str:
    return ".".join(part for part in (prefix, path) if part)


def _check(label: str, where: object, root: nn.Module, root_name: str, strict_keyword: bool = False) -> list[str]:
    if isinstance(where, _Under):
        inner = where.where
        if isinstance(inner, str):
            return _check(label, _join(where.prefix, inner), root, root_name, strict_keyword)
        where = dataclasses.replace(inner, path=_join(where.prefix, inner.path))
    path = where if isinstance(where, str) else where.path
    module, problem = _resolve(label, path, root, root_name)
    if problem:
        return [problem]
    if isinstance(where, InputOf):
        problem = _input_problem(label, where, module, strict_keyword)
        if problem:
            return [problem]
    return []


def _resolve(label: str, path: str, root: nn.Module, root_name: str) -> tuple[nn.Module | None, str | None]:
    module = root
    walked: list[str] = []
    for part in path.split(".") if path else ():
        child = module._modules.get(part)
        if child is None:
            where = f"'{'.'.join(walked)}' ({type(module).__name__})" if walked else f"{root_name} itself"
            children = ", ".join(module._modules) or "no submodules"
            return None, (
                f"{label} = {path!r} is not a module of {root_name} ({type(root).__name__}): {where} has no "
                f"submodule {part!r}; it has: {children}."
            )
        module = child
        walked.append(part)
    return module, None


def _input_problem(label: str, where: InputOf, module: nn.Module, strict_keyword: bool) -> str | None:
    """Whether ``module.forward`` can receive the argument ``where`` names."""
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    names = [p.name for p in parameters]
    if where.keyword is not None and where.keyword in names:
        return None
    # The core reads the argument by keyword, else at its position; the padding mask's keyword is
    # looked up in the signature, so it must be a named parameter there (strict_keyword).
    if not strict_keyword and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None  # **kwargs: any keyword may arrive
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    has_var_args = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    by_position = where.index < len(positional) or has_var_args
    if by_position and (where.keyword is None or not strict_keyword):
        return None
    at = f"{where.path!r}" if where.path else "the module itself"
    return (
        f"{label} reads argument {where.keyword!r} (position {where.index}) of {at} ({type(module).__name__}), "
        f"but its forward takes: {', '.join(names) or 'no arguments'}."
    )
