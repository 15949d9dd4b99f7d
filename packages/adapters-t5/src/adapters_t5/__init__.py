"""Encoder-decoder model plugin for ``adapters``: module paths of each architecture, no modeling code."""

from .specs import SPECS

__all__ = ["SPECS"]
