"""``AutoAdapterModel``: the AdapterModel class of a checkpoint's ``model_type``, from the plugins."""

from __future__ import annotations

import importlib
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from ..errors import UnsupportedModelError
from ..plugins.manager import get_registry

_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")


def _resolve(entry: str | type) -> type:
    if isinstance(entry, type):
        return entry
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)


def adapter_model_class(model_type: str) -> type:
    """The AdapterModel class a plugin registered for ``model_type`` (``adapters_adapter_models`` hook)."""
    registry = get_registry()
    entry = registry.adapter_models.get(model_type)
    if entry is None:
        raise UnsupportedModelError(
            f"No installed adapters plugin provides an AdapterModel class for model_type {model_type!r}; "
            f"available: {sorted(registry.adapter_models)}. Use adapters.init() on a transformers model class "
            "instead, or install the family's plugin package."
        )
    return _resolve(entry)


def adapter_model_class_by_name(class_name: str) -> type | None:
    """A registered AdapterModel class by its name (``"BertAdapterModel"``), or ``None``."""
    for entry in get_registry().adapter_models.values():
        name = entry.__name__ if isinstance(entry, type) else entry.partition(":")[2]
        if name == class_name:
            return _resolve(entry)
    return None


class AutoAdapterModel:
    """Builds the XxxAdapterModel class of a config's ``model_type`` (as transformers' Auto classes do).

    Example:
        >>> from adapters import AutoAdapterModel
        >>> model = AutoAdapterModel.from_pretrained("roberta-base")  # doctest: +SKIP
        >>> model.add_classification_head("sst2", num_labels=2)  # doctest: +SKIP
    """

    def __init__(self) -> None:
        raise OSError("AutoAdapterModel is built with AutoAdapterModel.from_pretrained() or .from_config().")

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs: Any) -> Any:
        """A new model with random weights for ``config``."""
        return adapter_model_class(config.model_type)._from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
        """Load a checkpoint (a static head in it becomes the flexible head ``"default"``)."""
        config = kwargs.pop("config", None)
        if not isinstance(config, PretrainedConfig):
            hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
            config, kwargs = AutoConfig.from_pretrained(
                config or pretrained_model_name_or_path,
                return_unused_kwargs=True,
                trust_remote_code=kwargs.pop("trust_remote_code", None),
                **kwargs,
            )
            kwargs.update(hub_kwargs)
        model_class = adapter_model_class(config.model_type)
        return model_class.from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
