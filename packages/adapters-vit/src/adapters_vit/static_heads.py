"""How the vision families' static head classes convert to flexible heads (``adapters_static_heads``)."""

from __future__ import annotations

from adapters.heads.conversion import StaticHead, pooler_classifier, token_head

STATIC_HEADS: dict[str, StaticHead] = {
    "ViTForImageClassification": token_head("classifier", "image_classification"),
    "BeitForImageClassification": pooler_classifier("image_classification"),
    # DINOv2's classifier reads [CLS] joined with the mean patch state (the AdapterModel's cls_output)
    "Dinov2ForImageClassification": token_head("classifier", "image_classification"),
    "Dinov2WithRegistersForImageClassification": token_head("classifier", "image_classification"),
}
