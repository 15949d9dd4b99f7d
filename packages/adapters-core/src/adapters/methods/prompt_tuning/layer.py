"""The soft prompt: ``prompt_length`` learned vectors inserted into the embedded sequence."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...configs.prompt_tuning import PromptTuningConfig
from ...errors import AdapterConfigError, AdapterError


class PromptTuning(nn.Module):
    """Soft prompt of one adapter (Lester et al., 2021), weight key ``prompt_embedding.weight``.

    Example:
        >>> import torch
        >>> from adapters import PromptTuningConfig
        >>> prompt = PromptTuning(8, PromptTuningConfig(prompt_length=3))
        >>> tuple(prompt(torch.zeros(2, 5, 8)).shape)
        (2, 8, 8)
    """

    def __init__(self, dim: int, config: PromptTuningConfig, initial: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.prompt_embedding = nn.Embedding(config.prompt_length, dim)
        with torch.no_grad():
            if initial is not None:
                self.prompt_embedding.weight.copy_(initial)
            else:
                scale = config.random_uniform_scale
                nn.init.uniform_(self.prompt_embedding.weight, -scale, scale)

    def forward(self, embedded: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
        """Insert the prompt at ``config.insert_at`` of ``embedded`` (batch, sequence, dim).

        With ``overwrite`` the sequence has placeholder positions there already, which the prompt replaces.
        """
        prompt = self.prompt_embedding.weight
        if prompt.shape[-1] != embedded.shape[-1]:
            raise AdapterError(
                f"The prompt has {prompt.shape[-1]} features but the embeddings output has {embedded.shape[-1]}; "
                "the adapter was made for another model."
            )
        prompt = prompt.to(embedded.dtype).unsqueeze(0).expand(embedded.shape[0], -1, -1)
        at = self.config.insert_at
        after = at + prompt.shape[1] if overwrite else at
        if at == 0:
            return torch.cat([prompt, embedded[:, after:]], dim=1)
        return torch.cat([embedded[:, :at], prompt, embedded[:, after:]], dim=1)


def prompt_from_text(config: PromptTuningConfig, model_config: object, word_embeddings: nn.Module) -> torch.Tensor:
    """``prompt_init="from_string"``: the word embeddings of the tokenized text, repeated or cut to length."""
    from transformers import AutoTokenizer

    source = getattr(model_config, "tokenizer_name_or_path", None) or getattr(model_config, "name_or_path", "")
    if not source:
        raise AdapterConfigError(
            "prompt_init='from_string' needs the model's tokenizer: set model.config.tokenizer_name_or_path "
            "(a hub id or a folder) first."
        )
    ids = AutoTokenizer.from_pretrained(source)(config.prompt_init_text)["input_ids"]
    if not ids:
        raise AdapterConfigError(f"prompt_init_text {config.prompt_init_text!r} has no tokens.")
    ids = (ids * math.ceil(config.prompt_length / len(ids)))[: config.prompt_length]
    weight = getattr(word_embeddings, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise AdapterConfigError(
            f"prompt_init='from_string' needs a token embedding table; this model's input embeddings are "
            f"{type(word_embeddings).__name__}. Use prompt_init='random_uniform'."
        )
    with torch.no_grad():
        return word_embeddings(torch.tensor(ids, device=weight.device)).detach().clone().float()
