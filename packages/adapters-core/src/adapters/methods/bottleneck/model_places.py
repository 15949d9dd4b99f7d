"""Model-level (not per-layer) places of bottleneck adapters: invertible adapters, shared PHM tensors.

Both are reported by ``get_adapter`` under layer index ``-1`` ("invertible", "shared"), as in
the reference library.
"""

from __future__ import annotations

import torch
from torch import nn

from ...composition.blocks import AdapterCompositionBlock, BatchSplit, Parallel, Stack
from ...core.activation import PerThread, building, current
from ...errors import AdapterConfigError, CompositionError
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
    invertible adapter transforms the embeddings; a ``Stack("task", "lang")`` uses none). Which one
    (or, under a leading Parallel or BatchSplit, which one per branch) is this place's plan in each
    activation.

    A forward hook on the embeddings module applies it and remembers which module it applied; a
    forward pre-hook on the head's output embeddings (``get_output_embeddings()``, for models with
    an LM head) applies that module's inverse to the hidden states entering the projection. The
    pairing is kept per thread from the embeddings to the head, whatever setup the next pass runs.
    Both hooks exist only while the model holds some invertible adapter.
    """

    def __init__(self, model: nn.Module, base_model: nn.Module, embeddings_path: str | None, state=None) -> None:
        if embeddings_path is None:
            raise AdapterConfigError(
                f"Invertible adapters (inv_adapter) act on the embedding output, but the "
                f"{base_model.config.model_type} plugin declares no embeddings module; set inv_adapter=None."
            )
        self.embeddings = base_model.get_submodule(embeddings_path)
        self.size = embedding_size(self.embeddings, base_model.config)
        self.container: AdapterDict = adapter_dict(base_model, "invertible_adapters")
        self.model, self.model_config = model, base_model.config
        self.output_embeddings = self._output_embeddings(model, base_model.config)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._inverse_handle: torch.utils.hooks.RemovableHandle | None = None
        self._state = state
        # What this thread's embeddings hook applied, for the inverse: one module, or one per Parallel branch.
        self._now = PerThread(applied=None)

    def _output_embeddings(self, model: nn.Module, model_config) -> nn.Module | None:
        get = getattr(model, "get_output_embeddings", None)
        module = get() if get is not None else None
        if module is None:
            return None
        # A composed model's config (EncoderDecoderConfig) has no vocabulary of its own; its head is the decoder's.
        vocab_size = getattr(model_config, "vocab_size", None)
        if not (
            isinstance(module, nn.Linear)
            and module.in_features == self.size
            and (vocab_size is None or module.out_features == vocab_size)
        ):
            raise AdapterConfigError(
                f"{type(model).__name__}.get_output_embeddings() is a {type(module).__name__} that does not project "
                f"{self.size} hidden units onto the {vocab_size} tokens, so the invertible adapter cannot "
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
            self._hook_output_embeddings()

    def _hook_output_embeddings(self) -> None:
        # Flexible-head models change their output projection when LM heads come and go.
        current = self._output_embeddings(self.model, self.model_config)
        if self._inverse_handle is not None and current is self.output_embeddings:
            return
        if self._inverse_handle is not None:
            self._inverse_handle.remove()
            self._inverse_handle = None
        self.output_embeddings = current
        if current is not None:
            self._inverse_handle = current.register_forward_pre_hook(self._before_output_embeddings)

    def delete(self, name: str) -> None:
        self.container._modules.pop(name, None)
        self._now = PerThread(applied=None)
        if not self.container._modules:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            if self._inverse_handle is not None:
                self._inverse_handle.remove()
                self._inverse_handle = None

    def activate(self, setup: AdapterCompositionBlock | None, parallel_runtime=None) -> None:
        """Use the invertible adapter of the setup's first adapter, if it has one (in the activation built).

        Under a leading ``Parallel`` each branch is a model of its own: the batch is copied here,
        before the layers, and each copy gets its branch's first invertible adapter (or none).
        """
        build = building()
        if self._handles and self._output_embeddings(self.model, self.model_config) is not self.output_embeddings:
            build.fixups.append(self._hook_output_embeddings)  # an LM head came or went
        if setup is None:
            return
        lead = setup
        while isinstance(lead, Stack) and isinstance(lead[0], AdapterCompositionBlock):
            lead = lead[0]
        if isinstance(lead, (Parallel, BatchSplit)) and (parallel_runtime is not None or isinstance(lead, BatchSplit)):
            branches = tuple(self.container._modules.get(_first(branch)) for branch in lead)
            if not any(branches):
                return
            if isinstance(lead, BatchSplit):
                build.add(self, _Branches(branches, list(lead.batch_sizes)))
            else:
                # Each copy needs its own embedding transform, so the model's inputs are copied.
                parallel_runtime.copy_inputs = True
                build.add(self, _Branches(branches, None))
        else:
            active = self.container._modules.get(setup.first())
            if active is not None:
                build.add(self, active)

    # -- hooks ----------------------------------------------------------------------------
    def _after_embeddings(self, module: nn.Module, args: tuple, output):
        hidden = output[0] if isinstance(output, tuple) else output
        plan = current(self._state).plans.get(self) if self._state is not None else None
        self._now.applied = plan
        if plan is None:
            return None
        if isinstance(plan, _Branches):
            new = torch.cat([h if inv is None else inv(h) for inv, h in plan.per_branch(hidden)])
        else:
            new = plan(hidden)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def _before_output_embeddings(self, module: nn.Module, args: tuple):
        now = self._now
        applied, now.applied = now.applied, None
        if applied is None or not args:
            return None
        if isinstance(applied, _Branches):
            inverse = torch.cat([h if inv is None else inv.inverse(h) for inv, h in applied.per_branch(args[0])])
            return (inverse, *args[1:])
        return (applied.inverse(args[0]), *args[1:])


class _Branches:
    """The invertible adapter (or None) of each branch of a leading Parallel or BatchSplit."""

    def __init__(self, branches: tuple[InvertibleAdapter | None, ...], batch_sizes: list[int] | None) -> None:
        self.branches = branches
        self.batch_sizes = batch_sizes

    def per_branch(self, hidden: torch.Tensor):
        """(invertible adapter or None, its examples) per branch."""
        if self.batch_sizes is not None:
            if sum(self.batch_sizes) != hidden.shape[0]:
                raise CompositionError(
                    f"BatchSplit sizes {self.batch_sizes} do not add up to the batch size {hidden.shape[0]}."
                )
            parts = hidden.split(self.batch_sizes)
        else:
            parts = hidden.chunk(len(self.branches))
        return zip(self.branches, parts, strict=True)


def _first(branch: str | AdapterCompositionBlock) -> str:
    return branch if isinstance(branch, str) else branch.first()
