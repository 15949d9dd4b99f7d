"""CLIP model plugin for ``adapters`` (text tower, vision tower, dual model): module paths only."""

from .specs import SPECS

__all__ = ["SPECS"]
