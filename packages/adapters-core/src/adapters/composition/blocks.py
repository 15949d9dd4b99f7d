"""The composition blocks of ``adapters.composition`` as plain data.

Blocks only describe a setup; where it is checked lives in :mod:`.rules`, and what a block does
at a place is each method's business.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..errors import CompositionError


class AdapterCompositionBlock(Sequence):
    """Base of composition blocks: an ordered sequence of adapter names or nested blocks."""

    def __init__(self, *children: str | AdapterCompositionBlock) -> None:
        if not children:
            raise CompositionError(f"{type(self).__name__} needs at least one adapter.")
        self.children: list[Any] = [_parse_child(c, type(self)) for c in children]

    def __getitem__(self, index: int) -> Any:
        return self.children[index]

    def __len__(self) -> int:
        return len(self.children)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.children)

    def _options(self) -> dict[str, Any]:
        """Keyword arguments beyond the children (saved by :meth:`to_dict`)."""
        return {}

    def __eq__(self, other: object) -> bool:
        return (
            type(self) is type(other)
            and self.children == other.children  # type: ignore[attr-defined]
            and self._options() == other._options()  # type: ignore[attr-defined]
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(map(repr, self.children)), repr(self._options())))

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self._options().items())
        return f"{type(self).__name__}[{', '.join(map(repr, self.children))}{options}]"

    def flatten(self) -> list[str]:
        """All adapter names in the block, depth first, in order, each once."""
        names: list[str] = []
        for child in self.children:
            for name in child.flatten() if isinstance(child, AdapterCompositionBlock) else [child]:
                if name not in names:
                    names.append(name)
        return names

    def first(self) -> str:
        child = self.children[0]
        return child.first() if isinstance(child, AdapterCompositionBlock) else child

    def last(self) -> str:
        child = self.children[-1]
        return child.last() if isinstance(child, AdapterCompositionBlock) else child

    @property
    def parallel_channels(self) -> int:
        """How many copies of the batch the block produces (Parallel multiplies it)."""
        return max(c.parallel_channels if isinstance(c, AdapterCompositionBlock) else 1 for c in self.children)

    def to_dict(self) -> dict[str, Any]:
        """The reference library's dict form (plain names as ``{"type": "single", ...}``)."""
        data: dict[str, Any] = {
            "type": type(self).__name__,
            "children": [
                c.to_dict() if isinstance(c, AdapterCompositionBlock) else {"type": "single", "children": [c]}
                for c in self.children
            ],
        }
        if self._options():
            data["kwargs"] = self._options()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterCompositionBlock:
        """Inverse of :meth:`to_dict`; also reads the older ``{"children": ["a", ...]}`` form."""
        block_type = BLOCKS.get(data.get("type")) if isinstance(data, dict) else None
        if block_type is None:
            raise CompositionError(
                f"Unknown composition block {data.get('type') if isinstance(data, dict) else data!r}; "
                f"known: {sorted(BLOCKS)}."
            )
        children = []
        for child in data.get("children", []):
            if isinstance(child, str):
                children.append(child)
            elif isinstance(child, dict) and child.get("type") == "single":
                children.append(child["children"][0])
            else:
                children.append(cls.from_dict(child))
        return block_type(*children, **data.get("kwargs", {}))


class Stack(AdapterCompositionBlock):
    """At every place, the output of one adapter is the input of the next (MAD-X).

    Example:
        >>> from adapters.composition import Stack
        >>> Stack("lang_en", "task").flatten()
        ['lang_en', 'task']
    """


class Fuse(AdapterCompositionBlock):
    """AdapterFusion: attention over the outputs of its children, learned on a new task.

    The fusion layer is named by ``name`` or, by default, by the children's last adapters joined
    with commas, as in the reference library.

    Example:
        >>> from adapters.composition import Fuse
        >>> Fuse("sentiment", "nli").name
        'sentiment,nli'
    """

    def __init__(self, *children: str | AdapterCompositionBlock, name: str | None = None) -> None:
        super().__init__(*children)
        self._name = name

    @property
    def name(self) -> str:
        return self._name or ",".join(c if isinstance(c, str) else c.last() for c in self.children)

    def _options(self) -> dict[str, Any]:
        return {"name": self._name} if self._name else {}


class Split(AdapterCompositionBlock):
    """Sequence positions split between the children: the first ``splits[0]`` go through the first.

    ``splits`` is one length per child (an int means that length for every child but the last,
    which takes the rest).

    Example:
        >>> from adapters.composition import Split
        >>> Split("a", "b", splits=[64, 64]).splits
        [64, 64]
    """

    def __init__(self, *children: str | AdapterCompositionBlock, splits: list[int] | int) -> None:
        super().__init__(*children)
        self.splits = _sizes(splits, len(self.children), "splits", type(self).__name__)

    def _options(self) -> dict[str, Any]:
        return {"splits": self.splits}


