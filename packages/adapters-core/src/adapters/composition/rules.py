"""Which setups are valid: the nesting rules of the reference library and each method's supported blocks.

Checked when a setup is activated, so an invalid one raises before any hook changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..errors import CompositionError
from .blocks import AdapterCompositionBlock, Average, BatchSplit, Fuse, Parallel, Split, Stack

# parent block -> the block types it may contain (plain names are always allowed)
ALLOWED_NESTINGS: dict[type[AdapterCompositionBlock], tuple[type[AdapterCompositionBlock], ...]] = {
    Stack: (Fuse, Split, Parallel, BatchSplit, Average),
    Fuse: (Stack,),
    Split: (Split, Stack, BatchSplit, Average),
    Parallel: (Stack, BatchSplit, Average),
    BatchSplit: (Stack, Split, BatchSplit, Average),
    Average: (Stack, Split, BatchSplit),
}


def validate_nesting(block: AdapterCompositionBlock) -> None:
    """Raise :class:`CompositionError` naming the first child a block may not contain.

    Beyond the reference table: one Parallel per setup, and only as the setup itself or inside
    Stacks (the reference accepts ``Split(Stack(Parallel(...)), ...)`` and then fails in torch).

    Example:
        >>> from adapters.composition import Fuse, Parallel, validate_nesting
        >>> validate_nesting(Fuse("a", Parallel("b", "c")))
        Traceback (most recent call last):
        ...
        adapters.errors.CompositionError: Fuse cannot contain Parallel['b', 'c'] ...
    """
    parallels = 0
    for parent, child in _edges(block):
        if isinstance(child, AdapterCompositionBlock) and not isinstance(child, ALLOWED_NESTINGS[type(parent)]):
            allowed = ", ".join(t.__name__ for t in ALLOWED_NESTINGS[type(parent)])
            raise CompositionError(
                f"{type(parent).__name__} cannot contain {child!r} (in {block!r}); a {type(parent).__name__} "
                f"holds adapter names or {allowed}."
            )
        parallels += isinstance(child, Parallel)
    if parallels + isinstance(block, Parallel) > 1:
        raise CompositionError(f"{block!r} has more than one Parallel block; a setup replicates its inputs once.")
    outer = _block_above_parallel(block, None)
    if outer is not None:
        # The copies are made once, for the whole batch and every position: below a Split, BatchSplit,
        # Average or Fuse the Parallel's branches would meet siblings that hold one copy.
        raise CompositionError(
            f"{block!r} has a Parallel block inside {outer!r}; a Parallel copies the whole batch, so it must be "
            "the setup itself or sit inside Stacks only, e.g. Stack('a', Parallel('b', 'c'))."
        )


def check_method_support(
    block: AdapterCompositionBlock, blocks_supported_by: Callable[[str], Iterable[tuple[str, frozenset[type]]]]
) -> None:
    """Raise if an adapter sits inside a block its method has no meaning for.

    ``blocks_supported_by(name)`` yields ``(method name, supported block types)`` for each method
    that makes up the adapter ``name`` (several for a ConfigUnion).
    """
    for name, enclosing in _names_with_enclosing_blocks(block, ()):
        for method_name, supported in blocks_supported_by(name):
            for outer in enclosing:
                if type(outer) not in supported:
                    can = ", ".join(sorted(t.__name__ for t in supported))
                    raise CompositionError(
                        f"Adapter {name!r} ({method_name}) cannot be used inside {outer!r}: {method_name} adapters "
                        f"support {can}. Use another block or an adapter of another method there."
                    )


def _edges(block: AdapterCompositionBlock):
    for child in block:
        yield block, child
        if isinstance(child, AdapterCompositionBlock):
            yield from _edges(child)


def _block_above_parallel(
    block: AdapterCompositionBlock, outer: AdapterCompositionBlock | None
) -> AdapterCompositionBlock | None:
    """The innermost block other than Stack that encloses a Parallel in ``block`` (None if there is none)."""
    if isinstance(block, Parallel):
        return outer
    if not isinstance(block, Stack):
        outer = block
    for child in block:
        if isinstance(child, AdapterCompositionBlock):
            found = _block_above_parallel(child, outer)
            if found is not None:
                return found
    return None


def _names_with_enclosing_blocks(block: AdapterCompositionBlock, outer: tuple):
    enclosing = (*outer, block)
    for child in block:
        if isinstance(child, AdapterCompositionBlock):
            yield from _names_with_enclosing_blocks(child, enclosing)
        else:
            yield child, enclosing
