"""Run the core's conformance suite over every BERT-family model type."""

from __future__ import annotations

from transformers import (
    AlbertConfig,
    AlbertModel,
    BertConfig,
    BertGenerationConfig,
    BertGenerationEncoder,
    BertModel,
    CamembertConfig,
    CamembertModel,
    Data2VecTextConfig,
    Data2VecTextModel,
    DebertaConfig,
    DebertaModel,
    DebertaV2Config,
    DebertaV2Model,
    DistilBertConfig,
    DistilBertModel,
    ElectraConfig,
    ElectraModel,
    ErnieConfig,
    ErnieModel,
    ModernBertConfig,
    ModernBertModel,
    RobertaConfig,
    RobertaModel,
    RobertaPreLayerNormConfig,
    RobertaPreLayerNormModel,
    XLMRobertaConfig,
    XLMRobertaModel,
    XmodConfig,
    XmodModel,
)

from adapters.testing import ModelConformanceSuite
from adapters_bert.specs import SPECS

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    vocab_size=100,
    max_position_embeddings=64,
)
# Relative attention on, as in the published DeBERTa checkpoints.
DEBERTA = dict(relative_attention=True, max_relative_positions=-1, position_biased_input=False, type_vocab_size=0)


class TestBertFamily(ModelConformanceSuite):
    # transformers' ALBERT has no gradient checkpointing (AlbertLayer is no GradientCheckpointingLayer).
    without_gradient_checkpointing = frozenset({"albert"})
    model_factories = {
        "bert": lambda: BertModel(BertConfig(**TINY)),
        "roberta": lambda: RobertaModel(RobertaConfig(**TINY)),
        "xlm-roberta": lambda: XLMRobertaModel(XLMRobertaConfig(**TINY)),
        "electra": lambda: ElectraModel(ElectraConfig(embedding_size=16, **TINY)),
        "bert-generation": lambda: BertGenerationEncoder(BertGenerationConfig(**TINY)),
        "distilbert": lambda: DistilBertModel(
            DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=37, vocab_size=100, max_position_embeddings=64)
        ),
        # One layer group shared across depth with two distinct layers in it (inner_group_num=2):
        # shared like every ALBERT, and with two adapter-capable layers so leave_out=[0] is meaningful.
        "albert": lambda: AlbertModel(AlbertConfig(embedding_size=16, inner_group_num=2, **TINY)),
        "deberta": lambda: DebertaModel(DebertaConfig(pos_att_type=["c2p", "p2c"], **DEBERTA, **TINY)),
        "deberta-v2": lambda: DebertaV2Model(
            DebertaV2Config(
                pos_att_type=["p2c", "c2p"], position_buckets=16, norm_rel_ebd="layer_norm", **DEBERTA, **TINY
            )
        ),
        # X-MOD keeps its own language adapters; the default language routes every input.
        "xmod": lambda: XmodModel(XmodConfig(languages=["en_XX", "de_DE"], default_language="en_XX", **TINY)),
        "camembert": lambda: CamembertModel(CamembertConfig(**TINY)),
        "data2vec-text": lambda: Data2VecTextModel(Data2VecTextConfig(**TINY)),
        # Task-type embeddings on, as in the published ERNIE 2.0/3.0 checkpoints.
        "ernie": lambda: ErnieModel(ErnieConfig(use_task_id=True, task_type_vocab_size=3, **TINY)),
        "roberta-prelayernorm": lambda: RobertaPreLayerNormModel(RobertaPreLayerNormConfig(**TINY)),
    }


# The interface lists no prompt or prefix tuning (as the reference's); AdapterPlus sets
# original_ln_after=False, which interface placement cannot honour (the reference refuses it too).
REFUSED = ("prompt_tuning", "prefix_tuning", "bottleneck-adapter_plus")


class TestModernBert(ModelConformanceSuite):
    """ModernBERT, declared through the reference library's AdapterModelInterface for it."""

    model_factories = {
        "modernbert": lambda: ModernBertModel(
            ModernBertConfig(
                hidden_size=32,
                num_hidden_layers=3,
                num_attention_heads=4,
                intermediate_size=37,
                vocab_size=100,
                max_position_embeddings=64,
                # Alternating local (window 4, shorter than the inputs) and global attention layers.
                local_attention=4,
                global_attn_every_n_layers=2,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
                cls_token_id=1,
                sep_token_id=2,
            )
        )
    }
    refused = {"modernbert": REFUSED}


def test_every_declared_model_type_has_a_conformance_model() -> None:
    # A model type added to a spec without a tiny model here would ship without proof.
    declared = {model_type for spec in SPECS for model_type in spec.model_types}
    proven = {model_type for suite in (TestBertFamily, TestModernBert) for model_type in suite.model_factories}
    assert declared <= proven, f"declared without a conformance model: {sorted(declared - proven)}"
