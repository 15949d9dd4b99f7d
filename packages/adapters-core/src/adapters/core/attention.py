"""Prepend extra key/value positions to a layer's self-attention, from the outside.

Prefix tuning gives every self-attention layer extra keys and values that every query attends to.
transformers 5 attention modules compute q, k and v themselves and hand them, split into heads,
to ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``. While hooks are attached at a
module, :class:`AttentionPrefixHooks` gives that one module a view of its config whose
``_attn_implementation`` names :func:`_attention_with_prefix` (registered below) in the passes
whose activation has a prefix there, and the model's own implementation in others; that function
prepends the prefix keys/values, extends the mask and calls the implementation the model chose
(sdpa, eager, ...). Modules that attend in a method of their own, ``_attn(query, key, value,
attention_mask)`` (GPT-Neo; GPT-J before transformers moved it onto the interface), get that method
wrapped the same way instead: found by the method, so a plugin's spec needs no change between
releases. Modules with their own attention code (DeBERTa) declare their projections
instead (:class:`~adapters.plugins.KVProjections`): the prefix positions are spliced into the
projections' outputs. Nothing is attached while no activation has a prefix at a module; what a
pass carries between the hooks (hidden states, spliced rows) is per thread.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.compiler import is_compiling
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..errors import AdapterConfigError, AdapterError
from ..plugins.spec import InputOf, SelfAttention
from .activation import _BUILDING, PerThread, current
from .hook_order import HookStage, register_staged_forward_hook

ATTENTION_FUNCTION_NAME = "adapters_kv_prefix"

#: ``fn(hidden_states or None, batch_size) -> (keys, values, valid)``: keys and values each
#: ``(batch or 1, heads, n, head_dim)``; ``valid`` is ``None`` (every prefix position is seen) or a
#: ``(batch, n)`` bool tensor, False at positions an example must not see (the padding of shorter
#: prefixes when examples of one batch get prefixes of different lengths, as under BatchSplit).
PrefixFn = Callable[[torch.Tensor | None, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


class _ConfigView:
    """An attention module's config, except that it names the prefix attention function in passes with a prefix."""

    def __init__(self, config: Any, hooks: AttentionPrefixHooks) -> None:
        self.__dict__["_config"] = config
        self.__dict__["_hooks"] = hooks

    def __getattr__(self, name: str) -> Any:
        try:
            config = self.__dict__["_config"]
        except KeyError:  # during copy/unpickling, before __init__ ran
            raise AttributeError(name) from None
        return getattr(config, name)

    @property
    def _attn_implementation(self) -> Any:
        hooks = self.__dict__["_hooks"]
        if hooks._plan() is not None:
            return ATTENTION_FUNCTION_NAME
        return self.__dict__["_config"]._attn_implementation


