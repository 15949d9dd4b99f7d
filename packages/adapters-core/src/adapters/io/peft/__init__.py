"""PEFT's adapter folders in and out: LoRA (rsLoRA, DoRA), IA3, prompt tuning, ``modules_to_save``.

See :mod:`.folder` for the entry points and each method's module for what maps and why.
"""

from .common import PEFT_FILES
from .folder import PeftAdapter, is_peft_folder, read_peft_adapter, save_peft_adapter
from .head import prepare_head

__all__ = ["PEFT_FILES", "PeftAdapter", "is_peft_folder", "prepare_head", "read_peft_adapter", "save_peft_adapter"]
