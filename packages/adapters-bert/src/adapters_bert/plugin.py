"""Entry point of the BERT-family plugin (group ``adapters.plugins``)."""

from __future__ import annotations

from adapters.plugins import ModelSpec, hookimpl

from .specs import SPECS


@hookimpl
def adapters_model_specs() -> list[ModelSpec]:
    return list(SPECS)


# AutoAdapterModel classes, imported only when first used (they import transformers' model classes).
_ADAPTER_MODELS = {
    "bert": "BertAdapterModel",
    "roberta": "RobertaAdapterModel",
    "xlm-roberta": "XLMRobertaAdapterModel",
    "xmod": "XmodAdapterModel",
    "electra": "ElectraAdapterModel",
    "distilbert": "DistilBertAdapterModel",
    "albert": "AlbertAdapterModel",
    "deberta": "DebertaAdapterModel",
    "deberta-v2": "DebertaV2AdapterModel",
    "bert-generation": "BertGenerationAdapterModel",
}


@hookimpl
def adapters_adapter_models() -> dict[str, str]:
    return {model_type: f"adapters_bert.adapter_models:{name}" for model_type, name in _ADAPTER_MODELS.items()}
