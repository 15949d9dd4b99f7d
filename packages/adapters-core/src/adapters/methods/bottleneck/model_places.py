"""Model-level (not per-layer) places of bottleneck adapters: invertible adapters, shared PHM tensors.

Both are reported by ``get_adapter`` under layer index ``-1`` ("invertible", "shared"), as in
the reference library.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import AdapterConfigError
from ..base import AdapterDict, adapter_dict
from .invertible import InvertibleAdapter

INVERTIBLE_KEY = (-1, "invertible")
SHARED_KEY = (-1, "shared")


def embedding_size(embeddings: nn.Module, model_config) -> int:
    """Width of the embedding output (ALBERT and ELECTRA embed narrower than their hidden size).

    As in the reference: the config's ``embedding_size``, else its ``hidden_size``; a bare
    ``nn.Embedding`` (GPT-2's ``wte``) or a model without one hidden size (CLIP's dual model) is
    read from its token embedding.
    """
    if isinstance(embeddings, nn.Embedding):
        return embeddings.embedding_dim
    size = getattr(model_config, "embedding_size", None) or getattr(model_config, "hidden_size", None)
    if size is None:
        size = next(m.embedding_dim for m in embeddings.modules() if isinstance(m, nn.Embedding))
    return size


class SharedPlace:
    """``shared_parameters.<name>`` of the base model: tensors the layers' modules read; no hooks."""

    def __init__(self, base_model: nn.Module) -> None:
        self.container: AdapterDict = adapter_dict(base_model, "shared_parameters")


class InvertiblePlace:
    """``invertible_adapters.<name>`` of the base model and the hooks that apply them.

    Only the first adapter of the active setup acts, and only if it has an invertible module
    (the reference library's rule: in a MAD-X ``Stack("lang", "task")`` the language adapter's
    invertible adapter transforms the embeddings; a ``Stack("task", "lang")`` uses none).

    A forward hook on the embeddings module applies it and remembers which module it applied; a
    forward pre-hook on the head's output embeddings (``get_output_embeddings()``, for models with
    an LM head) applies that module's inverse to the hidden states entering the projection. The
    pairing survives ``AdapterSetup``, which restores the outer setup when the body returns, before
    the head runs. Both hooks exist only while the model holds some invertible adapter.
    """

    def __init__(self, model: nn.Module, base_model: nn.Module, embeddings_path: str | None) -> None:
        if embeddings_path is None:
            raise AdapterConfigError(
                f"Invertible adapters (inv_adapter) act on the embedding output, but the "
                f"{base_model.config.model_type} plugin declares no embeddings module; set inv_adapter=None."
            )
        self.embeddings = base_model.get_submodule(embeddings_path)
        self.size = embedding_size(self.embeddings, base_model.config)
        self.container: AdapterDict = adapter_dict(base_model, "invertible_adapters")
        self.output_embeddings = self._output_embeddings(model, base_model.config)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._active: InvertibleAdapter | None = None
        self._applied: InvertibleAdapter | None = None

    def _output_embeddings(self, model: nn.Module, model_config) -> nn.Module | None:
        get = getattr(model, "get_output_embeddings", None)
        module = get() if get is not None else None
        if module is None:
            return None
        if not (
            isinstance(module, nn.Linear)
            and module.in_features == self.size
            and module.out_features == model_config.vocab_size
        ):
            raise AdapterConfigError(
                f"{type(model).__name__}.get_output_embeddings() is a {type(module).__name__} that does not project "
                f"{self.size} hidden units onto the {model_config.vocab_size} tokens, so the invertible adapter cannot "
                "be inverted before it; use inv_adapter=None with this model."
            )
        return module

    # -- adapters -----------------------------------------------------------------------
    def add(self, name: str, module: InvertibleAdapter) -> None:
        if name in self.container._modules:
            raise AdapterConfigError(
                f"Adapter {name!r} has an invertible adapter already: one adapter holds at most one; give "
                "inv_adapter to only one config of a ConfigUnion."
            )
        self.container[name] = module
        if not self._handles:
            self._handles.append(self.embeddings.register_forward_hook(self._after_embeddings))
            if self.output_embeddings is not None:
                self._handles.append(self.output_embeddings.register_forward_pre_hook(self._before_output_embeddings))

    def delete(self, name: str) -> None:
        module = self.container._modules.pop(name, None)
        if module is not None and module in (self._active, self._applied):
            self._active = self._applied = None
        if not self.container._modules:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()

    def activate(self, first: str | None) -> None:
        """Use the invertible adapter of ``first`` (the active setup's first adapter), if it has one."""
        self._active = self.container._modules.get(first) if first is not None else None

    # -- hooks ----------------------------------------------------------------------------
    def _after_embeddings(self, module: nn.Module, args: tuple, output):
        adapter = self._applied = self._active
        if adapter is None:
            return None
        if isinstance(output, tuple):
            return (adapter(output[0]), *output[1:])
        return adapter(output)

    def _before_output_embeddings(self, module: nn.Module, args: tuple):
        adapter, self._applied = self._applied, None
        if adapter is None or not args:
            return None
        return (adapter.inverse(args[0]), *args[1:])
