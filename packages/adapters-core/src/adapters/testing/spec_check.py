"""Check a ModelSpec against a model (the conformance suite's first check); see :mod:`adapters.core.spec_check`."""

from ..core.spec_check import spec_problems

__all__ = ["spec_problems"]
