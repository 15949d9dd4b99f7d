"""Adapter composition blocks.

A plain name or a list of names is a :class:`Stack`. Further blocks (Fuse, Split, BatchSplit,
Parallel, Average) are defined in the composition issue; activating them is not possible yet.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .errors import CompositionError


class AdapterCompositionBlock(Sequence):
    """Base of composition blocks: an ordered sequence of adapter names or nested blocks."""

    def __init__(self, *children: str | AdapterCompositionBlock) -> None:
        if not children:
            raise CompositionError(f"{type(self).__name__} needs at least one adapter.")
        self.children = [parse_composition(c) if isinstance(c, list) else c for c in children]

    def __getitem__(self, index: int) -> Any:
        return self.children[index]

    def __len__(self) -> int:
        return len(self.children)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.children)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.children == other.children  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(map(str, self.children))))

    def __repr__(self) -> str:
        return f"{type(self).__name__}[{', '.join(map(repr, self.children))}]"

    def flatten(self) -> list[str]:
        """All adapter names in the block, depth first, in order."""
        names: list[str] = []
        for child in self.children:
            names.extend(child.flatten() if isinstance(child, AdapterCompositionBlock) else [child])
        return names

    def first(self) -> str:
        return self.flatten()[0]

    def last(self) -> str:
        return self.flatten()[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "children": [c.to_dict() if isinstance(c, AdapterCompositionBlock) else c for c in self],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterCompositionBlock:
        blocks = {"Stack": Stack}
        if data.get("type") not in blocks:
            raise CompositionError(f"Unknown composition block {data.get('type')!r}; known: {sorted(blocks)}.")
        children = [c if isinstance(c, str) else cls.from_dict(c) for c in data["children"]]
        return blocks[data["type"]](*children)


class Stack(AdapterCompositionBlock):
    """At every place, the output of one adapter is the input of the next (MAD-X).

    Example:
        >>> from adapters.composition import Stack
        >>> Stack("lang_en", "task").flatten()
        ['lang_en', 'task']
    """


def parse_composition(setup: Any) -> AdapterCompositionBlock | None:
    """Normalize a user setup: ``None``, a name, a list of names or a block."""
    if setup is None:
        return None
    if isinstance(setup, AdapterCompositionBlock):
        return setup
    if isinstance(setup, str):
        return Stack(setup)
    if isinstance(setup, (list, tuple)):
        if not setup:
            return None
        return Stack(*[parse_composition(s) if isinstance(s, (list, tuple)) else s for s in setup])
    raise CompositionError(f"Cannot use {setup!r} as an adapter setup: pass a name, a list of names or a Stack.")
