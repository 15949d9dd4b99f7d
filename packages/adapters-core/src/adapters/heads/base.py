"""The base of prediction heads and the output of several heads.

A head is an ``nn.Sequential`` of numbered modules with a JSON-able ``config`` dict, so its weight
keys in a model are ``heads.<name>.<index>.<param>`` and ``head_config.json`` holds ``config``:
the layout the reference library saves and loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN, get_activation
from transformers.modeling_outputs import Seq2SeqModelOutput
from transformers.utils import ModelOutput

from ..errors import AdapterConfigError


def head_activation(name: str | None) -> nn.Module:
    """The activation module for a head config's ``activation_function`` (transformers' names)."""
    if name is None:
        return nn.Identity()
    key = name.lower()
    if key == "leakyrelu":
        return nn.LeakyReLU()
    if key not in ACT2FN:
        raise AdapterConfigError(f"Unknown activation_function {name!r} for a head; choose from {sorted(ACT2FN)}.")
    return get_activation(key)


def label2id_of(id2label: dict | None) -> dict[str, int] | None:
    """``{label: id}`` from ``{id: label}`` (as the head config stores it), or ``None``."""
    return {label: int(id_) for id_, label in id2label.items()} if id2label is not None else None


def is_seq2seq(outputs: Any) -> bool:
    return isinstance(outputs, Seq2SeqModelOutput)


@dataclass
class MultiHeadOutput(ModelOutput):
    """The outputs of several heads in one forward pass (several active heads, Parallel, BatchSplit).

    ``output[i]`` and iteration give the heads' outputs in order; ``loss`` is their sum when every
    head computed one.

    Example:
        >>> out = model(**batch)  # doctest: +SKIP
        >>> first, second = out  # doctest: +SKIP
    """

    head_outputs: list[Any] | None = None
    loss: torch.Tensor | None = None

    @property
    def logits(self) -> torch.Tensor:
        """The heads' logits stacked along the batch dimension."""
        return torch.vstack([out["logits"] for out in self.head_outputs])

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, int):
            return self.head_outputs[key]
        return super().__getitem__(key)

    def __iter__(self):
        return iter(self.head_outputs)

    def __len__(self) -> int:
        return len(self.head_outputs)


class PredictionHead(nn.Sequential):
    """Base class of prediction heads (and of custom heads registered with ``register_custom_head``).

    Subclasses set ``self.config`` (with ``head_type``) and call :meth:`build`, which appends the
    numbered layers the config describes; ``forward(outputs, cls_output=None, attention_mask=None,
    return_dict=True, **kwargs)`` gets the base model's outputs and the label tensors.

    Example (a custom head):
        >>> class MyHead(PredictionHead):
        ...     def __init__(self, model, head_name, num_labels=2, **kwargs):
        ...         super().__init__(head_name)
        ...         self.config = {"head_type": "my_head", "num_labels": num_labels, "layers": 1,
        ...                        "activation_function": None}
        ...         self.build(model)
        ...     def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        ...         return super().forward(outputs[0][:, 0])
    """

    # Whether the head reads the sequence representation (cls_representation), not the token states.
    reads_cls_output = False

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.config: dict[str, Any] = {}

    # -- building -----------------------------------------------------------------------
    def dropout_prob(self, model_config: Any) -> float:
        """The head's dropout: its config's ``dropout_prob``, else the model's classifier or hidden dropout."""
        for value in (
            self.config.get("dropout_prob"),
            getattr(model_config, "classifier_dropout", None),
            getattr(model_config, "hidden_dropout_prob", None),
        ):
            if value is not None:
                return value
        return 0.0

    def build(self, model: nn.Module) -> None:
        """Append ``layers`` x (dropout, linear[, activation]); the last linear maps to the outputs.

        The last linear has ``num_labels`` outputs, one for a multiple-choice head, or the hidden
        size (followed by the activation) when the config names neither. The first linear reads
        :meth:`input_size` features.
        """
        model_config = model.config
        hidden = model_config.hidden_size
        width = self.input_size(model)
        dropout = self.dropout_prob(model_config)
        act = self.config.get("activation_function")
        n_layers = self.config["layers"]
        modules: list[nn.Module] = []
        for index in range(n_layers):
            modules.append(nn.Dropout(dropout))
            in_features = width if index == 0 else hidden
            if index < n_layers - 1:
                modules.append(nn.Linear(in_features, hidden))
                if act:
                    modules.append(head_activation(act))
                continue
            bias = self.config.get("bias", True)
            if "num_labels" in self.config:
                modules.append(nn.Linear(in_features, self.config["num_labels"], bias=bias))
            elif "num_choices" in self.config:
                modules.append(nn.Linear(in_features, 1, bias=bias))
            else:
                modules.append(nn.Linear(in_features, hidden, bias=bias))
                if act:
                    modules.append(head_activation(act))
        for index, module in enumerate(modules):
            self.add_module(str(index), module)
        self.init_from(model)

    def input_size(self, model: nn.Module) -> int:
        """Features of what the head reads: the hidden size; for heads of the sequence representation
        (``reads_cls_output``) the model's ``cls_output_size`` where it has one (DINOv2 classifies
        its [CLS] state joined with the mean patch state)."""
        hidden = model.config.hidden_size
        return (getattr(model, "cls_output_size", None) or hidden) if self.reads_cls_output else hidden

    def init_from(self, model: nn.Module) -> None:
        """Initialize the new layers as the model initializes its own, on its device and dtype."""
        init = getattr(model, "_init_weights", None)
        if init is not None:
            self.apply(init)
        reference = next((p for p in model.parameters() if p.is_floating_point()), None)
        if reference is not None and reference.device.type != "meta":
            self.to(device=reference.device, dtype=reference.dtype)
        self.train(model.training)

    # -- used by forward ----------------------------------------------------------------
    def get_output_embeddings(self) -> nn.Module | None:
        """The projection onto the vocabulary (LM heads), which may be tied to the input embeddings."""
        return None

    def get_label_names(self) -> list[str]:
        return ["labels"]

    def cls_representation(self, outputs: Any, cls_output: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        """What a sequence-level head classifies: ``cls_output`` if given, the pooler's output
        (``use_pooler``), the last ``<eos>`` token (``get_cls_from_eos_tokens`` with ``eos_mask``)
        or the first token."""
        if cls_output is not None:
            return cls_output
        if self.config.get("use_pooler"):
            pooled = kwargs.get("pooled_output")
            if pooled is None:
                raise AdapterConfigError(
                    f"Head {self.name!r} has use_pooler=True but this model has no pooler output; "
                    "add the head with use_pooler=False."
                )
            return pooled
        hidden = outputs[0]
        if kwargs.get("get_cls_from_eos_tokens"):
            eos_mask = kwargs["eos_mask"]
            counts = eos_mask.sum(1)
            if not bool((counts == counts[0]).all()):
                raise ValueError("All examples must have the same number of <eos> tokens.")
            return hidden[eos_mask, :].view(hidden.size(0), -1, hidden.size(-1))[:, -1, :]
        return hidden[:, 0]

    @staticmethod
    def finish(output: ModelOutput, return_dict: bool) -> ModelOutput | tuple:
        return output if return_dict else output.to_tuple()
