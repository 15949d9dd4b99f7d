"""The compared methods: config shorthand, learning-rate grid and the reference library's numbers.

The reference numbers are those of the reference library (``adapters`` 1.3.0) on exactly the setup
of ``benchmarks/evaluate.py`` (all-MiniLM-L6-v2, SST-2, the same 4,000 training sentences, 2 epochs,
batch 32, max length 64, linear schedule with warm-up), dev accuracy in percent at the given lr.

Grids (at most three learning rates, always including the reference lr, so the "same learning rate"
check can be read off a grid run):

* full fine-tuning is centred on its reference lr (2e-5, 5e-5, 1e-4);
* an adapter method's grid starts at its reference lr and goes up (x3, x10): the reference lrs are
  the usual values for long training, and with only 250 optimizer steps the best adapter lr is at
  or above them;
* methods without a reference number get the grid of their family: bottleneck variants and LoRA
  variants (DoRA) that of seq_bn/lora (1e-3, 3e-3, 1e-2); VeRA, whose only trainable parameters
  are scaling vectors, that of IA3 shifted down (3e-3, 1e-2, 3e-2); MAM and UniPELT, which contain
  prefix tuning, that of prefix tuning (5e-4, 1e-3, 3e-3).
"""

from __future__ import annotations

from dataclasses import dataclass

FULL = "full"


@dataclass(frozen=True)
class Method:
    """One compared method.

    Example:
        >>> Method("lora", "lora", 1e-3, (1e-3, 3e-3, 1e-2), reference_accuracy=79.9).default_lr
        0.001
    """

    name: str
    config: str | None  # shorthand for add_adapter; None = full fine-tuning
    default_lr: float  # the reference lr where there is one
    grid: tuple[float, ...]
    reference_accuracy: float | None = None  # SST-2 dev accuracy (%) of the reference library at default_lr
    min_accuracy: float | None = None  # an absolute bar replacing "reference - 1" (the reference fails there)

    @property
    def is_full(self) -> bool:
        return self.config is None


BN_GRID = (1e-3, 3e-3, 1e-2)
PREFIX_GRID = (5e-4, 1e-3, 3e-3)

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(FULL, None, 5e-5, (2e-5, 5e-5, 1e-4), reference_accuracy=83.1),
        Method("seq_bn", "seq_bn", 1e-3, BN_GRID, reference_accuracy=81.4),
        Method("double_seq_bn", "double_seq_bn", 1e-3, BN_GRID),
        Method("par_bn", "par_bn", 1e-3, BN_GRID),
        Method("compacter", "compacter", 3e-3, (3e-3, 1e-2, 3e-2), reference_accuracy=78.0),
        Method("prefix_tuning", "prefix_tuning", 5e-4, PREFIX_GRID, reference_accuracy=78.3),
        Method("prompt_tuning", "prompt_tuning", 1e-2, (1e-2, 3e-2, 1e-1), reference_accuracy=68.9),
        Method("lora", "lora", 1e-3, BN_GRID, reference_accuracy=79.9),
        Method("ia3", "ia3", 3e-3, (3e-3, 1e-2, 3e-2), reference_accuracy=76.0),
        Method("vera", "vera", 1e-2, (3e-3, 1e-2, 3e-2)),
        Method("dora", "dora", 1e-3, BN_GRID),
        # The reference stays at chance (51.1) here; ours must learn.
        Method("loreft", "loreft", 1e-3, BN_GRID, reference_accuracy=51.1, min_accuracy=75.0),
        Method("mam", "mam", 1e-3, PREFIX_GRID),
        Method("unipelt", "unipelt", 1e-3, PREFIX_GRID),
    )
}
DEFAULT_METHODS = tuple(METHODS)


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets, so ``lora[r=4,alpha=16],seq_bn`` gives two items."""
    parts, depth, current = [], 0, []
    for char in text:
        depth += char == "["
        depth -= char == "]"
        if char == sep and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def resolve_method(name: str) -> Method:
    """A known method, or any other config shorthand (e.g. ``lora[r=16]``) with its family's grid."""
    if name in METHODS:
        return METHODS[name]
    base = METHODS.get(name.partition("[")[0].strip())
    if base is not None and not base.is_full:
        return Method(name, name, base.default_lr, base.grid)
    return Method(name, name, 1e-3, BN_GRID)
