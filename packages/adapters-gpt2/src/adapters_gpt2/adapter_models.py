"""AdapterModel classes of the decoder-only families: the family's base model plus flexible heads.

Each is the core's ``DecoderAdapterModelBase`` before the family's ``PreTrainedModel`` and
transformers' ``GenerationMixin``; the body is ``self.<base_model_prefix>`` (``self.model``,
``self.transformer``) as in transformers' ``XxxForCausalLM``, so static checkpoints load (their
head converted, ``lm_head`` tied to the input embeddings where the config ties them) and adapter
weight keys match the reference library's AdapterModels. Sequence-level heads read the last
non-padding token; ``generate()`` runs on the active causal LM head.
"""

from __future__ import annotations

from transformers import (
    Gemma2Model,
    Gemma2PreTrainedModel,
    Gemma3TextConfig,
    Gemma3TextModel,
    GenerationMixin,
    GPT2Model,
    GPT2PreTrainedModel,
    GPTJModel,
    GPTJPreTrainedModel,
    LlamaModel,
    LlamaPreTrainedModel,
    MistralModel,
    MistralPreTrainedModel,
    Qwen2Model,
    Qwen2PreTrainedModel,
    Qwen3Model,
    Qwen3PreTrainedModel,
)
from transformers.models.gemma3.modeling_gemma3 import Gemma3PreTrainedModel

from adapters.heads import DecoderAdapterModelBase


class LlamaAdapterModel(DecoderAdapterModelBase, LlamaPreTrainedModel, GenerationMixin):
    """Llama with adapters and flexible heads.

    Example:
        >>> from adapters import AutoAdapterModel
        >>> model = AutoAdapterModel.from_pretrained("meta-llama/Llama-3.2-1B")  # doctest: +SKIP
        >>> model.add_classification_head("sst2", num_labels=2)  # last non-padding token  # doctest: +SKIP
    """

    base_model_class = LlamaModel


class MistralAdapterModel(DecoderAdapterModelBase, MistralPreTrainedModel, GenerationMixin):
    """Mistral with adapters and flexible heads (see :class:`LlamaAdapterModel`)."""

    base_model_class = MistralModel


class Qwen2AdapterModel(DecoderAdapterModelBase, Qwen2PreTrainedModel, GenerationMixin):
    """Qwen2 with adapters and flexible heads (see :class:`LlamaAdapterModel`)."""

    base_model_class = Qwen2Model


class Qwen3AdapterModel(DecoderAdapterModelBase, Qwen3PreTrainedModel, GenerationMixin):
    """Qwen3 with adapters and flexible heads (see :class:`LlamaAdapterModel`)."""

    base_model_class = Qwen3Model


class Gemma2AdapterModel(DecoderAdapterModelBase, Gemma2PreTrainedModel, GenerationMixin):
    """Gemma 2 with adapters and flexible heads; causal LM heads soft-cap their logits as
    ``Gemma2ForCausalLM`` does (``config.final_logit_softcapping``)."""

    base_model_class = Gemma2Model


class Gemma3TextAdapterModel(DecoderAdapterModelBase, Gemma3PreTrainedModel, GenerationMixin):
    """Gemma 3 (text-only, ``model_type`` ``gemma3_text``) with adapters and flexible heads."""

    # Gemma3PreTrainedModel serves the multimodal model; the text model has its own config (as Gemma3ForCausalLM).
    config_class = Gemma3TextConfig
    base_model_class = Gemma3TextModel


class GPTJAdapterModel(DecoderAdapterModelBase, GPTJPreTrainedModel, GenerationMixin):
    """GPT-J with adapters and flexible heads (``GPTJForCausalLM``'s ``lm_head`` has a bias)."""

    base_model_class = GPTJModel


class GPT2AdapterModel(DecoderAdapterModelBase, GPT2PreTrainedModel, GenerationMixin):
    """GPT-2 with adapters and flexible heads (``GPT2LMHeadModel``'s ``lm_head`` is tied to ``wte``)."""

    base_model_class = GPT2Model


