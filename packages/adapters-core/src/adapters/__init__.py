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
    AdapterFusionConfig,
    AdapterPlusConfig,
    BnConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    ConfigUnion,
    DiReftConfig,
    DoRAConfig,
    DoubleSeqBnConfig,
    DoubleSeqBnInvConfig,
    DvoRAConfig,
    DynamicAdapterFusionConfig,
    IA3Config,
    LoRAConfig,
    LoReftConfig,
    MAMConfig,
    NoReftConfig,
    ParBnConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    ReftConfig,
    SeqBnConfig,
    SeqBnInvConfig,
    StaticAdapterFusionConfig,
    UniPELTConfig,
    VeraConfig,
)
from .core import AdapterSetup
from .errors import (
    AdapterConfigError,
    AdapterError,
    AdapterLoadError,
    AdapterNameError,
    CompositionError,
    PluginConflictError,
    UnsupportedModelError,
)
from .model import ModelAdaptersMixin, init
from .plugins.interface import AdapterModelInterface
from .support import MethodSupport, ModelSupport, supported_models

__all__ = [
    "AdapterConfig",
    "AdapterConfigError",
    "AdapterError",
    "AdapterFusionConfig",
    "AdapterLoadError",
    "AdapterModelBase",
    "AdapterModelInterface",
    "AdapterNameError",
    "AdapterPlusConfig",
    "AdapterSetup",
    "AdapterTrainer",
    "AutoAdapterModel",
    "Average",
    "BatchSplit",
    "BnConfig",
    "CompacterConfig",
    "CompacterPlusPlusConfig",
    "CompositionError",
    "ConfigUnion",
    "DiReftConfig",
    "DoRAConfig",
    "DoubleSeqBnConfig",
    "DoubleSeqBnInvConfig",
    "DvoRAConfig",
    "DynamicAdapterFusionConfig",
    "Fuse",
    "IA3Config",
    "LoRAConfig",
    "LoReftConfig",
    "MAMConfig",
    "MethodSupport",
    "ModelAdaptersMixin",
    "ModelSupport",
    "MultiHeadOutput",
    "NoReftConfig",
    "ParBnConfig",
    "Parallel",
    "PluginConflictError",
    "PredictionHead",
    "PrefixTuningConfig",
    "PromptTuningConfig",
    "ReftConfig",
    "Seq2SeqAdapterTrainer",
    "SeqBnConfig",
    "SeqBnInvConfig",
    "Split",
    "Stack",
    "StaticAdapterFusionConfig",
    "UniPELTConfig",
    "UnsupportedModelError",
    "VeraConfig",
    "__version__",
    "init",
    "register_head",
    "supported_models",
]


# Heads import transformers' output classes; loaded on first use like the trainers.
_HEAD_NAMES = ("AdapterModelBase", "AutoAdapterModel", "MultiHeadOutput", "PredictionHead", "register_head")


def __getattr__(name: str) -> object:
    # The trainers import transformers.Trainer (seconds); load them only when asked for.
    if name in ("AdapterTrainer", "Seq2SeqAdapterTrainer"):
        from . import training

        return getattr(training, name)
    if name in _HEAD_NAMES:
        from . import heads

        return getattr(heads, name)
    if name.endswith("AdapterModel"):
        # ``from adapters import BertAdapterModel``: the classes live in the model plugins.
        from .heads.auto import adapter_model_class_by_name

        found = adapter_model_class_by_name(name)
        if found is not None:
            return found
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
