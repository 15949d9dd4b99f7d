"""Prompt tuning (``prompt_tuning``): a learned soft prompt inserted after the embeddings.

The prompt of the first adapter of the active setup (under a leading BatchSplit or Parallel: of
each branch's first adapter, into that branch's examples or copy of the batch) is inserted into
the embeddings module's output (``base_model.prompt_tuning.prompt_tunings.NAME.prompt_embedding.
weight``, as in the reference library; models that shape their outputs by ``input_ids`` get it
through placeholder tokens instead, see ``slots.py``). The (batch, sequence) padding mask is
extended where the model reads it (``ModelSpec.padding_mask``), so the model builds its attention
masks, and relative positions, for the longer sequence itself.

Output shape: hidden states include the prompt positions (``prompt_length + L``), as in the
reference library and PEFT. With ``combine="prefix"`` position 0 is the first prompt vector (a
pooler reading it, as in ``BertForSequenceClassification``, pools a learned token that attends to
the whole input); ``"prefix_after_bos"`` keeps the first token (``[CLS]``) at position 0. On a
model with a task head, token-level ``labels`` of the input's length get ``-100`` (ignored) at the
prompt positions, and question-answering ``start_positions``/``end_positions`` are shifted past
the prompt, so token classification, masked LM and QA heads train as usual.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from ...composition import AdapterCompositionBlock, BatchSplit, Parallel, Stack
from ...configs.prompt_tuning import PromptTuningConfig
from ...core.activation import building, current
from ...core.attention import input_at, positional_index, replace_input
from ...core.context import register_pass_pre_hook
from ...errors import AdapterConfigError, AdapterError, CompositionError
from ..base import AdapterDict, AdapterMethod, adapter_dict
from ..init import initial_values_needed, seeded
from .layer import PromptTuning, prompt_from_text
from .slots import PromptSlots
from .slots import insert_columns as _insert_columns

if TYPE_CHECKING:
    from ...core.state import AdapterState

HOLDER = "prompt_tuning"  # base_model.prompt_tuning.prompt_tunings.NAME
IGNORE_INDEX = -100  # what transformers' losses skip
_TOKEN_INPUTS = ("input_ids", "inputs_embeds")


class PromptTuningLayer(nn.Module):
    """``base_model.prompt_tuning``: holds every adapter's :class:`PromptTuning` in ``prompt_tunings``."""


