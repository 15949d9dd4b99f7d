"""Test utilities for plugin authors: the conformance suite and helpers."""

from .conformance import ModelConformanceSuite, randomize_adapter

__all__ = ["ModelConformanceSuite", "randomize_adapter"]
