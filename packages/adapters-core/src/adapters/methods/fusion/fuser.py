"""Running a Fuse block over the bottleneck adapters of one place (called by ``ComposedBottlenecks``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...composition.blocks import AdapterCompositionBlock, Fuse
from ...composition.engine import compose
from ...errors import CompositionError
from .registry import FusionRegistry, PlaceKey

if TYPE_CHECKING:
    from ...core.state import AdapterState
    from ..bottleneck.composition import BottleneckState, ComposedBottlenecks


def fuse_blocks(block: AdapterCompositionBlock) -> list[Fuse]:
    """Every Fuse in ``block`` (itself included), depth first."""
    found = [block] if isinstance(block, Fuse) else []
    for child in block:
        if isinstance(child, AdapterCompositionBlock):
            found.extend(fuse_blocks(child))
    return found


def check_fusions(state: AdapterState, block: AdapterCompositionBlock) -> list[Fuse]:
    """Raise a CompositionError naming the fix when a Fuse of ``block`` has no fusion layer."""
    fuses = fuse_blocks(block)
    registry = FusionRegistry.of(state)
    known = registry.fusions if registry is not None else {}
    for fuse in fuses:
        if fuse.name not in known:
            children = ", ".join(repr(c) for c in fuse)
            raise CompositionError(
                f"{fuse!r} needs the AdapterFusion layer {fuse.name!r}, which this model does not have "
                f"(fusions: {sorted(known)}). Add it with model.add_adapter_fusion(Fuse({children})) or load it "
                "with model.load_adapter_fusion(path)."
            )
    return fuses


class Fuser:
    """AdapterFusion at one place: the ``fuser`` of that place's ``ComposedBottlenecks``.

    As in the reference library: the Fuse's last adapter prepares the input (``pre_forward``,
    so e.g. seq_bn's LayerNorm of ``h + x``) and yields the residual; the query is that input (or
    the sub-block output before the LayerNorm with ``query_before_ln``). Each child then runs on
    that input: a plain adapter only up to its scaled up-projection (``Bottleneck.project``), a
    Stack child through its adapters (each with its own ``pre_forward``) keeping its last
    up-projection. The fusion layer attends over those outputs and adds the residual; the last
    adapter's ``post_forward`` closes the block afterwards. Children without an adapter at this
    place are left out.

    Example:
        >>> ComposedBottlenecks(adapters, Fuse("a", "b"), Fuser(registry, (0, "output_adapter")))  # doctest: +SKIP
    """

    def __init__(self, registry: FusionRegistry, key: PlaceKey) -> None:
        self.registry = registry
        self.key = key

    def __call__(self, place: ComposedBottlenecks, block: Fuse, state: BottleneckState) -> BottleneckState:
        fusion = self.registry.fusions.get(block.name)
        layer = fusion.layers.get(self.key) if fusion is not None else None
        if layer is None:
            raise CompositionError(
                f"{block!r} has no fusion layer at layer {self.key[0]} ({self.key[1]}): the fusion was added for "
                "adapters at other places. Re-add it with model.add_adapter_fusion(..., overwrite_ok=True)."
            )
        children = [c for c in block if _acts_at(c, place)]
        last_name = block.last() if place.has(block.last()) else [n for n in block.flatten() if place.has(n)][-1]
        last = place.adapters[last_name]
        hidden, residual = last.pre_forward(state.hidden, state.x, place.layer_norm)
        query = state.hidden if layer.config.query_before_ln and not last.is_parallel else hidden
        ups = []
        for child in children:
            if isinstance(child, str):
                ups.append(place.adapters[child].project(hidden))
                continue
            up = compose(child, state._replace(hidden=hidden, up=None), place).up
            if up is None:
                raise CompositionError(f"{child!r} inside {block!r} yields no adapter output to fuse at this place.")
            ups.append(up)
        fused, probs = layer(query, torch.stack(ups, dim=2), residual)
        self.registry.record(block.name, self.key, probs)
        return state._replace(hidden=fused)


def _acts_at(child: str | AdapterCompositionBlock, place: ComposedBottlenecks) -> bool:
    names = child.flatten() if isinstance(child, AdapterCompositionBlock) else [child]
    return any(place.has(n) for n in names)
