"""Language-model heads: causal, masked (BERT-style transform + decoder) and seq2seq.

Each ends in a linear projection onto the vocabulary, its "output embeddings", which the model
ties to its input embeddings when ``config.tie_word_embeddings`` is set.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput, CausalLMOutputWithPast, MaskedLMOutput, Seq2SeqLMOutput

from .base import PredictionHead, head_activation

# transformers 5.x renamed the KV cache field from ``past_key_values`` to ``cache`` (in the body's
# outputs and in CausalLMOutputWithPast); generate() reads the cache back under that name.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def body_cache(outputs: Any) -> Any:
    """The KV cache in a body's outputs (``cache`` or, before transformers 5.x renamed it, ``past_key_values``)."""
    cache = outputs.get("cache")
    return cache if cache is not None else outputs.get("past_key_values")


class CausalLMHead(PredictionHead):
    """Next-token prediction: ``layers - 1`` transforms (linear, activation, LayerNorm), then the vocabulary
    projection; labels are shifted by one position (``shift_labels``). ``logit_softcapping`` (Gemma 2:
    ``cap * tanh(logits / cap)``) defaults to the model config's ``final_logit_softcapping`` and is
    saved only when set.

    Example:
        >>> model.add_causal_lm_head("lm")  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        head_name: str,
        vocab_size: int | None = None,
        embedding_size: int | None = None,
        layers: int = 1,
        activation_function: str | None = None,
        layer_norm: bool = False,
        bias: bool = False,
        shift_labels: bool = True,
        dropout_prob: float | None = None,
        logit_softcapping: float | None = None,
    ) -> None:
        super().__init__(head_name)
        self.config = {
            "head_type": "causal_lm",
            "vocab_size": vocab_size or model.config.vocab_size,
            "embedding_size": embedding_size or _embedding_size(model.config),
            "layers": layers,
            "activation_function": activation_function,
            "layer_norm": layer_norm,
            "bias": bias,
            "shift_labels": shift_labels,
            "label2id": None,
            "dropout_prob": dropout_prob,
        }
        if logit_softcapping is None:
            logit_softcapping = getattr(model.config, "final_logit_softcapping", None)
        if logit_softcapping is not None:  # a key the reference's head configs do not have: only where needed
            self.config["logit_softcapping"] = logit_softcapping
        self.build(model)

    def build(self, model: nn.Module) -> None:
        model_config = model.config
        size = self.config.get("embedding_size") or model_config.hidden_size
        act = self.config["activation_function"]
        modules: list[nn.Module] = []
        for index in range(self.config["layers"] - 1):
            modules.append(nn.Linear(model_config.hidden_size if index == 0 else size, size))
            if act:
                modules.append(head_activation(act))
            if self.config.get("layer_norm"):
                modules.append(nn.LayerNorm(size, eps=getattr(model_config, "layer_norm_eps", 1e-12)))
        modules.append(nn.Linear(size, self.config["vocab_size"], bias=self.config["bias"]))
        for index, module in enumerate(modules):
            self.add_module(str(index), module)
        self.init_from(model)

    def get_output_embeddings(self) -> nn.Module:
        return self[len(self) - 1]

    def set_output_embeddings(self, embeddings: nn.Module) -> None:
        self._modules[str(len(self) - 1)] = embeddings

    def make_output(self, loss: torch.Tensor | None, logits: torch.Tensor, outputs: Any) -> Any:
        cache = body_cache(outputs)
        if cache is not None:
            return CausalLMOutputWithPast(
                loss=loss,
                logits=logits,
                **{_CACHE_FIELD: cache},
                hidden_states=outputs.get("hidden_states"),
                attentions=outputs.get("attentions"),
            )
        return CausalLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.get("hidden_states"), attentions=outputs.get("attentions")
        )

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        hidden = outputs[0]
        for index in range(len(self) - 1):
            hidden = self[index](hidden)
        inverse = kwargs.get("invertible_adapter")
        if inverse is not None:  # MAD-X: undo the embedding-side invertible adapter before projecting
            hidden = inverse(hidden, rev=True)
        logits = self[len(self) - 1](hidden)
        cap = self.config.get("logit_softcapping")
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        labels = kwargs.get("labels")
        loss = None
        if labels is not None:
            scores = logits
            if self.config["shift_labels"]:
                scores, labels = logits[..., :-1, :], labels[..., 1:]
            loss = nn.functional.cross_entropy(scores.reshape(-1, self.config["vocab_size"]), labels.reshape(-1))
        return self.finish(self.make_output(loss, logits, outputs), return_dict)


class Seq2SeqLMHead(CausalLMHead):
    """The vocabulary projection of an encoder-decoder model's decoder output (labels not shifted)."""

    def __init__(
        self,
        model: nn.Module,
        head_name: str,
        vocab_size: int | None = None,
        layers: int = 1,
        activation_function: str | None = None,
        layer_norm: bool = False,
        bias: bool = False,
        shift_labels: bool = False,
    ) -> None:
        PredictionHead.__init__(self, head_name)
        self.config = {
            "head_type": "seq2seq_lm",
            "vocab_size": vocab_size or model.config.vocab_size,
            "layers": layers,
            "activation_function": activation_function,
            "layer_norm": layer_norm,
            "bias": bias,
            "shift_labels": shift_labels,
            "label2id": None,
        }
        self.build(model)

    def make_output(self, loss, logits, outputs):
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            **{_CACHE_FIELD: body_cache(outputs)},
            decoder_hidden_states=outputs.get("decoder_hidden_states"),
            decoder_attentions=outputs.get("decoder_attentions"),
            cross_attentions=outputs.get("cross_attentions"),
            encoder_last_hidden_state=outputs.get("encoder_last_hidden_state"),
            encoder_hidden_states=outputs.get("encoder_hidden_states"),
            encoder_attentions=outputs.get("encoder_attentions"),
        )


class MaskedLMHead(CausalLMHead):
    """BERT-style masked LM: dense, activation, LayerNorm, then the (tied) vocabulary projection."""

    def __init__(
        self,
        model: nn.Module,
        head_name: str,
        vocab_size: int | None = None,
        embedding_size: int | None = None,
        layers: int = 2,
        activation_function: str | None = "gelu",
        layer_norm: bool = True,
        bias: bool = True,
        shift_labels: bool = False,
    ) -> None:
        PredictionHead.__init__(self, head_name)
        self.config = {
            "head_type": "masked_lm",
            "vocab_size": vocab_size or model.config.vocab_size,
            "embedding_size": embedding_size or _embedding_size(model.config),
            "layers": layers,
            "activation_function": activation_function,
            "layer_norm": layer_norm,
            "bias": bias,
            "shift_labels": shift_labels,
            "label2id": None,
        }
        self.build(model)

    def make_output(self, loss, logits, outputs):
        return MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.get("hidden_states"), attentions=outputs.get("attentions")
        )


# The reference library's name of the masked LM head.
BertStyleMaskedLMHead = MaskedLMHead


def _embedding_size(model_config: Any) -> int:
    # ALBERT and ELECTRA project onto the vocabulary from a narrower embedding size.
    return getattr(model_config, "embedding_size", None) or model_config.hidden_size
