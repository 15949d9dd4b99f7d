"""Prefix tuning: prefix modules (reparametrized and flat) and the method that hooks them into attention."""

from .layer import FlatPrefixTuning, PrefixTuning, PrefixTuningGroup, PrefixTuningPool
from .method import PrefixTuningMethod

__all__ = ["FlatPrefixTuning", "PrefixTuning", "PrefixTuningGroup", "PrefixTuningMethod", "PrefixTuningPool"]
