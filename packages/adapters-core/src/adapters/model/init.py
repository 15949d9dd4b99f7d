"""``adapters.init``: make a transformers model adapter-capable, in place."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from torch import nn
from transformers import GenerationMixin

from ..core import context
from ..core.spec_check import spec_problems
from ..core.state import AdapterState
from ..errors import UnsupportedModelError
from ..plugins.inference import infer_spec
from ..plugins.interface import INTERFACE_CONFIG, AdapterModelInterface
from ..plugins.manager import get_registry
from ..plugins.spec import ModelSpec
from .generation import ParallelGenerationMixin
from .model_mixin import ModelAdaptersMixin

_CLASS_CACHE: dict[type, type] = {}


def _with_mixin(cls: type) -> type:
    # A subclass with the same name, so save_pretrained's "architectures" and reprs are unchanged.
    if cls not in _CLASS_CACHE:
        # Generative models also get generate() under Parallel setups; others get no generate().
        generative = (ParallelGenerationMixin,) if issubclass(cls, GenerationMixin) else ()
        _CLASS_CACHE[cls] = type(cls.__name__, (ModelAdaptersMixin, *generative, cls), {"__module__": cls.__module__})
    return _CLASS_CACHE[cls]


def init(model: nn.Module, spec: ModelSpec | None = None, interface: AdapterModelInterface | None = None) -> None:
    """Add the adapter API to ``model`` (a transformers model, with or without a head), in place.

    Nothing changes in the model's computation until an adapter is added and activated.

    ``interface``: the reference library's way to adapt a model type no plugin supports, an
    :class:`~adapters.AdapterModelInterface` of module names; adapters then sit where the
    reference puts them in that mode, and ``adapter_interface.json`` is saved beside them. A model
    loaded from a folder that holds ``adapter_interface.json`` (a ``save_pretrained`` of such a
    model) finds its interface there when no plugin supports its type.

    ``spec``: where adapters attach, for a model type no installed plugin supports (or to replace
    the plugin's layout): a :class:`~adapters.plugins.ModelSpec` of module paths relative to the
    base model (``model.base_model``). Every path is checked against the model first; a spec that
    does not fit raises :class:`~adapters.errors.UnsupportedModelError` naming each wrong path and
    leaves the model as it was.

    Example:
        >>> import adapters
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> model = BertForSequenceClassification(BertConfig(
        ...     hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        ...     vocab_size=100))
        >>> adapters.init(model)
        >>> model.add_adapter("task", config="seq_bn")
        >>> model.train_adapter("task")
    """
    if isinstance(model, ModelAdaptersMixin):
        return
    if spec is not None and interface is not None:
        raise TypeError("adapters.init takes a spec or an interface, not both.")
    if interface is None and spec is None and not _has_plugin(model):
        # No plugin: the interface saved with the checkpoint, else the layout inferred from the model.
        interface = _saved_interface(model)
        if interface is None:
            spec = _inferred_spec(model)
    if interface is not None:
        spec = _spec_from_interface(model, interface)
    attach_adapters(model, mix_in=True, spec=spec)


def _has_plugin(model: nn.Module) -> bool:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return model_type is None or model_type in get_registry().model_specs


def _inferred_spec(model: nn.Module) -> ModelSpec:
    """The layout inferred from the model (a warning says what was inferred); else the registry's refusal."""
    model_type = model.config.model_type
    try:
        inferred = infer_spec(model)
    except UnsupportedModelError as inference_error:
        reason = get_registry().unsupported_message(model_type)
        raise UnsupportedModelError(f"{reason} Inferring its layout failed too: {inference_error}") from None
    warnings.warn(
        f"No installed adapters plugin supports model_type {model_type!r}; adapters.init inferred its layout: "
        f"{inferred.describe()}. `python -m adapters.inspect {model_type}` prints it as a ModelSpec for a plugin.",
        UserWarning,
        stacklevel=3,
    )
    return inferred.spec


def _spec_from_interface(model: nn.Module, interface: AdapterModelInterface) -> ModelSpec:
    if not isinstance(interface, AdapterModelInterface):
        raise TypeError(f"adapters.init(interface=...) takes an AdapterModelInterface, not {type(interface).__name__}.")
    if interface.base_model is not None:
        if not isinstance(getattr(model, interface.base_model, None), nn.Module):
            raise UnsupportedModelError(
                f"AdapterModelInterface.base_model = {interface.base_model!r} is not a module of "
                f"{type(model).__name__}; it has: {', '.join(model._modules)}."
            )
        # As the reference does: the interface's paths are relative to this submodule.
        model.base_model_prefix = interface.base_model
    return interface.to_spec(model.config.model_type)


def _saved_interface(model: nn.Module) -> AdapterModelInterface | None:
    """The interface saved with the checkpoint ``model`` was loaded from (else None)."""
    folder = getattr(model, "name_or_path", None)
    if not folder or not (Path(str(folder)) / INTERFACE_CONFIG).is_file():
        return None
    return AdapterModelInterface.load(folder)


def attach_adapters(model: nn.Module, mix_in: bool = False, spec: ModelSpec | None = None) -> None:
    """Build the adapter state of ``model``; ``mix_in`` also adds the API to its class.

    Classes that inherit the API already (the AdapterModel classes) call this in ``__init__``.
    ``spec`` replaces the registered spec of the model's type (see :func:`init`).
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise UnsupportedModelError(
            f"adapters.init expects a transformers PreTrainedModel with a config; got {type(model).__name__}."
        )
    registry = get_registry()
    base_model = getattr(model, "base_model", model)
    given = spec is not None
    # Checkpoint-dependent layouts (a gated FFN, cross-attention, sub-models) resolve here.
    spec = (spec if given else registry.spec_for(model_type)).for_model(base_model)
    base_prefix = "" if base_model is model else f"{model.base_model_prefix}."
    state = _state(model, base_model, base_prefix, spec, registry, given)
    if mix_in:
        model.__class__ = _with_mixin(type(model))
    model.__dict__["adapters_state"] = state
    registry.plugin_manager.hook.adapters_post_init(model=model, spec=spec)
    context.track(model)


def _state(
    model: nn.Module, base_model: nn.Module, base_prefix: str, spec: ModelSpec, registry: Any, given: bool
) -> AdapterState:
    """The adapter state; a spec the user gave is checked against the model first (nothing changes if it fails)."""
    if not given:
        return AdapterState(model, base_model, base_prefix, spec, registry)
    try:
        state = AdapterState(model, base_model, base_prefix, spec, registry)
        model.__dict__["adapters_state"] = state
        problems = spec_problems(model)
    except (AttributeError, TypeError, ValueError) as error:
        problems = [f"{type(error).__name__}: {error}"]
    finally:
        model.__dict__.pop("adapters_state", None)
    if problems:
        listed = "\n  ".join(problems)
        raise UnsupportedModelError(
            f"The ModelSpec given to adapters.init does not fit this {type(model).__name__}:\n  {listed}\n"
            "Fix those paths (relative to model.base_model; `print(model.base_model)` shows its modules)."
        )
    return state
