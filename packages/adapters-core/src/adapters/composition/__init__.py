"""Adapter composition blocks and their rules.

A plain name or a list of names is a :class:`Stack`; blocks nest as :data:`ALLOWED_NESTINGS`
says, and every adapter's method must support the blocks around it. Both are checked when a setup
is activated.
"""

from .blocks import (
    BLOCKS,
    AdapterCompositionBlock,
    Average,
    BatchSplit,
    Fuse,
    Parallel,
    Split,
    Stack,
    parse_composition,
)
from .rules import ALLOWED_NESTINGS, check_method_support, validate_nesting

__all__ = [
    "ALLOWED_NESTINGS",
    "BLOCKS",
    "AdapterCompositionBlock",
    "Average",
    "BatchSplit",
    "Fuse",
    "Parallel",
    "Split",
    "Stack",
    "check_method_support",
    "parse_composition",
    "validate_nesting",
]
