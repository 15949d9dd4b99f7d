"""``adapters.init``: make a transformers model adapter-capable, in place."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import GenerationMixin

from ..core import context
from ..core.spec_check import spec_problems
from ..core.state import AdapterState
from ..errors import UnsupportedModelError
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


def init(model: nn.Module, spec: ModelSpec | None = None) -> None:
    """Add the adapter API to ``model`` (a transformers model, with or without a head), in place.

    Nothing changes in the model's computation until an adapter is added and activated.

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
    attach_adapters(model, mix_in=True, spec=spec)


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
