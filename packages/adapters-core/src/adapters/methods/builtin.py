"""The core's own adapter methods, registered through the same hook as third-party methods."""

from __future__ import annotations

from ..plugins.hookspecs import hookimpl
from .base import AdapterMethod
from .bottleneck import BottleneckMethod
from .lora import LoRAMethod
from .prefix_tuning import PrefixTuningMethod
from .prompt_tuning import PromptTuningMethod
from .reft import ReftMethod


@hookimpl
def adapters_methods() -> list[AdapterMethod]:
    return [BottleneckMethod(), LoRAMethod(), ReftMethod(), PrefixTuningMethod(), PromptTuningMethod()]
