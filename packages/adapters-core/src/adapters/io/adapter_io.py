"""Save and load single adapters in the reference format."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..configs.base import AdapterConfig, config_from_dict
from ..configs.checks import size_summary
from ..core.reference_format import (
    expected_keys,
    read_config_file,
    saved_config_dict,
    saved_path,
    strip_base_prefix,
    write_config,
)
from ..errors import AdapterConfigError, AdapterLoadError
from ..files import format as fmt
from ..files import integrity
from ..files.atomic import atomic_directory
from ..files.weights import load_weights, save_weights

if TYPE_CHECKING:
    from ..core.state import AdapterState


def adapter_state_dict(
    state: AdapterState, name: str, full: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The adapter's tensors, keyed as the reference library keys them (see :func:`saved_path`).

    ``full``, a state dict of the whole model (keyed by the model's own names, which differ from the
    saved keys where a plugin maps names to the 4.x ones), replaces the modules' tensors where it
    has them: the whole weights a trainer gathered from FSDP or DeepSpeed ZeRO-3 shards.
    """
    tensors: dict[str, torch.Tensor] = {}
    for path, module in state.modules_of(name).items():
        saved, own = saved_path(state, path), f"{state.base_prefix}{path}"
        for key, value in module.state_dict().items():
            tensors[f"{saved}.{key}"] = full.get(f"{own}.{key}", value) if full is not None else value
    return tensors


