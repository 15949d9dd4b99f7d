"""What the bottleneck method asks of AdapterFusion when it activates a composed setup."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ...composition.blocks import AdapterCompositionBlock
from .fuser import Fuser, check_fusions
from .registry import FusionRegistry, PlaceKey

if TYPE_CHECKING:
    from ...core.state import AdapterState


def fusers_for(state: AdapterState, block: AdapterCompositionBlock) -> Callable[[PlaceKey], Fuser] | None:
    """``None`` when ``block`` has no Fuse; else a factory of each place's :class:`Fuser`.

    Raises :class:`~adapters.errors.CompositionError` when a Fuse of the setup has no fusion layer,
    so the activation is refused before any hook changes.
    """
    if not check_fusions(state, block):
        return None
    registry = FusionRegistry.of(state)
    return lambda key: Fuser(registry, key)