class BatchSplit(AdapterCompositionBlock):
    """Examples of a batch split between the children: the first ``batch_sizes[0]`` through the first.

    The sizes must add up to the batch size of every forward pass made under this setup.

    Example:
        >>> from adapters.composition import BatchSplit
        >>> BatchSplit("tenant_a", "tenant_b", batch_sizes=[2, 4]).batch_sizes
        [2, 4]
    """

    def __init__(self, *children: str | AdapterCompositionBlock, batch_sizes: list[int] | int) -> None:
        super().__init__(*children)
        self.batch_sizes = _sizes(batch_sizes, len(self.children), "batch_sizes", type(self).__name__)

    def _options(self) -> dict[str, Any]:
        return {"batch_sizes": self.batch_sizes}


class Parallel(AdapterCompositionBlock):
    """Each child runs on its own copy of the batch; the copies are made once, at the first place
    where an adapter acts, so everything below is computed once. Outputs are ``n`` times the batch.

    Example:
        >>> from adapters.composition import Parallel
        >>> Parallel("task_a", "task_b").parallel_channels
        2
    """

    @property
    def parallel_channels(self) -> int:
        return len(self.children)


class Average(AdapterCompositionBlock):
    """Weighted average of the children's outputs (weights normalized to sum 1 by default).

    Example:
        >>> from adapters.composition import Average
        >>> Average("a", "b", weights=[1, 3]).weights
        [0.25, 0.75]
    """

    def __init__(
        self,
        *children: str | AdapterCompositionBlock,
        weights: list[float] | None = None,
        normalize_weights: bool = True,
    ) -> None:
        super().__init__(*children)
        if weights is None:
            self.weights = [1.0 / len(self.children)] * len(self.children)
            return
        weights = _weights(weights, len(self.children))
        if len(weights) != len(self.children):
            raise CompositionError(
                f"Average has {len(self.children)} children but {len(weights)} weights; give one weight per child."
            )
        # A NaN or infinite weight (or a sum that overflows) makes every output NaN or drops all children.
        if not all(math.isfinite(w) for w in weights):
            raise CompositionError(f"Average weights must be finite numbers, got {weights}.")
        if normalize_weights:
            total = sum(weights)
            if not math.isfinite(total):
                raise CompositionError(
                    f"Average weights {weights} sum to {total}; give weights whose sum is finite (e.g. scaled down)."
                )
            if total == 0:
                raise CompositionError(
                    "Average weights sum to 0 and cannot be normalized; pass normalize_weights=False."
                )
            weights = [w / total for w in weights]
        self.weights = weights

    def _options(self) -> dict[str, Any]:
        return {"weights": self.weights}


BLOCKS: dict[str, type[AdapterCompositionBlock]] = {
    cls.__name__: cls for cls in (Stack, Fuse, Split, BatchSplit, Parallel, Average)
}


def _sizes(sizes: list[int] | int, n: int, what: str, block: str) -> list[int]:
    if isinstance(sizes, int) and not isinstance(sizes, bool):
        sizes = [sizes] * n
    given = list(sizes) if _is_list_like(sizes) else None
    # Bools are ints to Python, but True as a size is a mistake, not 1.
    if given is None or len(given) != n or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in given):
        raise CompositionError(f"{block} needs {what} as one non-negative int per child ({n}), got {sizes!r}.")
    return given


def _is_list_like(value: Any) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes, Mapping))


def _weights(weights: Any, n: int) -> list[float]:
    values = list(weights) if _is_list_like(weights) else None
    # float() would also read strings ("1") and bools; only numbers are weights.
    if values is None or any(isinstance(w, (str, bytes, bool)) for w in values):
        values = None
    else:
        try:
            values = [float(w) for w in values]
        except (TypeError, ValueError):
            values = None
    if values is None:
        raise CompositionError(f"Average needs weights as a list of numbers, one per child ({n}), got {weights!r}.")
    return values


def _parse_child(child: Any, parent: type[AdapterCompositionBlock]) -> Any:
    if isinstance(child, (str, AdapterCompositionBlock)):
        return child
    if isinstance(child, (list, tuple)):
        # As in the reference: a list inside a Stack setup is a Fuse (the v1 list syntax).
        inner = Fuse if parent is Stack else Stack
        return inner(*child)
    raise CompositionError(
        f"Cannot use {child!r} inside {parent.__name__}: children are adapter names or composition blocks."
    )


def parse_composition(setup: Any) -> AdapterCompositionBlock | None:
    """Normalize a user setup: ``None``, a name, a list of names (a Stack) or a block.

    Example:
        >>> from adapters.composition import parse_composition
        >>> parse_composition(["lang", "task"])
        Stack['lang', 'task']
    """
    if setup is None:
        return None
    if isinstance(setup, AdapterCompositionBlock):
        return setup
    if isinstance(setup, str):
        return Stack(setup)
    if isinstance(setup, (list, tuple)):
        return Stack(*setup) if setup else None
    raise CompositionError(
        f"Cannot use {setup!r} as an adapter setup: pass a name, a list of names or a composition block."
    )
