"""Test utilities for plugin authors: the conformance suite and helpers."""

from .conformance import ModelConformanceSuite, randomize_adapter
from .numerics import CROSS_LIBRARY_ULPS, DEFAULT_ULPS, assert_close, tolerance

__all__ = [
    "CROSS_LIBRARY_ULPS",
    "DEFAULT_ULPS",
    "ModelConformanceSuite",
    "assert_close",
    "randomize_adapter",
    "tolerance",
]
