"""Speech-encoder model plugin for ``adapters`` (wav2vec 2.0 family): module paths only, no modeling code."""

from .specs import SPECS

__all__ = ["SPECS"]
