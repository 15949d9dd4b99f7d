"""Biaffine dependency parsing head (Dozat & Manning, 2017; as used by Glavaš & Vulić, 2021).

Subword states are averaged into word states (``word_starts``: the first subword position of each
word, padded with ``pad_token_id``); the first token's state stands for the root. A biaffine
scorer gives every (dependent, head) pair an arc score and one score per relation label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from .base import PredictionHead, label2id_of


@dataclass
class DependencyParsingOutput(ModelOutput):
    """``arc_preds``: (batch, words, words + 1) head scores; ``rel_preds``: (batch, words, words + 1, labels)."""

    loss: torch.Tensor | None = None
    rel_preds: torch.Tensor | None = None
    arc_preds: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class Biaffine(nn.Module):
    """``s[b, o, i, j] = [x_i; 1]^T W_o [y_j; 1]`` (the ones only with ``bias_x`` / ``bias_y``); W starts at zero."""

    def __init__(self, n_in: int, n_out: int = 1, bias_x: bool = True, bias_y: bool = True) -> None:
        super().__init__()
        self.n_in, self.n_out, self.bias_x, self.bias_y = n_in, n_out, bias_x, bias_y
        self.weight = nn.Parameter(torch.zeros(n_out, n_in + int(bias_x), n_in + int(bias_y)))

    def extra_repr(self) -> str:
        return f"n_in={self.n_in}, n_out={self.n_out}, bias_x={self.bias_x}, bias_y={self.bias_y}"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.bias_x:
            x = torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1)
        if self.bias_y:
            y = torch.cat([y, y.new_ones(*y.shape[:-1], 1)], dim=-1)
        return torch.einsum("bxi,oij,byj->boxy", x, self.weight, y)


def merge_subwords(hidden: torch.Tensor, word_starts: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """Mean of each word's subword states, at word positions 0..n-1; other positions are zero.

    Word ``j`` spans ``word_starts[j]:word_starts[j + 1]`` (the last entry closes the last word);
    a non-positive start ends the list early.
    """
    words = hidden.new_zeros(hidden.shape)
    for row in range(hidden.shape[0]):
        starts = word_starts[row]
        if pad_id is not None:
            starts = starts[starts != pad_id]
        bounds = starts.tolist()
        for j in range(len(bounds) - 1):
            if bounds[j + 1] <= 0:
                break
            words[row, j] = hidden[row, bounds[j] : bounds[j + 1]].mean(0)
    return words


class BiaffineParsingHead(PredictionHead):
    """Dependency parsing: arc and relation scores; the loss is arc cross-entropy plus relation
    cross-entropy at the gold heads, over positions where ``labels_arcs != pad_token_id``.

    Example:
        >>> model.add_dependency_parsing_head("ud", num_labels=37)  # doctest: +SKIP
        >>> out = model(input_ids, word_starts=starts, labels_arcs=arcs, labels_rels=rels)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, head_name: str, num_labels: int = 2, id2label: dict | None = None) -> None:
        super().__init__(head_name)
        self.config = {"head_type": "dependency_parsing", "num_labels": num_labels, "label2id": label2id_of(id2label)}
        self.pad_token_id = getattr(model.config, "pad_token_id", None)
        self.build(model)

    def build(self, model: nn.Module) -> None:
        hidden = model.config.hidden_size
        self.biaffine_arcs = Biaffine(hidden, 1, bias_x=True, bias_y=False)
        self.biaffine_rels = Biaffine(hidden, self.config["num_labels"], bias_x=True, bias_y=True)
        self.dropout = nn.Dropout(self.dropout_prob(model.config))
        # Zero-initialized like the parser it comes from: no model._init_weights here.
        reference = next((p for p in model.parameters() if p.is_floating_point()), None)
        if reference is not None and reference.device.type != "meta":
            self.to(device=reference.device, dtype=reference.dtype)
        self.train(model.training)

    def get_label_names(self) -> list[str]:
        return ["labels_arcs", "labels_rels"]

    def forward(
        self,
        outputs,
        cls_output=None,
        attention_mask=None,
        return_dict=True,
        word_starts=None,
        labels_arcs=None,
        labels_rels=None,
        **kwargs,
    ):
        states = self.dropout(outputs[0])
        words = merge_subwords(states, word_starts, self.pad_token_id)
        heads = torch.cat([states[:, :1], words], dim=1)  # position 0: the root
        arc_preds = self.biaffine_arcs(words, heads).squeeze(1)
        rel_preds = self.biaffine_rels(words, heads).permute(0, 2, 3, 1)
        loss = None
        if labels_arcs is not None and labels_rels is not None:
            mask = labels_arcs != self.pad_token_id
            arcs = labels_arcs[mask]
            loss = nn.functional.cross_entropy(arc_preds[mask], arcs)
            rel_scores = rel_preds[mask][torch.arange(arcs.shape[0], device=arcs.device), arcs]
            loss = loss + nn.functional.cross_entropy(rel_scores, labels_rels[mask])
        output = DependencyParsingOutput(
            loss=loss,
            rel_preds=rel_preds,
            arc_preds=arc_preds,
            hidden_states=outputs.get("hidden_states"),
            attentions=outputs.get("attentions"),
        )
        return self.finish(output, return_dict)
