"""AdapterModel classes of the vision transformers: the family's base model plus image classification heads.

Each is the core's ``AdapterModelBase`` before the family's ``PreTrainedModel``; the body is
``self.<base_model_prefix>`` (``self.vit``, ``self.beit``, ``self.dinov2``) as in transformers'
``XxxForImageClassification``, so those checkpoints load with their classifier converted (identical
logits) and adapter weight keys match the reference library's ViT and BEiT AdapterModels.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    BeitModel,
    BeitPreTrainedModel,
    Dinov2Model,
    Dinov2PreTrainedModel,
    Dinov2WithRegistersModel,
    Dinov2WithRegistersPreTrainedModel,
    ViTModel,
    ViTPreTrainedModel,
)

from adapters.heads import AdapterModelBase

VISION_HEAD_TYPES = ("image_classification",)


class ViTAdapterModel(AdapterModelBase, ViTPreTrainedModel):
    """ViT with adapters and image classification heads on the [CLS] state (or, with
    ``use_pooler=True``, the pooler's output), as ``ViTForImageClassification``.

    Example:
        >>> from adapters import AutoAdapterModel
        >>> model = AutoAdapterModel.from_pretrained("google/vit-base-patch16-224-in21k")  # doctest: +SKIP
        >>> model.add_image_classification_head("cifar10", num_labels=10)  # doctest: +SKIP
    """

    base_model_class = ViTModel
    head_types = VISION_HEAD_TYPES


class BeitAdapterModel(AdapterModelBase, BeitPreTrainedModel):
    """BEiT with adapters and image classification heads on the pooler's output (the mean patch
    state, layer-normed, with ``use_mean_pooling``), as ``BeitForImageClassification`` and the reference."""

    base_model_class = BeitModel
    head_types = VISION_HEAD_TYPES
    use_pooler = True

    def head_extras(self, outputs: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        # Every BEiT head classifies the pooled state, whatever its use_pooler says (as in the reference).
        pooled = outputs.get("pooler_output")
        return {"pooled_output": pooled, "cls_output": pooled} if pooled is not None else {}


class _ClsAndMeanPatch(AdapterModelBase):
    """Heads read the [CLS] state joined with the mean patch state (``2 * hidden_size`` features)."""

    @property
    def cls_output_size(self) -> int:
        """Features of the sequence representation the heads read."""
        return 2 * self.config.hidden_size

    def head_extras(self, outputs: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        extras = super().head_extras(outputs, inputs)
        hidden = outputs[0]
        # Register tokens (DINOv2 with registers) sit between [CLS] and the patches.
        patches = hidden[:, 1 + getattr(self.config, "num_register_tokens", 0) :]
        extras["cls_output"] = torch.cat([hidden[:, 0], patches.mean(dim=1)], dim=-1)
        return extras


class Dinov2AdapterModel(_ClsAndMeanPatch, Dinov2PreTrainedModel):
    """DINOv2 with adapters and image classification heads on the [CLS] state joined with the mean
    patch state (``2 * hidden_size`` features), as ``Dinov2ForImageClassification``."""

    base_model_class = Dinov2Model
    head_types = VISION_HEAD_TYPES


class Dinov2WithRegistersAdapterModel(_ClsAndMeanPatch, Dinov2WithRegistersPreTrainedModel):
    """DINOv2 with registers: as :class:`Dinov2AdapterModel`, the register tokens left out of the patch mean."""

    base_model_class = Dinov2WithRegistersModel
    head_types = VISION_HEAD_TYPES


