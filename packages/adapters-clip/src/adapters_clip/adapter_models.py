"""``CLIPAdapterModel``: the dual-tower ``CLIPModel`` with adapters and custom heads.

As in the reference library, no built-in head type fits CLIP's image-text outputs; the class
exists so ``AutoAdapterModel`` loads CLIP checkpoints (adapter keys under ``clip.``, as the
reference's) and so custom heads (``register_custom_head``) can sit on top.
"""

from __future__ import annotations

from transformers import CLIPModel, CLIPPreTrainedModel

from adapters.heads import AdapterModelBase


class CLIPAdapterModel(AdapterModelBase, CLIPPreTrainedModel):
    """CLIP (text and vision towers) with adapters; without heads its forward is ``CLIPModel``'s.

    Example:
        >>> from adapters import AutoAdapterModel
        >>> model = AutoAdapterModel.from_pretrained("openai/clip-vit-base-patch32")  # doctest: +SKIP
        >>> model.add_adapter("a", config="lora", set_active=True)  # doctest: +SKIP
        >>> model(input_ids=ids, pixel_values=pixels).logits_per_image  # doctest: +SKIP
    """

    base_model_class = CLIPModel
    head_types = ()