def _attention_with_prefix(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    return module.config._hooks.attend(module, query, key, value, attention_mask, **kwargs)


def _register_attention_function() -> None:
    """Register the prefix attention function with transformers, once, when a module first needs it.

    Not on import: a process that never runs prefix tuning leaves transformers' global table as it was.
    """
    if ATTENTION_FUNCTION_NAME not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(ATTENTION_FUNCTION_NAME, _attention_with_prefix)

#: The method in which some attention modules compute attention themselves, from heads-split
#: ``query, key, value`` (keys after the cache) and the model's attention mask.
ATTENTION_METHOD = "_attn"


def _own_attention_method(module: nn.Module) -> bool:
    """Whether ``module`` attends in its own ``_attn(query, key, value, attention_mask, ...)``."""
    method = getattr(type(module), ATTENTION_METHOD, None)
    if not callable(method):
        return False
    try:
        names = list(inspect.signature(method).parameters)[1:5]
    except (TypeError, ValueError):
        return False
    return names == ["query", "key", "value", "attention_mask"]


class AttentionPrefixHooks:
    """Prepends the keys/values of ``fn`` to one self-attention module's own, in the passes whose
    activation installed ``fn`` here.

    Example:
        >>> hooks = AttentionPrefixHooks(layer, spec.self_attention)  # doctest: +SKIP
        >>> hooks.install(lambda hidden, batch: (prefix_keys, prefix_values), needs_hidden=False)  # doctest: +SKIP
    """

    def __init__(self, layer: nn.Module, spec: SelfAttention) -> None:
        self.module = layer.get_submodule(spec.path)
        self.spec = spec
        self._state: Any = None
        self._own_plan: tuple[PrefixFn, bool] | None = None  # when used on its own (see install)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._config: Any = None
        self._checked = False  # whether a pass with a prefix went through the prefix function since attached
        # This thread's pass: the attention input (for gates), prefix rows to splice, their number.
        self._now = PerThread(hidden=None, pending=[None, None], n=0, routed=False)
        self._own_method = spec.projections is None and _own_attention_method(self.module)
        projections = spec.projections
        if self._own_method:
            self._eager = None
        elif projections is None:
            if "config" not in self.module.__dict__:
                raise AdapterConfigError(
                    f"{type(self.module).__name__} at {spec.path!r} has no config attribute, so it does not call "
                    "transformers' attention interface; the model plugin must declare its KVProjections."
                )
            # The model's own eager function, which get_interface falls back to for "eager".
            self._eager = getattr(sys.modules.get(type(self.module).__module__), "eager_attention_forward", None)
        else:
            self._mask_index = positional_index(self.module, projections.attention_mask)
            self._fused = projections.fused_qkv is not None
            self._projections = [
                self.module.get_submodule(path)
                for path in ((projections.fused_qkv,) if self._fused else (projections.key, projections.value))
            ]

    def _plan(self) -> tuple[PrefixFn, bool] | None:
        if self._state is None:
            return self._own_plan
        return current(self._state).plans.get(self)

    @property
    def installed(self) -> bool:
        """Whether the activation running here now has a prefix at this module."""
        return self._plan() is not None

    def install(self, fn: PrefixFn, needs_hidden: bool) -> None:
        """Route the module's attention through ``fn``'s prefixes in the activation being built
        (``needs_hidden``: pass it the input).

        Outside a build (the hooks used on their own, without a model's adapters) every pass takes
        ``fn``'s prefixes from now on, until :meth:`remove`.
        """
        build = _BUILDING.get()
        if build is None:
            self.remove()
            self._own_plan = (fn, needs_hidden)
            self.attach_hooks(None)
            return
        build.add(self, (fn, needs_hidden), attach=self)

    def remove(self) -> None:
        """No prefix at this module in the activation being built (it records no plan here).

        Outside a build: take off what :meth:`install` put on.
        """
        if _BUILDING.get() is None and self._own_plan is not None:
            self.detach_hooks()
            self._own_plan = None

    def attach_hooks(self, state: Any) -> None:
        self._state = state
        if self.spec.projections is None:
            self._handles.append(self.module.register_forward_pre_hook(self._capture_hidden, with_kwargs=True))
            if self._own_method:
                self.module.__dict__[ATTENTION_METHOD] = self._attend_in_method
                return
            _register_attention_function()
            self._config = self.module.__dict__["config"]
            self.module.__dict__["config"] = _ConfigView(self._config, self)
            # Checked on the first forward pass with a prefix only: a module that computes attention in code of
            # its own never reaches the prefix function, and the prefix would silently do nothing.
            self._checked = False
            self._handles.append(self.module.register_forward_hook(self._check_routed))
            return
        projections = self.spec.projections
        self._handles.append(self.module.register_forward_pre_hook(self._before_projections, with_kwargs=True))
        for slot, projection in enumerate(self._projections):
            # After a LoRA update of the projection: the prefix rows join the adapted keys and values.
            hook = functools.partial(self._splice, slot)
            self._handles.append(register_staged_forward_hook(projection, hook, HookStage.REPLACE))
        if projections.position_bias is not None:
            original = getattr(type(self.module), projections.position_bias)
            self.module.__dict__[projections.position_bias] = functools.partial(self._bias_without_prefix, original)
        if self._fused:
            self._handles.append(
                register_staged_forward_hook(self.module, self._drop_prefix_queries, HookStage.REPLACE)
            )

    def detach_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._config is not None:
            self.module.__dict__["config"] = self._config
            self._config = None
        self.module.__dict__.pop(ATTENTION_METHOD, None)
        if self.spec.projections is not None and self.spec.projections.position_bias is not None:
            self.module.__dict__.pop(self.spec.projections.position_bias, None)
        self._now = PerThread(hidden=None, pending=[None, None], n=0, routed=False)

    # -- transformers' attention interface ----------------------------------------------------
    def _capture_hidden(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        plan = self._plan()
        now = self._now
        now.routed = False
        now.hidden = _input_of(self.spec.hidden_states, args, kwargs) if plan is not None and plan[1] else None

    def attend(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prepend the prefix to ``key``/``value`` (batch, heads, seq, dim), then attend as the model would."""
        self._now.routed = True
        query, key, value, attention_mask, kwargs = self._with_prefix(module, query, key, value, attention_mask, kwargs)
        implementation = _attention_function(self._config._attn_implementation, self._eager)
        if implementation is None:
            raise AdapterError(
                f"{type(module).__name__} uses eager attention but its module defines no eager_attention_forward; "
                "set attn_implementation='sdpa' on the model."
            )
        return implementation(module, query, key, value, attention_mask, **kwargs)

    def _attend_in_method(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any = None, **kwargs: Any
    ) -> Any:
        """The module's own ``_attn``, over the prefix followed by its keys and values (in passes with a prefix)."""
        if self._plan() is not None:
            query, key, value, attention_mask, kwargs = self._with_prefix(
                self.module, query, key, value, attention_mask, kwargs
            )
        return getattr(type(self.module), ATTENTION_METHOD)(self.module, query, key, value, attention_mask, **kwargs)

    def _check_routed(self, module: nn.Module, args: tuple, output: Any) -> None:
        # Eager passes check the routing (once); under compilation the flag it flips is state dynamo guards
        # on, so checking there would recompile the next call.
        if is_compiling() or self._checked or self._plan() is None:
            return
        if not self._now.routed:
            raise AdapterError(
                f"{type(module).__name__} computed its attention without transformers' attention interface, so "
                "prefix tuning could not act; this transformers release's module needs KVProjections in the "
                "model plugin's spec (or use a release whose module calls the interface)."
            )
        self._checked = True

    def _with_prefix(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        kwargs: dict,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, dict]:
        now = self._now
        hidden, now.hidden = now.hidden, None
        batch = key.shape[0]
        prefix_keys, prefix_values, valid = self._plan()[0](hidden, batch)
        n = prefix_keys.shape[2]
        key = torch.cat([prefix_keys.to(key.dtype).expand(batch, -1, -1, -1), key], dim=2)
        value = torch.cat([prefix_values.to(value.dtype).expand(batch, -1, -1, -1), value], dim=2)
        causal = kwargs.get("is_causal")
        causal = getattr(module, "is_causal", False) if causal is None else causal
        attention_mask = _mask_with_prefix(attention_mask, n, query, key, causal, valid)
        bias = kwargs.get("position_bias")
        if isinstance(bias, torch.Tensor):
            kwargs["position_bias"] = F.pad(bias, (n, 0))  # prefix positions carry no position bias
        return query, key, value, attention_mask, kwargs

    # -- modules with their own attention code (KVProjections) -----------------------------
    def _before_projections(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        plan = self._plan()
        now = self._now
        now.pending = [None, None]
        if plan is None:
            return None
        fn, needs_hidden = plan
        hidden = _input_of(self.spec.hidden_states, args, kwargs)
        batch = hidden.shape[0]
        keys, values, valid = fn(hidden if needs_hidden else None, batch)
        heads, n = keys.shape[1], keys.shape[2]
        keys = keys.expand(batch, -1, -1, -1).transpose(1, 2)  # (batch, n, heads, dim): projection rows
        values = values.expand(batch, -1, -1, -1)
        value_bias = self.spec.projections.value_bias
        if value_bias is not None:
            # The module adds this bias to every value row after the projection; prefix values exclude it.
            values = values - getattr(module, value_bias).view(heads, 1, -1)
        values = values.transpose(1, 2)
        if self._fused:
            # The fused projection's output is read per head as [q | k | v]; prefix query rows are dropped later.
            rows = torch.cat([torch.zeros_like(keys), keys, values], dim=-1)
            now.pending = [rows.reshape(batch, n, -1), None]
        else:
            now.pending = [keys.reshape(batch, n, -1), values.reshape(batch, n, -1)]
        now.n = n
        where = self.spec.projections.attention_mask
        mask = input_at(self._mask_index, where.keyword, args, kwargs)
        if mask is None:
            if valid is not None:
                raise AdapterError(
                    f"{type(module).__name__} got no attention mask, so the padding of prefixes of different "
                    "lengths cannot be hidden; pass an attention_mask or give the adapters one prefix_length."
                )
            return args, kwargs
        # Every query sees the prefix, except the padding of a shorter one (masks here: nonzero is visible).
        mask = _with_prefix_columns(mask, n, valid, 1, 0)
        if self._fused:
            mask = pad_front(mask, n, -2, 1)  # the prefix query rows (dropped afterwards) see everything
        return replace_input(self._mask_index, where.keyword, mask, args, kwargs)

    def _splice(self, slot: int, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        pending = self._now.pending
        rows, pending[slot] = pending[slot], None
        if rows is None:  # another call of the same projection (e.g. on position embeddings), or no prefix
            return output
        return torch.cat([rows.to(output.dtype), output], dim=1)

    def _bias_without_prefix(
        self, original: Callable, query: torch.Tensor, key: torch.Tensor, *args: Any, **kwargs: Any
    ) -> Any:
        if self._plan() is None:
            return original(self.module, query, key, *args, **kwargs)
        n = self._now.n
        rows = n if self._fused else 0
        result = original(self.module, query[..., rows:, :], key[..., n:, :], *args, **kwargs)
        if not isinstance(result, torch.Tensor):
            return result
        return F.pad(result, (n, 0, rows, 0))  # no relative-position bias to or from prefix positions

    def _drop_prefix_queries(self, module: nn.Module, args: tuple, output: tuple) -> tuple | None:
        if self._plan() is None:
            return None
        n = self._now.n
        context, *rest = output
        rest = [r[..., n:, :] if isinstance(r, torch.Tensor) and r.dim() == 4 else r for r in rest]
        return (context[:, n:], *rest)


def _mask_with_prefix(
    mask: torch.Tensor | None,
    n: int,
    query: torch.Tensor,
    key: torch.Tensor,
    causal: bool,
    valid: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The attention mask over ``n`` prefix positions (visible where ``valid``) followed by the model's keys."""
    if mask is None:
        q_len, k_len = query.shape[2], key.shape[2]
        if valid is None and (not causal or q_len == 1):
            return None
        if causal:
            # Without a mask, sdpa would apply a top-left-aligned causal mask over the prefix too.
            offset = k_len - q_len
            positions = torch.arange(k_len, device=query.device)
            visible = positions[None, :] <= torch.arange(q_len, device=query.device)[:, None] + offset
        else:
            visible = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device)
        visible[:, :n] = True
        visible = visible[None, None]
        if valid is not None:
            visible = _with_prefix_columns(visible[..., n:], n, valid, True, False)
        # Additive, as every implementation takes it (eager adds the mask to the scores).
        return torch.zeros(visible.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~visible, torch.finfo(query.dtype).min
        )
    if not isinstance(mask, torch.Tensor):
        raise AdapterError(
            f"Prefix tuning needs the attention mask as a tensor, got {type(mask).__name__} (flex attention's "
            "BlockMask?); load the model with attn_implementation='sdpa' or 'eager'."
        )
    # Boolean masks mark visible positions True, additive float masks with 0, 2-D integer masks with 1.
    if mask.dtype == torch.bool:
        return _with_prefix_columns(mask, n, valid, True, False)
    if mask.is_floating_point():
        return _with_prefix_columns(mask, n, valid, 0.0, torch.finfo(mask.dtype).min)
    return _with_prefix_columns(mask, n, valid, 1, 0)


def _prefix_mask_part(
    mask: torch.Tensor, n: int, valid: torch.Tensor | None, visible: Any, hidden: Any = 0
) -> torch.Tensor:
    """The columns of ``mask`` for ``n`` prefix positions: ``visible`` where ``valid`` (everywhere if None).

    ``mask`` is batch-first with keys last (any rank). With ``valid`` (batch, n) the part has the
    batch of ``valid`` and ``hidden`` at the positions it marks False.
    """
    shape = list(mask.shape)
    shape[-1] = n
    if valid is None:
        return torch.full(shape, visible, dtype=mask.dtype, device=mask.device)
    shape[0] = valid.shape[0]
    valid = valid.to(mask.device).view(valid.shape[0], *([1] * (mask.dim() - 2)), n).expand(shape)
    if mask.dtype == torch.bool:
        return valid
    return torch.where(valid, visible, hidden).to(mask.dtype)


def _with_prefix_columns(mask: torch.Tensor, n: int, valid: torch.Tensor | None, visible: Any, hidden: Any):
    """``mask`` with the prefix columns in front (batch-broadcast masks are expanded when ``valid`` is given)."""
    if valid is None:
        return pad_front(mask, n, -1, visible)
    part = _prefix_mask_part(mask, n, valid, visible, hidden)
    return torch.cat([part, mask.expand(part.shape[0], *mask.shape[1:])], dim=-1)


def pad_front(tensor: torch.Tensor, n: int, dim: int, value: Any) -> torch.Tensor:
    """``tensor`` with ``n`` entries of ``value`` put before its own along ``dim``."""
    shape = list(tensor.shape)
    shape[dim] = n
    return torch.cat([torch.full(shape, value, dtype=tensor.dtype, device=tensor.device), tensor], dim=dim)


def _input_of(where: InputOf, args: tuple, kwargs: dict) -> Any:
    return input_at(where.index, where.keyword, args, kwargs)


def _attention_function(name: str | None, eager: Callable | None) -> Callable | None:
    """The attention implementation ``name`` (``eager``: the model's own function), as the model looks it up."""
    get_interface = getattr(ALL_ATTENTION_FUNCTIONS, "get_interface", None)
    if get_interface is not None:
        return get_interface(name, eager)
    # Early transformers 5 releases (5.0) have no get_interface: their models take ALL_ATTENTION_FUNCTIONS[name]
    # for every implementation but "eager", which is each modeling file's own function.
    return ALL_ATTENTION_FUNCTIONS.get(name, eager)


def input_at(index: int, keyword: str | None, args: tuple, kwargs: dict) -> Any:
    """A forward argument given by keyword, else positionally at ``index`` (``None`` if not given)."""
    if keyword is not None and keyword in kwargs:
        return kwargs[keyword]
    return args[index] if len(args) > index else None


def positional_index(module: nn.Module, where: InputOf) -> int:
    """The positional index of ``where.keyword`` in ``module.forward`` (``where.index`` if not named)."""
    try:
        names = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return where.index
    return names.index(where.keyword) if where.keyword in names else where.index


def replace_input(index: int, keyword: str | None, value: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of a forward pre-hook with one argument replaced, wherever the caller passed it."""
    if keyword is not None and keyword in kwargs:
        return args, {**kwargs, keyword: value}
    if len(args) > index:
        return (*args[:index], value, *args[index + 1 :]), kwargs
    return args, {**kwargs, keyword: value}
