"""adapters: parameter-efficient, composable adapters for Hugging Face transformers 5.x.

Example:
    >>> import adapters
    >>> from transformers import BertConfig, BertModel
    >>> model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    ...                              intermediate_size=37, vocab_size=100))
    >>> adapters.init(model)
    >>> model.add_adapter("task", config="lora[r=4]", set_active=True)
"""

from ._version import __version__
from .composition import Average, BatchSplit, Fuse, Parallel, Split, Stack
from .configs import (
    AdapterConfig,
    BnConfig,
    ConfigUnion,
    DoubleSeqBnConfig,
    LoRAConfig,
    ParBnConfig,
    SeqBnConfig,
)
from .core import AdapterSetup, ModelAdaptersMixin, init
from .errors import (
    AdapterConfigError,
    AdapterError,
    AdapterLoadError,
    AdapterNameError,
    CompositionError,
    UnsupportedModelError,
)

__all__ = [
    "AdapterConfig",
    "AdapterConfigError",
    "AdapterError",
    "AdapterLoadError",
    "AdapterNameError",
    "AdapterSetup",
    "Average",
    "BatchSplit",
    "BnConfig",
    "CompositionError",
    "ConfigUnion",
    "DoubleSeqBnConfig",
    "Fuse",
    "LoRAConfig",
    "ModelAdaptersMixin",
    "ParBnConfig",
    "Parallel",
    "SeqBnConfig",
    "Split",
    "Stack",
    "UnsupportedModelError",
    "__version__",
    "init",
]
