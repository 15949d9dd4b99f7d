"""Parameter averaging: a new adapter from the weighted parameters of others (``model.average_adapter``).

Unlike the ``Average`` composition block, the result is one ordinary adapter (save, load, merge
it like any other) and costs nothing extra at inference.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..configs.lora import LoRAConfig
from ..errors import AdapterConfigError, AdapterError, AdapterNameError
from ..methods.base import check_adapter_name
from ..methods.lora.averaging import concatenate, factorwise_merge, merge_task_tensors, negate_b_average, svd_average
from ..methods.lora.layer import LoRA

if TYPE_CHECKING:
    from ..core.state import AdapterState
    from .model_mixin import ModelAdaptersMixin

# PEFT's merging methods (add_weighted_adapter), under its names: the pruning methods act on LoRA's
# factors A and B separately; their *_svd forms on the updates, then factor the result to svd_rank.
PRUNING_METHODS = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
SVD_STRATEGIES = ("lora_delta_w_svd", *(f"{method}_svd" for method in PRUNING_METHODS))
STRATEGIES = ("linear", "lora_linear_only_negate_b", "cat", *PRUNING_METHODS, *SVD_STRATEGIES)
# Fields that may differ between averaged adapters (as in the reference): they do not shape the weights.
IGNORED_FIELDS = frozenset({"dropout", "init_weights"})


def _may_differ(strategy: str) -> frozenset[str]:
    """Config fields the sources may differ in: those a strategy reads per source."""
    if strategy in PRUNING_METHODS:  # A and B merged entry by entry: equal ranks, any scalings
        return IGNORED_FIELDS | {"alpha"}
    if strategy == "cat" or strategy in SVD_STRATEGIES:  # the sources' updates, each with its own scaling
        return IGNORED_FIELDS | {"r", "alpha"}
    return IGNORED_FIELDS


def average_adapter(
    model: ModelAdaptersMixin,
    adapter_name: str,
    adapter_list: Sequence[str] | Mapping[str, float],
    weights: Sequence[float] | None = None,
    combine_strategy: str = "linear",
    normalize_weights: bool = True,
    overwrite_ok: bool = False,
    set_active: bool = False,
    svd_rank: int | None = None,
    density: float | None = None,
    majority_sign_method: str = "total",
) -> None:
    """Add ``adapter_name`` as a weighted combination of the adapters in ``adapter_list``.

    ``linear`` averages every parameter (and buffer) of any method; the adapters must have
    equal configs (up to ``dropout`` and ``init_weights``). For plain LoRA adapters:

    * ``lora_linear_only_negate_b`` averages ``A`` with the absolute weights and ``B`` with the
      weights (a negative weight subtracts an adapter);
    * ``cat`` (PEFT's) places the sources' low-rank pairs side by side: the update is exactly
      ``sum w_i * dW_i``, the rank the sum of theirs (their ranks may differ);
    * ``lora_delta_w_svd`` factors ``sum w_i * dW_i`` to rank ``svd_rank``;
    * PEFT's ``ties``, ``dare_linear``, ``dare_ties`` and ``magnitude_prune`` merge ``A`` and
      ``B`` separately (each source weighted ``sqrt(|w_i * scaling_i|)``, the sign on ``A``),
      keeping a fraction ``density`` of each tensor's entries (the largest for TIES and
      magnitude pruning, a random draw from torch's global generator for DARE, which rescales
      what it keeps by ``1 / density``); TIES elects each entry's sign by ``majority_sign_method``
      (``total`` or ``frequency``) and averages the weighted entries that agree;
    * ``ties_svd``, ``dare_linear_svd``, ``dare_ties_svd`` and ``magnitude_prune_svd`` do the
      same to the updates ``dW_i`` themselves, then factor the result to rank ``svd_rank``.

    Without ``weights`` all adapters weigh the same; ``normalize_weights`` scales the weights
    to sum to 1 (pass ``False`` for task arithmetic with negative weights, and for PEFT's
    results, which do not normalize). On any error the model is left as it was.

    Example:
        >>> model.average_adapter("merged", ["a", "b"], weights=[1.0, -0.5], combine_strategy="cat",
        ...                       normalize_weights=False)  # doctest: +SKIP
        >>> model.average_adapter("ties", ["a", "b"], weights=[1.0, 1.0], combine_strategy="ties",
        ...                       density=0.5, normalize_weights=False)  # doctest: +SKIP
    """
    state = model.adapters_state
    check_adapter_name(adapter_name)
    if combine_strategy not in STRATEGIES:
        raise AdapterConfigError(f"Unknown combine_strategy {combine_strategy!r}; choose from {list(STRATEGIES)}.")
    names, factors = resolve_weights(adapter_list, weights, normalize_weights)
    for name in names:
        state.require(name)
    _check_merging_options(combine_strategy, svd_rank, density, majority_sign_method)
    config = common_config(state, names, _may_differ(combine_strategy))
    if combine_strategy != "linear":
        _check_plain_lora(config, combine_strategy)
        if combine_strategy == "cat":
            rank = sum(state.configs[name].r for name in names)
            config = config.replace(r=rank, alpha=rank)
        elif svd_rank is not None:
            config = config.replace(r=svd_rank)
    exists = adapter_name in state.configs
    if exists and not overwrite_ok:
        raise AdapterNameError(
            f"An adapter named {adapter_name!r} exists already; pass overwrite_ok=True to replace it or choose "
            "another name."
        )
    # Built under a free name first, so the sources (the old adapter_name among them) stay intact until done.
    staging = adapter_name
    while staging in state.configs:
        staging += "_averaging"
    model._add_adapter_modules(staging, config)
    try:
        _fill(state, staging, names, factors, combine_strategy, density, majority_sign_method)
    except BaseException:
        model.delete_adapter(staging)
        raise
    if exists:
        model.delete_adapter(adapter_name)
        model._rename_adapter(staging, adapter_name)
    if set_active:
        model.set_active_adapters(adapter_name)


def _check_merging_options(strategy: str, svd_rank: Any, density: Any, majority_sign_method: Any) -> None:
    if strategy in SVD_STRATEGIES:
        if not isinstance(svd_rank, int) or isinstance(svd_rank, bool) or svd_rank < 1:
            raise AdapterConfigError(f"combine_strategy={strategy!r} needs svd_rank >= 1 (got {svd_rank!r}).")
    elif svd_rank is not None:
        raise AdapterConfigError(f"svd_rank applies only to combine_strategy in {list(SVD_STRATEGIES)}.")
    prunes = strategy.removesuffix("_svd") in PRUNING_METHODS
    if prunes:
        if isinstance(density, bool) or not isinstance(density, int | float) or not 0 <= density <= 1:
            raise AdapterConfigError(
                f"combine_strategy={strategy!r} needs density, the fraction of entries kept, in [0, 1] "
                f"(got {density!r})."
            )
    elif density is not None:
        raise AdapterConfigError(
            f"density applies only to combine_strategy in {[*PRUNING_METHODS, *SVD_STRATEGIES[1:]]}."
        )
    if majority_sign_method not in ("total", "frequency"):
        raise AdapterConfigError(f"majority_sign_method must be 'total' or 'frequency' (got {majority_sign_method!r}).")
    if majority_sign_method != "total" and "ties" not in strategy:
        raise AdapterConfigError("majority_sign_method applies only to the TIES strategies (ties, dare_ties, ..._svd).")


def resolve_weights(
    adapter_list: Sequence[str] | Mapping[str, float], weights: Sequence[float] | None, normalize: bool
) -> tuple[list[str], list[float]]:
    """The adapter names and their final weights (the reference's rules)."""
    if isinstance(adapter_list, Mapping):
        if weights is not None:
            raise AdapterConfigError("Pass the weights either as a dict adapter_list or as weights=, not both.")
        names, weights = list(adapter_list), list(adapter_list.values())
    elif isinstance(adapter_list, str):
        names = [adapter_list]
    else:
        names = list(adapter_list)
    if not names:
        raise AdapterConfigError("average_adapter() needs at least one adapter in adapter_list.")
    if len(set(names)) != len(names):
        raise AdapterConfigError(f"adapter_list names an adapter twice: {names}.")
    if weights is None:
        return names, [1.0 / len(names)] * len(names)
    weights = [float(w) for w in weights]
    if len(weights) != len(names):
        raise AdapterConfigError(f"{len(weights)} weights for {len(names)} adapters; give one weight per adapter.")
    if normalize:
        total = sum(weights)
        if total == 0:
            raise AdapterConfigError(
                f"The weights {weights} sum to 0 and cannot be normalized; pass normalize_weights=False."
            )
        weights = [w / total for w in weights]
    return names, weights


def _comparable(value: Any, ignored: frozenset[str]) -> Any:
    if isinstance(value, Mapping):
        return {k: _comparable(v, ignored) for k, v in value.items() if k not in ignored}
    if isinstance(value, list | tuple):
        return [_comparable(v, ignored) for v in value]
    return value


def config_differences(state: AdapterState, first: str, second: str, ignored: frozenset[str] = IGNORED_FIELDS):
    """The config fields in which two adapters differ, besides the ``ignored`` ones (sorted; empty: the same)."""
    a = _comparable(state.configs[first].to_dict(), ignored)
    b = _comparable(state.configs[second].to_dict(), ignored)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def common_config(state: AdapterState, names: Sequence[str], ignored: frozenset[str] = IGNORED_FIELDS):
    """The config of the first adapter, after checking that all have the same (up to the ``ignored`` fields)."""
    for name in names[1:]:
        differing = config_differences(state, names[0], name, ignored)
        if differing:
            raise AdapterConfigError(
                f"Cannot average adapters with different configs: {names[0]!r} and {name!r} differ in {differing}. "
                "Parameters can only be averaged between adapters of the same shape and method."
            )
    return state.configs[names[0]]


def _check_plain_lora(config: Any, strategy: str) -> None:
    plain = (
        isinstance(config, LoRAConfig)
        and config.composition_mode == "add"
        and not config.use_dora
        and not config.is_vera
        and not config.use_gating
    )
    if not plain:
        raise AdapterConfigError(
            f"combine_strategy={strategy!r} is defined for plain LoRA adapters only (not (IA)^3, DoRA, VeRA, gated "
            f"LoRA or config unions); these adapters are {type(config).__name__}. Use combine_strategy='linear'."
        )


def _source_path(path: str, target: str, source: str) -> str:
    if not path.endswith(target):
        raise AdapterError(
            f"Cannot average: the module at {path!r} does not carry the adapter's name at the end of its path, "
            "so its counterparts in the other adapters cannot be found."
        )
    return path[: -len(target)] + source


@torch.no_grad()
def _fill(
    state: AdapterState,
    target: str,
    names: Sequence[str],
    weights: Sequence[float],
    strategy: str,
    density: float | None,
    sign_method: str,
) -> None:
    method = strategy.removesuffix("_svd")
    for path, module in state.modules_of(target).items():
        sources = [state.modules_of(n)[_source_path(path, target, n)] for n in names]
        if strategy == "linear":
            module.load_state_dict(_linear_state(module, sources, weights))
        elif not isinstance(module, LoRA):
            raise AdapterError(f"combine_strategy={strategy!r} found a {type(module).__name__} module at {path!r}.")
        elif strategy == "lora_linear_only_negate_b":
            negate_b_average(module, sources, weights)
        elif strategy == "cat":
            concatenate(module, sources, weights)
        elif strategy == "lora_delta_w_svd":
            svd_average(module, sources, weights)
        elif strategy in SVD_STRATEGIES:
            combine = functools.partial(merge_task_tensors, method=method, density=density, sign_method=sign_method)
            svd_average(module, sources, weights, combine=combine)
        else:
            factorwise_merge(module, sources, weights, method, density, sign_method)


def _linear_state(module: torch.nn.Module, sources: Sequence[torch.nn.Module], weights: Sequence[float]) -> dict:
    """``sum w_i * tensor_i`` for every floating tensor; other tensors must agree and are copied."""
    source_states = [s.state_dict() for s in sources]
    averaged = {}
    for key in module.state_dict():
        values = [state[key] for state in source_states]
        if values[0].is_floating_point():
            averaged[key] = sum(w * v for w, v in zip(weights, values, strict=True))
        elif all(torch.equal(values[0], v) for v in values[1:]):
            averaged[key] = values[0].clone()
        else:
            raise AdapterError(f"Cannot average {key!r}: it holds non-float values that differ between the adapters.")
    return averaged
