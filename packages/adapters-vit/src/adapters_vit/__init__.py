"""Vision-transformer model plugin for ``adapters`` (ViT, BEiT, DINOv2): module paths only, no modeling code."""

from .specs import SPECS

__all__ = ["SPECS"]
