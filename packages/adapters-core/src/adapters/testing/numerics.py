"""Float comparisons that hold on any CPU: tolerances from the dtype and the values' scale.

Two computations of one function (a merged and an unmerged LoRA, a batched and a looped
composition, a file loaded here and the reference library's output) round differently, and by how
much depends on the CPU's kernels: the same test can pass on one machine with AVX-512 and fail on
the next. A fixed ``atol=1e-5`` is too strict for values of scale 100 (gradients of a summed
square) and too loose for values of scale 1e-3; an element-wise ``rtol`` fails wherever a sum
cancels to near zero. Floating-point error of a sum or a matrix product is bounded by a multiple
of the machine epsilon times the magnitude of what was summed, so the tolerance here is

    atol = ulps * eps(dtype) * scale,    scale = max |expected| (at least 1 ulp of the dtype)

with ``rtol=0``. The scale is that of the result, not of the terms summed into it: a loss whose
true gradient is zero (the sum of squares after a LayerNorm without affine change is a constant)
leaves only rounding noise to compare, so build test losses whose results are not cancellations
(a fixed random weighting of the outputs). ``ulps`` says how far apart the two computations may drift, in units of the
dtype's epsilon: a few hundred for a few layers of a tiny model (the default), more for deep
accumulations or a comparison with another library on other kernels (:data:`CROSS_LIBRARY_ULPS`).

Bit-identity is asserted only where the computation is literally the same (no adapter active, a
refused operation, a saved and reloaded tensor): use ``torch.equal`` there, not this module.

Example::

    from adapters.testing import assert_close

    assert_close(merged_model(**inputs).logits, unmerged_model(**inputs).logits)
    assert_close(ours, reference_output, ulps=CROSS_LIBRARY_ULPS)
"""

from __future__ import annotations

import torch

# Two computations of a few layers of a tiny model in float32: 256 * 1.19e-7 = 3.1e-5 of the scale.
DEFAULT_ULPS = 256.0
# Another library, another transformers release or another kernel set (a file the reference
# library saved and the output it computed): 1e-4 of the output's scale in float32.
CROSS_LIBRARY_ULPS = 1e-4 / torch.finfo(torch.float32).eps


def scale_of(tensor: torch.Tensor) -> float:
    """The magnitude the rounding errors of ``tensor``'s computation are proportional to."""
    values = tensor.detach()
    if values.numel() == 0:
        return 0.0
    finite = values[torch.isfinite(values)]
    return float(finite.abs().max()) if finite.numel() else 0.0


def tolerance(expected: torch.Tensor, *, ulps: float = DEFAULT_ULPS, dtype: torch.dtype | None = None) -> float:
    """The absolute tolerance for comparing another computation of ``expected``.

    ``ulps`` units of ``dtype``'s epsilon (default: ``expected``'s dtype) times ``expected``'s
    largest finite magnitude.

    >>> tolerance(torch.tensor([100.0, -3.0]), ulps=1)  # doctest: +ELLIPSIS
    1.19...e-05
    """
    finfo = torch.finfo(dtype or expected.dtype)
    return ulps * finfo.eps * max(scale_of(expected), finfo.eps)


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    ulps: float = DEFAULT_ULPS,
    msg: str | None = None,
) -> None:
    """Assert that two computations of one function agree within rounding, on any CPU.

    The tolerance is :func:`tolerance` of ``expected`` (its scale, its dtype; the coarser dtype of
    the two when they differ) with ``rtol=0``; shapes, dtypes and NaN/inf positions must match
    exactly. Integer and bool tensors must be equal. ``msg`` is prepended to the report of the
    largest difference.
    """
    if not (actual.dtype.is_floating_point or actual.dtype.is_complex):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=msg)
        return
    dtype = expected.dtype
    if actual.dtype.is_floating_point and expected.dtype.is_floating_point:
        if torch.finfo(actual.dtype).eps > torch.finfo(expected.dtype).eps:
            dtype = actual.dtype
    atol = tolerance(expected, ulps=ulps, dtype=dtype)
    try:
        torch.testing.assert_close(actual, expected, rtol=0.0, atol=atol, equal_nan=True)
    except AssertionError as error:
        context = f"{msg}\n" if msg else ""
        raise AssertionError(
            f"{context}{error}\n(tolerance {atol:.3g} = {ulps:g} ulps of {dtype} x scale {scale_of(expected):.3g})"
        ) from None
