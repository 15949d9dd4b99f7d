"""Example model plugin for ``adapters``: a tiny pre-LN transformer and where adapters attach to it.

Importing the package registers the model with transformers' Auto classes, so checkpoints saved
with ``save_pretrained`` load through ``AutoModel.from_pretrained``.
"""

from transformers import AutoConfig, AutoModel

from .configuration import TinyTransformerConfig
from .modeling import TinyTransformerModel
from .specs import SPECS, TINY_TRANSFORMER

AutoConfig.register(TinyTransformerConfig.model_type, TinyTransformerConfig, exist_ok=True)
AutoModel.register(TinyTransformerConfig, TinyTransformerModel, exist_ok=True)

__all__ = ["SPECS", "TINY_TRANSFORMER", "TinyTransformerConfig", "TinyTransformerModel"]
