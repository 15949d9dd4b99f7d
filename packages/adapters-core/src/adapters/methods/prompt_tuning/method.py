"""Prompt tuning (``prompt_tuning``): a learned soft prompt inserted after the embeddings.

The prompt of the first adapter of the active setup is inserted into the embeddings module's
output (``base_model.prompt_tuning.prompt_tunings.NAME.prompt_embedding.weight``, as in the
reference library). The (batch, sequence) padding mask is extended where the model reads it
(``ModelSpec.padding_mask``), so the model builds its attention masks, and relative positions,
for the longer sequence itself.

Output shape: hidden states include the prompt positions (``prompt_length + L``), as in the
reference library and PEFT. With ``combine="prefix"`` position 0 is the first prompt vector (a
pooler reading it, as in ``BertForSequenceClassification``, pools a learned token that attends to
the whole input); ``"prefix_after_bos"`` keeps the first token (``[CLS]``) at position 0. On a
model with a task head, token-level ``labels`` of the input's length get ``-100`` (ignored) at the
prompt positions, and question-answering ``start_positions``/``end_positions`` are shifted past
the prompt, so token classification, masked LM and QA heads train as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...composition import AdapterCompositionBlock
from ...configs.prompt_tuning import PromptTuningConfig
from ...core import context
from ...core.attention import input_at, positional_index, replace_input
from ...errors import AdapterConfigError, AdapterError, AdapterNameError, CompositionError
from ..base import AdapterDict, AdapterMethod, adapter_dict
from ..init import seeded
from .layer import PromptTuning, prompt_from_text

if TYPE_CHECKING:
    from ...core.state import AdapterState

HOLDER = "prompt_tuning"  # base_model.prompt_tuning.prompt_tunings.NAME
IGNORE_INDEX = -100  # what transformers' losses skip
_TOKEN_INPUTS = ("input_ids", "inputs_embeds")


class PromptTuningLayer(nn.Module):
    """``base_model.prompt_tuning``: holds every adapter's :class:`PromptTuning` in ``prompt_tunings``."""


