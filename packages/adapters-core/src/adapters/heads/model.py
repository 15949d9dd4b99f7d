"""``AdapterModelBase``: the generic XxxAdapterModel (a family's base model plus named heads).

A plugin's AdapterModel class is this base mixed before the family's ``PreTrainedModel``, with
the base model class and the head types it supports:

    class BertAdapterModel(AdapterModelBase, BertPreTrainedModel):
        base_model_class = BertModel
        head_types = ENCODER_HEAD_TYPES

The body is ``self.<base_model_prefix>`` (``self.bert``), so its weights and adapter keys carry
the same prefix as in the family's static head classes and in the reference library's AdapterModel.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import re
from typing import Any, ClassVar

import torch
import transformers
from torch import nn
from transformers.utils.generic import TransformersKwargs

from ..composition import BatchSplit
from ..core import context
from ..errors import AdapterNameError, CompositionError
from ..model.init import attach_adapters
from .base import MultiHeadOutput
from .conversion import static_head
from .mixin import HeadSetup, ModelWithFlexibleHeadsAdaptersMixin, heads_of_setup

logger = logging.getLogger(__name__)

DEFAULT_HEAD = "default"  # name of a head converted from a static checkpoint, as in the reference library
ENCODER_HEAD_TYPES = (
    "classification",
    "multilabel_classification",
    "tagging",
    "multiple_choice",
    "question_answering",
    "dependency_parsing",
    "masked_lm",
    "causal_lm",
)
# Multiple-choice inputs (batch, num_choices, ...) are flattened to (batch * num_choices, ...); the
# number is each input's trailing dims.
_CHOICE_INPUTS = {"input_ids": 1, "attention_mask": 1, "token_type_ids": 1, "position_ids": 1, "inputs_embeds": 2}
_BATCH_INPUTS = ("input_ids", "inputs_embeds", "pixel_values", "input_features", "attention_mask")
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")


@functools.cache
def _base_inputs(base_class: type) -> tuple[tuple[str, ...], frozenset[str]]:
    """(positional parameter names, every input name) of a base model's forward."""
    parameters = list(inspect.signature(base_class.forward).parameters.values())[1:]
    positional = tuple(p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    names = {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        # transformers 5 passes output flags etc. through **kwargs (TransformersKwargs).
        names |= set(TransformersKwargs.__annotations__) | {"return_dict", "output_attentions", "output_hidden_states"}
    return positional, frozenset(names)


def _slice(value: Any, rows: int, part: slice) -> Any:
    """``value[part]`` for batch-first tensors of ``rows`` rows (also inside tuples); others as they are."""
    if isinstance(value, torch.Tensor):
        return value[part] if value.dim() > 0 and value.shape[0] == rows else value
    if isinstance(value, tuple) and value and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(_slice(v, rows, part) for v in value)
    return value


def _slice_output(outputs: Any, rows: int, part: slice) -> Any:
    fields = {}
    for key, value in outputs.items():
        sliced = _slice(value, rows, part)
        if isinstance(sliced, (torch.Tensor, tuple)):
            fields[key] = sliced
    return type(outputs)(**fields)


def last_token_states(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """Each row's state at its last token, where decoder-only models classify.

    As transformers' ``XxxForSequenceClassification``: the rightmost token that is not
    ``pad_token_id`` (left or right padding) when the ids and a pad id are known; else the rightmost
    position a 2D attention mask keeps (``inputs_embeds``, no pad id); else the last position.
    Positions the body adds in front (a prompt-tuning prompt) or leaves out (tokens already in the KV
    cache) shift the index by the length difference. Under Parallel the hidden rows are ``n`` copies
    of the input rows, and the positions repeat accordingly.

    Example:
        >>> h = torch.arange(12.0).view(2, 3, 2)
        >>> last_token_states(h, torch.tensor([[1, 1, 0], [1, 1, 1]]))
        tensor([[ 2.,  3.],
                [10., 11.]])
    """
    if input_ids is not None and pad_token_id is not None:
        keep = input_ids != pad_token_id
    elif attention_mask is not None and attention_mask.dim() == 2:
        keep = attention_mask != 0
    else:
        return hidden[:, -1]
    positions = torch.arange(keep.shape[-1], device=hidden.device)
    last = (positions * keep.to(device=hidden.device, dtype=positions.dtype)).argmax(-1)
    last = (last + (hidden.shape[1] - keep.shape[-1])).clamp(0, hidden.shape[1] - 1)
    if hidden.shape[0] != last.shape[0]:
        last = last.repeat(hidden.shape[0] // last.shape[0])
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _body_mapping(architecture: str, prefix: str) -> dict[str, str]:
    """Renames the body of a static checkpoint whose class names it differently from the family
    (``LlamaForQuestionAnswering`` keeps its ``LlamaModel`` as ``transformer``, ``LlamaForCausalLM`` as ``model``)."""
    static_class = getattr(transformers, architecture, None)
    theirs = getattr(static_class, "base_model_prefix", None)
    if not theirs or theirs == prefix:
        return {}
    return {rf"^{re.escape(theirs)}\.": f"{prefix}."}


def _source_patterns(conversion: Any) -> set[str]:
    """The key patterns a transformers weight conversion was built from (newer releases keep the
    originals apart from the compiled ``source_patterns``; older ones have only the latter)."""
    original = getattr(conversion, "_original_source_patterns", None) or ()
    return set(original) | set(getattr(conversion, "source_patterns", None) or ())


def _total_loss(outputs: list[Any]) -> torch.Tensor | None:
    losses = [out.get("loss") if isinstance(out, dict) else None for out in outputs]
    return torch.stack(losses).sum() if losses and all(loss is not None for loss in losses) else None


# Head inputs named in the forward signature (besides **kwargs), so transformers.Trainer keeps these
# dataset columns. Only ``labels`` contains "label": the Trainer takes such names as its label names.
_HEAD_INPUTS = ("head", "labels", "start_positions", "end_positions", "word_starts")


def _forward_for(owner: type, base_class: type) -> Any:
    """``owner``'s inherited forward (``AdapterModelBase.forward`` or a family base's override) with a
    signature listing the body's inputs and the head inputs."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return super(owner, self).forward(*args, **kwargs)

    body = list(inspect.signature(base_class.forward).parameters.values())
    params = [p for p in body if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    names = {p.name for p in params}
    params += [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in _HEAD_INPUTS if n not in names
    ]
    params.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    forward.__signature__ = inspect.Signature(params)
    forward.__doc__ = AdapterModelBase.forward.__doc__
    forward.__qualname__ = f"{base_class.__name__}AdapterModel.forward"
    return forward


class AdapterModelBase(ModelWithFlexibleHeadsAdaptersMixin):
    """Base of the XxxAdapterModel classes: ``self.<base_model_prefix>`` plus named flexible heads.

    Adapters are set up on construction (``adapters.init`` is not needed). ``from_pretrained`` of a
    static head checkpoint (``BertForSequenceClassification``, ...) converts its head into a
    flexible head named ``"default"``; LM projections are tied to the input embeddings.

    Example:
        >>> from adapters import BertAdapterModel  # doctest: +SKIP
        >>> model = BertAdapterModel.from_pretrained("textattack/bert-base-uncased-SST-2")  # doctest: +SKIP
        >>> model.active_head  # doctest: +SKIP
        'default'
    """

    base_model_class: ClassVar[type[nn.Module]]
    # Heads average their loss over their own batch: transformers.Trainer must neither pass
    # num_items_in_batch nor rescale the loss across devices.
    accepts_loss_kwargs = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        base = cls.__dict__.get("base_model_class")
        if base is not None and "forward" not in cls.__dict__:
            cls.forward = _forward_for(cls, base)

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        # The model's heads live in config.prediction_heads: a model of its own needs a config of its own.
        super().__init__(copy.deepcopy(config), *args, **kwargs)
        setattr(self, self.base_model_prefix, self.make_base_model(config))
        self.init_heads()
        self.post_init()
        attach_adapters(self)

    def make_base_model(self, config: Any) -> nn.Module:
        """The body (override for families whose body needs more arguments)."""
        return self.base_model_class(config)

    # -- loading static checkpoints -------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
        """As transformers' ``from_pretrained``; a static head in the checkpoint becomes the head ``"default"``."""
        config = kwargs.pop("config", None)
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        if config is None or isinstance(config, str):
            config, kwargs = cls.config_class.from_pretrained(
                config or pretrained_model_name_or_path, return_unused_kwargs=True, **kwargs
            )
            kwargs.update(hub_kwargs)
        else:
            config = copy.deepcopy(config)
        ours: dict[str, str] = {}
        architecture = (getattr(config, "architectures", None) or [None])[0]
        conversion = static_head(architecture) if architecture else None
        if conversion is not None and not getattr(config, "prediction_heads", None):
            if conversion.head_type in cls.head_types:
                label2id = getattr(config, "label2id", None)
                config.prediction_heads = {DEFAULT_HEAD: conversion.head_config(label2id, len(label2id or {}) or None)}
                ours = conversion.key_mapping(DEFAULT_HEAD)
                ours.update(_body_mapping(architecture, cls.base_model_prefix))
            else:
                logger.warning(
                    "%s has no %r heads; the head of the %s checkpoint is not loaded.",
                    cls.__name__,
                    conversion.head_type,
                    architecture,
                )
        if ours:
            kwargs["key_mapping"] = {**ours, **(kwargs.get("key_mapping") or {})}
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        if ours:
            loaded = model[0] if isinstance(model, tuple) else model
            # transformers keeps user key mappings to undo them on save; the head keeps its flexible names.
            conversions = getattr(loaded, "_weight_conversions", None)
            if conversions:
                loaded._weight_conversions = [c for c in conversions if not _source_patterns(c) & set(ours)]
        return model

    # -- forward ------------------------------------------------------------------------
    def forward(self, *args: Any, head: str | list[str] | None = None, labels: Any = None, **kwargs: Any) -> Any:
        """Run the body, then the active head(s) (or ``head``). Inputs the body does not take
        (``labels``, ``start_positions``, ``word_starts``, ...) go to the heads."""
        if labels is not None:
            kwargs["labels"] = labels
        return_dict = kwargs.pop("return_dict", None)
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        base = self.base_model
        positional, accepted = _base_inputs(type(base))
        if len(args) > len(positional):
            raise TypeError(f"{type(self).__name__}.forward() got {len(args)} positional inputs; pass them by name.")
        kwargs.update(zip(positional, args, strict=False))
        base_inputs = {k: v for k, v in kwargs.items() if k in accepted}
        head_inputs = {k: v for k, v in kwargs.items() if k not in accepted}
        ids, embeds = base_inputs.get("input_ids"), base_inputs.get("inputs_embeds")
        if (ids is not None and ids.dim() == 3) or (embeds is not None and embeds.dim() == 4):
            for key, trailing in _CHOICE_INPUTS.items():
                value = base_inputs.get(key)
                if isinstance(value, torch.Tensor) and value.dim() == trailing + 2:
                    base_inputs[key] = value.reshape(-1, *value.shape[-trailing:])
        batch = next((v.shape[0] for k in _BATCH_INPUTS if isinstance(v := base_inputs.get(k), torch.Tensor)), None)
        outputs = base(**base_inputs, return_dict=True)
        setup = self._head_setup(head)
        if not setup:
            return outputs if return_dict else outputs.to_tuple()
        head_inputs.update(self.head_extras(outputs, base_inputs))
        return self.forward_head(
            outputs,
            setup,
            batch,
            attention_mask=base_inputs.get("attention_mask"),
            return_dict=return_dict,
            **head_inputs,
        )

    def head_extras(self, outputs: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        """Extra head inputs from the body's outputs: the pooler output (for ``use_pooler`` heads).

        Decoder families override this to return ``{"cls_output": <last token's state>}``.
        """
        pooled = outputs.get("pooler_output")
        return {"pooled_output": pooled} if pooled is not None else {}

    def _head_setup(self, head: Any) -> HeadSetup | None:
        """Which heads run: ``head=`` of the call, the ``AdapterSetup`` context's, or the active ones."""
        if head is None:
            current = context._CURRENT.get()
            if current is not None and current.head_setup:
                head = current.head_setup
            elif current is not None:
                implied = heads_of_setup(current.adapter_setup)
                names = list(implied.children) if isinstance(implied, BatchSplit) else implied or []
                head = implied if names and all(n in self.heads for n in names) else None
        if head is None:
            return self._active_heads
        setup = head if isinstance(head, BatchSplit) else heads_of_setup(head) if not isinstance(head, list) else head
        names = list(setup.children) if isinstance(setup, BatchSplit) else list(setup or [])
        unknown = [n for n in names if n not in self.heads]
        if unknown:
            raise AdapterNameError(f"No head named {unknown}; heads of this model: {sorted(self.heads)}.")
        return setup

    def forward_head(
        self,
        outputs: Any,
        setup: HeadSetup,
        batch: int | None,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Apply the heads of ``setup`` to the body's ``outputs``.

        * a BatchSplit of heads: each head gets its slice of the batch (labels sliced too);
        * Parallel (the output has ``n`` times the input batch): branch ``i`` goes to the ``i``-th
          head (one head: the same head for every branch), each with the full labels;
        * several heads otherwise: each gets the whole output.

        Several heads give a :class:`MultiHeadOutput` (losses summed).
        """
        rows = outputs[0].shape[0]
        names = list(setup.children) if isinstance(setup, BatchSplit) else list(setup)
        if isinstance(setup, BatchSplit):
            if sum(setup.batch_sizes) != rows:
                raise CompositionError(
                    f"The head BatchSplit sizes {setup.batch_sizes} do not add up to the batch ({rows})."
                )
            bounds = [sum(setup.batch_sizes[:i]) for i in range(len(names) + 1)]
            parts = [slice(bounds[i], bounds[i + 1]) for i in range(len(names))]
        else:
            copies = rows // batch if batch and rows > batch and rows % batch == 0 else 1
            if copies > 1:
                if len(names) == 1:
                    names = names * copies
                if len(names) != copies:
                    raise CompositionError(
                        f"The Parallel setup has {copies} branches but {len(names)} heads are active ({names}); "
                        "activate one head per branch (a head named like each branch's last adapter) or one head."
                    )
                parts = [slice(i * batch, (i + 1) * batch) for i in range(copies)]
            elif len(names) == 1:
                return self._run_head(names[0], outputs, attention_mask, return_dict, kwargs)
            else:
                results = [self._run_head(n, outputs, attention_mask, return_dict, kwargs) for n in names]
                return MultiHeadOutput(head_outputs=results, loss=_total_loss(results))
        results = []
        for name, part in zip(names, parts, strict=True):
            branch_kwargs = {k: _slice(v, rows, part) for k, v in kwargs.items()}
            mask = _slice(attention_mask, rows, part)
            results.append(self._run_head(name, _slice_output(outputs, rows, part), mask, return_dict, branch_kwargs))
        return MultiHeadOutput(head_outputs=results, loss=_total_loss(results))

    def _run_head(self, name: str, outputs: Any, attention_mask: Any, return_dict: bool, kwargs: dict) -> Any:
        kwargs = dict(kwargs)
        cls_output = kwargs.pop("cls_output", None)
        return self.heads[name](outputs, cls_output, attention_mask, return_dict, **kwargs)