def adapter_config_dict(state: AdapterState, name: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    return saved_config_dict(state, name, state.configs[name].to_dict(), meta)


ADAPTER_FILES = frozenset(
    {fmt.ADAPTER_CONFIG, fmt.ADAPTER_WEIGHTS, fmt.ADAPTER_WEIGHTS_LEGACY, fmt.INTERFACE_CONFIG}
)


def write_adapter(
    state: AdapterState,
    folder: Path,
    name: str,
    meta: dict[str, Any] | None = None,
    use_safetensors: bool = True,
    tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the adapter's files into ``folder`` (a save's scratch folder).

    ``tensors``, the model's full state dict, replace the adapter's own where given (see :func:`adapter_state_dict`).
    """
    state.require(name)
    config = adapter_config_dict(state, name, meta)
    weights = adapter_state_dict(state, name, tensors)
    weights_name = fmt.ADAPTER_WEIGHTS if use_safetensors else fmt.ADAPTER_WEIGHTS_LEGACY
    record = save_weights(weights, folder / weights_name, use_safetensors)
    write_config(folder / fmt.ADAPTER_CONFIG, config, weights_name, record)
    write_interface(state, folder)


def write_interface(state: AdapterState, folder: Path) -> None:
    """``adapter_interface.json`` for a model adapted through an AdapterModelInterface (as the reference saves it)."""
    interface = state.spec.interface
    if interface is not None:
        interface.save(folder, state.base_model.config.model_type)


def check_interface(state: AdapterState, folder: Path) -> None:
    """Refuse an adapter saved through another AdapterModelInterface than the model's: its modules sit elsewhere.

    A folder without the file, or a model adapted by a plugin, loads as before (the reference
    saves the file for model types that plugins here support natively).
    """
    ours = state.spec.interface
    if ours is None or not (folder / fmt.INTERFACE_CONFIG).is_file():
        return
    here, there = ours.to_dict(), type(ours).load(folder).to_dict()
    differing = sorted(k for k, v in here.items() if k != "adapter_methods" and there[k] != v)
    if differing:
        raise AdapterLoadError(
            f"{folder} was saved from a model adapted through another AdapterModelInterface: "
            + ", ".join(f"{k}={there[k]!r} there, {here[k]!r} here" for k in differing)
            + ". Its weights belong to other modules; adapt the model with that interface "
            f"(adapters.init(model, interface=AdapterModelInterface.load({str(folder)!r})))."
        )


def save_adapter(
    state: AdapterState,
    directory: str | os.PathLike,
    name: str,
    meta: dict[str, Any] | None = None,
    use_safetensors: bool = True,
    tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Replace ``directory`` with the adapter's folder as a whole (:func:`~adapters.files.atomic.atomic_directory`)."""
    state.require(name)
    with atomic_directory(directory, ADAPTER_FILES) as scratch:
        write_adapter(state, scratch, name, meta, use_safetensors, tensors)


def read_adapter_config(folder: Path) -> dict[str, Any]:
    return read_config_file(folder, fmt.ADAPTER_CONFIG, "load_adapter", "save_adapter", "adapter")


def read_adapter_weights(
    folder: Path, data: dict[str, Any], use_safetensors: bool | None = None
) -> dict[str, torch.Tensor]:
    """The weights file that belongs to the config ``data`` read from ``folder`` (checked by its integrity record)."""
    return load_weights(
        folder,
        fmt.ADAPTER_WEIGHTS,
        fmt.ADAPTER_WEIGHTS_LEGACY,
        use_safetensors,
        expected=data.get(integrity.KEY),
        config_name=fmt.ADAPTER_CONFIG,
    )


def _upgrade_legacy_config(data: dict[str, Any]) -> dict[str, Any]:
    """Apply the reference library's fixes for files written by older releases."""
    config = dict(data["config"])
    version = data.get("version")
    if version is None and config.get("non_linearity") in ("gelu", "gelu_orig"):
        # Files from before versioning meant the tanh approximation by "gelu".
        config["non_linearity"] = {"gelu": "gelu_new", "gelu_orig": "gelu"}[config["non_linearity"]]
    if (
        isinstance(version, str)
        and version.startswith(fmt.FORMAT_VERSION_PREFIX)
        and config.get("architecture") == "lora"
        and _version_tuple(version[len(fmt.FORMAT_VERSION_PREFIX) :]) < (1, 1, 0)
        and config.get("r") != config.get("alpha")
    ):
        # Releases before 1.1.0 ignored alpha (scaling was 1); keep their trained behaviour.
        config["alpha"] = config.get("r")
    return config


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def parse_saved_config(data: dict[str, Any], folder: Path) -> AdapterConfig:
    try:
        return config_from_dict(_upgrade_legacy_config(data))
    except (AdapterConfigError, TypeError) as error:
        raise AdapterLoadError(f"Cannot use the config in {folder}: {error}") from error


_LEGACY_CONTAINERS = (
    "attention_text_task_adapters",
    "attention_text_lang_adapters",
    "layer_text_task_adapters",
    "layer_text_lang_adapters",
)


def _rename_legacy_keys(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """adapter-transformers 2.x/3.x stored bottlenecks under other container names."""
    renamed = {}
    for key, value in tensors.items():
        for legacy in _LEGACY_CONTAINERS:
            key = key.replace(f".{legacy}.", ".adapters.")
        renamed[key] = value
    return renamed


def match_weights(
    state: AdapterState, name: str, saved_name: str, tensors: dict[str, torch.Tensor], folder: Path
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Pair the loaded tensors with the parameters of the freshly added adapter ``name``; raise on any mismatch.

    Returns ``(saved key, parameter, tensor)`` triples. Reads only the parameters' shapes and dtypes,
    so it also runs on the trial build on the ``meta`` device (see :mod:`adapters.model.dry_run`):
    a config whose sizes do not fit the file is refused before anything of its size is allocated.
    """
    mapping = expected_keys(state, name, saved_name)
    tensors = strip_base_prefix(state, _rename_legacy_keys(tensors))
    for method, _ in state.methods_of(state.configs[name]):
        tensors = method.convert_saved_weights(state, name, saved_name, tensors)
    params = {}
    for path, module in state.modules_of(name).items():
        for key, value in module.state_dict(keep_vars=True).items():
            params[f"{path}.{key}"] = value
    # A module registered under two names (the LayerNorm of ln_before) may be saved under one.
    present_ids = {id(params[mapping[k]]) for k in tensors if k in mapping}
    missing = sorted(k for k in set(mapping) - set(tensors) if id(params[mapping[k]]) not in present_ids)
    unexpected = sorted(set(tensors) - set(mapping))
    sizes = size_summary(state.configs[name])
    if missing or unexpected:
        raise AdapterLoadError(
            f"The weights in {folder} do not match the adapter's config ({sizes}) for this model: "
            f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}."
        )
    pairs = [(saved_key, params[key], tensors[saved_key]) for saved_key, key in mapping.items() if saved_key in tensors]
    for saved_key, target, source in pairs:
        if target.shape != source.shape:
            raise AdapterLoadError(
                f"{saved_key} in {folder} has shape {tuple(source.shape)}; this model expects {tuple(target.shape)} "
                f"from the config's {sizes}. The config does not belong to these weights (was it edited?)."
            )
    _check_dtypes(pairs, folder)
    return pairs


def _check_dtypes(pairs: list[tuple[str, torch.Tensor, torch.Tensor]], folder: Path) -> None:
    """Refuse weights that a cast would change beyond rounding; warn once about the casts that will happen.

    Floating weights are cast to the dtype of the adapter's parameters (a float32 file into a half
    model, say). Values beyond the target's range would become infinite, so such a file is refused;
    integer or bool weights for floating parameters (or the reverse) are no weights of this adapter.
    """
    casts: dict[tuple[torch.dtype, torch.dtype], int] = {}
    for saved_key, target, source in pairs:
        if target.dtype == source.dtype:
            continue
        if not (target.dtype.is_floating_point and source.dtype.is_floating_point):
            raise AdapterLoadError(
                f"{saved_key} in {folder} has dtype {source.dtype}; this adapter's parameter is {target.dtype}. "
                "The file does not hold this adapter's weights."
            )
        limit = torch.finfo(target.dtype).max
        if source.numel() and torch.finfo(source.dtype).max > limit:
            largest = source.detach().abs().max().item()
            if largest > limit:
                raise AdapterLoadError(
                    f"{saved_key} in {folder} holds {largest:.4g}, beyond the largest {target.dtype} value "
                    f"({limit:.4g}): cast to this model's {target.dtype} it would become infinite. Load it into a "
                    f"model in {source.dtype} (or another wider dtype)."
                )
        casts[(source.dtype, target.dtype)] = casts.get((source.dtype, target.dtype), 0) + 1
    if casts:
        described = ", ".join(f"{n} tensor(s) from {a} to {b}" for (a, b), n in casts.items())
        warnings.warn(
            f"The weights in {folder} are cast to the dtype of the adapter's parameters: {described}. Save and "
            "load adapters in the model's dtype to load them unchanged.",
            UserWarning,
            stacklevel=4,
        )


def load_into(state: AdapterState, name: str, saved_name: str, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """Copy loaded tensors into the freshly added adapter ``name``; raise on any mismatch."""
    pairs = match_weights(state, name, saved_name, tensors, folder)
    with torch.no_grad():
        for _, target, source in pairs:
            target.copy_(source)
    # Once per method, also where a ConfigUnion holds several of its configs.
    for method in dict.fromkeys(method for method, _ in state.methods_of(state.configs[name])):
        method.after_load(state, name)
