"""Run the core's conformance suite over every BERT-family model type."""

from __future__ import annotations

from transformers import (
    BertConfig,
    BertGenerationConfig,
    BertGenerationEncoder,
    BertModel,
    ElectraConfig,
    ElectraModel,
    RobertaConfig,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaModel,
)

from adapters.testing import ModelConformanceSuite

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=100, max_position_embeddings=64)


class TestBertFamily(ModelConformanceSuite):
    model_factories = {
        "bert": lambda: BertModel(BertConfig(**TINY)),
        "roberta": lambda: RobertaModel(RobertaConfig(**TINY)),
        "xlm-roberta": lambda: XLMRobertaModel(XLMRobertaConfig(**TINY)),
        "electra": lambda: ElectraModel(ElectraConfig(embedding_size=16, **TINY)),
        "bert-generation": lambda: BertGenerationEncoder(BertGenerationConfig(**TINY)),
    }