class PromptRuntime:
    """The hooks of prompt tuning in one model.

    The embeddings hook exists only while a prompt is active. The padding-mask hook (and, on a
    model with a head, the labels hook) stays while the model has any prompt-tuning adapter and
    does nothing unless a prompt is active: ``AdapterSetup`` activates its setup in a pre-hook of
    the base model, too late for hooks that must run before the base model's own forward.
    """

    def __init__(self, state: AdapterState) -> None:
        spec = state.spec
        if spec.embeddings is None:
            raise AdapterConfigError(
                f"Prompt tuning inserts the prompt after the embeddings module, but the "
                f"{state.base_model.config.model_type} plugin declares none (ModelSpec.embeddings)."
            )
        self.state = state
        self.embeddings = state.base_model.get_submodule(spec.embeddings)
        # Models without a padding mask (ViT) need no mask extension.
        where = spec.padding_mask
        self.mask_module = None
        if where is not None:
            self.mask_module = state.base_model.get_submodule(where.path) if where.path else state.base_model
            self.mask_index, self.mask_keyword = positional_index(self.mask_module, where), where.keyword
        self.prompt: PromptTuning | None = None
        self._embeddings_handle: Any = None
        self._standing: list[Any] = []

    # -- lifetime ---------------------------------------------------------------------------
    def attach(self) -> None:
        if self._standing:
            return
        if self.mask_module is not None:
            self._standing.append(self.mask_module.register_forward_pre_hook(self._extend_mask, with_kwargs=True))
        if self.state.model is not self.state.base_model:
            self._standing.append(self.state.model.register_forward_pre_hook(self._adjust_labels, with_kwargs=True))

    def detach(self) -> None:
        self.activate(None)
        for handle in self._standing:
            handle.remove()
        self._standing.clear()

    def activate(self, prompt: PromptTuning | None) -> None:
        self.prompt = prompt
        if prompt is None and self._embeddings_handle is not None:
            self._embeddings_handle.remove()
            self._embeddings_handle = None
        elif prompt is not None and self._embeddings_handle is None:
            self._embeddings_handle = self.embeddings.register_forward_hook(self._insert_prompt)

    # -- which prompt acts in this forward pass -----------------------------------------------
    def prompt_of(self, block: AdapterCompositionBlock | None) -> PromptTuning | None:
        """The prompt of ``block``'s first adapter; a prompt elsewhere in the block is refused."""
        names = block.flatten() if block is not None else []
        holder = self.state.base_model._modules.get(HOLDER)
        prompts = holder.prompt_tunings._modules if holder is not None else {}
        later = [n for n in names[1:] if n in prompts]
        if later:
            raise CompositionError(
                f"Prompt-tuning adapter(s) {later} are not first in {block!r}: only the first adapter of a setup "
                "may insert a prompt (it acts before every layer). Put it first or activate it on its own."
            )
        return prompts.get(names[0]) if names else None

    def _prompt_for_call(self) -> PromptTuning | None:
        current = context._CURRENT.get()
        if current is None:
            return self.prompt
        # Inside AdapterSetup the setup may be applied only after this hook ran: resolve it here too.
        try:
            return self.prompt_of(self.state.resolve_setup(current.adapter_setup))
        except AdapterNameError:
            return None

    # -- hooks ----------------------------------------------------------------------------
    def _insert_prompt(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, tuple):
            return (self.prompt(output[0]), *output[1:])
        return self.prompt(output)

    def _extend_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        prompt = self._prompt_for_call()
        mask = input_at(self.mask_index, self.mask_keyword, args, kwargs) if prompt is not None else None
        if mask is None:
            return None
        if mask.dim() != 2:
            raise AdapterError(
                f"Prompt tuning extends a (batch, sequence) attention mask; got one of shape {tuple(mask.shape)}."
            )
        at, n = prompt.config.insert_at, prompt.config.prompt_length
        visible = torch.ones(mask.shape[0], n, dtype=mask.dtype, device=mask.device)
        mask = torch.cat([mask[:, :at], visible, mask[:, at:]], dim=1)
        return replace_input(self.mask_index, self.mask_keyword, mask, args, kwargs)

    def _adjust_labels(self, model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        prompt = self._prompt_for_call()
        if prompt is None:
            return None
        at, n = prompt.config.insert_at, prompt.config.prompt_length
        changes = {}
        labels = kwargs.get("labels")
        tokens = next((kwargs[k] for k in _TOKEN_INPUTS if kwargs.get(k) is not None), args[0] if args else None)
        if (
            isinstance(labels, torch.Tensor)
            and isinstance(tokens, torch.Tensor)
            and labels.dim() == 2
            and not labels.is_floating_point()
            and labels.shape[1] == tokens.shape[1]
        ):
            # Token-level labels (token classification, masked LM): the prompt positions have none.
            ignored = torch.full((labels.shape[0], n), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
            changes["labels"] = torch.cat([labels[:, :at], ignored, labels[:, at:]], dim=1)
        for key in ("start_positions", "end_positions"):
            positions = kwargs.get(key)
            if isinstance(positions, torch.Tensor):
                changes[key] = torch.where(positions >= at, positions + n, positions)
        return (args, {**kwargs, **changes}) if changes else None


class PromptTuningMethod(AdapterMethod):
    name = "prompt_tuning"
    config_class = PromptTuningConfig
    config_names = {"prompt_tuning": PromptTuningConfig()}
    layer_wise = False

    def conformance_configs(self) -> dict[str, PromptTuningConfig]:
        return {
            "prompt_tuning": PromptTuningConfig(),
            "prompt_tuning_after_bos": PromptTuningConfig(prompt_length=4, combine="prefix_after_bos"),
        }

    def input_positions(self, config: PromptTuningConfig, seq_len: int) -> torch.Tensor:
        """Where the input's positions are in the output: after (or around) the prompt positions."""
        at, n = config.insert_at, config.prompt_length
        return torch.cat([torch.arange(at), torch.arange(at + n, seq_len + n)])

    def _runtime(self, state: AdapterState, create: bool = False) -> PromptRuntime | None:
        key = f"{self.name}:runtime"  # method_data[self.name] would be read as per-layer places
        if key not in state.method_data and create:
            state.method_data[key] = PromptRuntime(state)
        return state.method_data.get(key)

    def add(self, state: AdapterState, name: str, config: PromptTuningConfig) -> None:
        runtime = self._runtime(state, create=True)
        base = state.base_model
        holder = base._modules.get(HOLDER)
        if holder is None:
            if hasattr(base, HOLDER):
                raise AdapterError(f"{type(base).__name__} has an attribute {HOLDER!r} of its own.")
            holder = PromptTuningLayer()
            base.add_module(HOLDER, holder)
        prompts: AdapterDict = adapter_dict(holder, "prompt_tunings")
        model_config = base.config
        dim = getattr(model_config, "embedding_size", None) or model_config.hidden_size
        initial = None
        if config.prompt_init == "from_string":
            initial = prompt_from_text(config, model_config, base.get_input_embeddings())
        reference = next(base.parameters())
        with seeded(config.init_weights_seed):
            module = PromptTuning(dim, config, initial).to(reference.device, reference.dtype)
        prompts[name] = module
        state.modules_of(name)[state.module_path(module)] = module
        runtime.attach()

    def delete(self, state: AdapterState, name: str) -> None:
        holder = state.base_model._modules.get(HOLDER)
        if holder is None:
            return
        holder.prompt_tunings._modules.pop(name, None)
        if not holder.prompt_tunings._modules:
            del state.base_model._modules[HOLDER]
            runtime = self._runtime(state)
            if runtime is not None:
                runtime.detach()

    def activate(self, state: AdapterState, setup: AdapterCompositionBlock | None) -> None:
        runtime = self._runtime(state)
        if runtime is not None:
            runtime.activate(runtime.prompt_of(setup))