class PromptPlan(NamedTuple):
    """Which prompt goes where in one forward pass.

    One prompt for the whole batch, or one per branch of a leading ``BatchSplit`` (its examples,
    ``batch_sizes``) or ``Parallel`` (its copy of the batch, made from the model's inputs).
    """

    prompts: tuple[PromptTuning, ...]
    batch_sizes: tuple[int, ...] | None = None
    parallel: bool = False

    @property
    def length(self) -> int:
        return self.prompts[0].config.prompt_length

    def slices(self, batch: int) -> list[tuple[int, PromptTuning]]:
        """(examples, prompt) for a batch-first tensor of ``batch`` rows, in order."""
        if self.batch_sizes is not None:
            if sum(self.batch_sizes) != batch:
                raise CompositionError(
                    f"BatchSplit sizes {list(self.batch_sizes)} do not add up to the batch size {batch}; adjust them."
                )
            return list(zip(self.batch_sizes, self.prompts, strict=True))
        if self.parallel and len(self.prompts) > 1:
            if batch % len(self.prompts):
                raise CompositionError(f"A batch of {batch} cannot hold {len(self.prompts)} Parallel copies.")
            return [(batch // len(self.prompts), prompt) for prompt in self.prompts]
        return [(batch, self.prompts[0])]

    def insert_at(self, batch: int) -> list[tuple[int, int]]:
        """(examples, insert position) per run of examples sharing a position (one run if all do)."""
        if len({p.config.insert_at for p in self.prompts}) == 1:
            return [(batch, self.prompts[0].config.insert_at)]
        return [(size, prompt.config.insert_at) for size, prompt in self.slices(batch)]


class PromptRuntime:
    """The hooks of prompt tuning in one model.

    Which prompts act is the runtime's plan in each activation (a :class:`PromptPlan`, or none).
    The embeddings hook is attached once some activation has a plan. The padding-mask hook (and,
    on a model with a head, the labels hook) stays while the model has any prompt-tuning adapter
    and does nothing in passes without a prompt.
    """

    def __init__(self, state: AdapterState) -> None:
        spec = state.spec
        embeddings = spec.prompt_embeddings or spec.embeddings
        if embeddings is None:
            raise AdapterConfigError(
                f"Prompt tuning inserts the prompt after the embeddings module, but the "
                f"{state.base_model.config.model_type} plugin declares none (ModelSpec.embeddings)."
            )
        self.state = state
        self.embeddings = state.base_model.get_submodule(embeddings)
        # Models without a padding mask (ViT) need no mask extension; an encoder-decoder extends the
        # encoder's mask where the encoder and where the decoder's cross-attention read it.
        self.mask_places: list[tuple[nn.Module, int, str | None]] = []
        for where in spec.padding_masks:
            module = state.base_model.get_submodule(where.path) if where.path else state.base_model
            self.mask_places.append((module, positional_index(module, where), where.keyword))
        self._embeddings_handle: Any = None
        self._standing: list[Any] = []
        # Models that shape their outputs by input_ids (GPT-2) get the prompt through placeholder tokens.
        self.slots = None
        if spec.prompt_token_slots:
            self.slots = PromptSlots(state.base_model, self.embeddings, self._plan_for_call)

    # -- lifetime ---------------------------------------------------------------------------
    def attach(self) -> None:
        if self._standing:
            return
        state = self.state
        for module, index, keyword in self.mask_places:
            hook = functools.partial(self._extend_mask, index, keyword)
            if module is state.base_model:
                self._standing.append(register_pass_pre_hook(state, module, hook))
            else:
                self._standing.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        if self.slots is not None:
            self._standing.extend(self.slots.hooks(state))
        # Labels of an encoder-decoder belong to the decoder's sequence, which gets no prompt.
        if state.model is not state.base_model and not getattr(state.model.config, "is_encoder_decoder", False):
            self._standing.append(register_pass_pre_hook(state, state.model, self._adjust_labels))

    def detach(self) -> None:
        for handle in self._standing:
            handle.remove()
        self._standing.clear()

    def activate(self, plan: PromptPlan | None) -> None:
        """Use ``plan`` in the activation being built."""
        if plan is not None:
            building().add(self, plan, attach=self if self.slots is None else None)

    @property
    def plan(self) -> PromptPlan | None:
        """The plan of the pass running here now (else the model-wide one)."""
        return current(self.state).plans.get(self)

    def attach_hooks(self, state: AdapterState) -> None:
        self._embeddings_handle = self.embeddings.register_forward_hook(self._insert_prompt)

    def detach_hooks(self) -> None:
        if self._embeddings_handle is not None:
            self._embeddings_handle.remove()
            self._embeddings_handle = None

    # -- which prompt acts in this forward pass -----------------------------------------------
    def plan_of(self, block: AdapterCompositionBlock | None) -> PromptPlan | None:
        """The prompts of ``block``: its first adapter's, or each branch's first under a leading BatchSplit or
        Parallel. A prompt anywhere else is refused: it acts on the embeddings, before every layer."""
        names = block.flatten() if block is not None else []
        holder = self.state.base_model._modules.get(HOLDER)
        prompts = holder.prompt_tunings._modules if holder is not None else {}
        used = [n for n in names if n in prompts]
        if not used:
            return None
        lead = block
        while isinstance(lead, Stack) and isinstance(lead[0], AdapterCompositionBlock):
            lead = lead[0]
        if not isinstance(lead, (BatchSplit, Parallel)):
            if used != [names[0]]:
                raise CompositionError(
                    f"Prompt-tuning adapter(s) {[n for n in used if n != names[0]]} are not first in {block!r}: "
                    "only the first adapter of a setup (or of each branch of a leading BatchSplit or Parallel) "
                    "may insert a prompt, since it acts before every layer. Put it first or activate it on its own."
                )
            return PromptPlan((prompts[names[0]],))
        firsts = [child if isinstance(child, str) else child.first() for child in lead]
        misplaced = [n for n in used if n not in firsts]
        if misplaced:
            raise CompositionError(
                f"Prompt-tuning adapter(s) {misplaced} are not first in a branch of {lead!r}: a prompt acts on the "
                "embeddings, before every layer, so it must start its branch of the leading BatchSplit or Parallel."
            )
        without = [child for child, first in zip(lead, firsts, strict=True) if first not in prompts]
        if without:
            raise CompositionError(
                f"{lead!r} inserts a prompt in some branches but not in {without}: the prompt lengthens the "
                "sequence, so the branches' outputs cannot be joined. Start every branch with a prompt-tuning "
                "adapter, or use no prompt in this block."
            )
        branch_prompts = tuple(prompts[first] for first in firsts)
        lengths = [p.config.prompt_length for p in branch_prompts]
        if len(set(lengths)) > 1:
            raise CompositionError(
                f"{lead!r} combines prompts of different lengths {lengths}; the branches' sequences must have one "
                "length to be joined. Give the prompt-tuning adapters one prompt_length."
            )
        if isinstance(lead, BatchSplit):
            return PromptPlan(branch_prompts, batch_sizes=tuple(lead.batch_sizes))
        if len({p.config.insert_at for p in branch_prompts}) > 1:
            raise CompositionError(
                f"{lead!r} combines prompts inserted at different positions (combine='prefix' and "
                "'prefix_after_bos'); the copies of one batch share its attention mask and labels. Give the "
                "prompt-tuning adapters one combine."
            )
        return PromptPlan(branch_prompts, parallel=True)

    def _plan_for_call(self) -> PromptPlan | None:
        # Every hook runs inside the pass's frame (opened by the first pre-hook of the model).
        return self.plan

    # -- hooks ----------------------------------------------------------------------------
    def _insert_prompt(self, module: nn.Module, args: tuple, output: Any) -> Any:
        plan = self.plan
        if plan is None:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        slices = plan.slices(hidden.shape[0])
        if len(slices) == 1:
            hidden = slices[0][1](hidden)
        else:
            parts = hidden.split([size for size, _ in slices])
            hidden = torch.cat([prompt(part) for part, (_, prompt) in zip(parts, slices, strict=True)])
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def _extend_mask(
        self, index: int, keyword: str | None, module: nn.Module, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict] | None:
        plan = self._plan_for_call()
        mask = input_at(index, keyword, args, kwargs) if plan is not None else None
        if mask is None:
            return None
        if mask.dim() != 2:
            raise AdapterError(
                f"Prompt tuning extends a (batch, sequence) attention mask; got one of shape {tuple(mask.shape)}."
            )
        mask = _insert_columns(mask, plan.insert_at(mask.shape[0]), plan.length, 1)
        return replace_input(index, keyword, mask, args, kwargs)

    def _adjust_labels(self, model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        plan = self._plan_for_call()
        if plan is None:
            return None
        n = plan.length
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
            changes["labels"] = _insert_columns(labels, plan.insert_at(labels.shape[0]), n, IGNORE_INDEX)
        for key in ("start_positions", "end_positions"):
            positions = kwargs.get(key)
            if isinstance(positions, torch.Tensor):
                at = torch.cat([positions.new_full((size,), at) for size, at in plan.insert_at(positions.shape[0])])
                changes[key] = torch.where(
                    positions >= at.view(-1, *([1] * (positions.dim() - 1))), positions + n, positions
                )
        return (args, {**kwargs, **changes}) if changes else None


class PromptTuningMethod(AdapterMethod):
    name = "prompt_tuning"
    config_class = PromptTuningConfig
    config_names = {"prompt_tuning": PromptTuningConfig()}
    # BatchSplit and Parallel give each slice (copy) of the batch its branch's prompt; a prompt has no
    # meaning per position (Split) nor as a sum (Average: a prompt is a sequence, not an update).
    supported_blocks = frozenset({Stack, BatchSplit, Parallel})
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
        # A loaded prompt brings its vectors: only a new one is initialised from the text (and tokenizer).
        if config.prompt_init == "from_string" and initial_values_needed():
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
        if runtime is None:
            return
        plan = runtime.plan_of(setup)
        if plan is not None and plan.parallel and len(plan.prompts) > 1:
            # Each copy gets its own prompt before the first layer, and the model then builds its masks
            # for the longer sequence itself: so the model's inputs are copied, not the first layer's.
            state.parallel.copy_inputs = True
        runtime.activate(plan)
