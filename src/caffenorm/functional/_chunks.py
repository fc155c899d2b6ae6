"""Batch chunking for the CPU kernels.

The hand-written forward and backward passes are chains of element-wise torch ops.  On CPU, running
the chain over a few samples at a time keeps every temporary in cache (and out of the allocator's
page-faulting path for large blocks), which makes the chain several times faster than running each
op over the whole batch.  Other devices get one chunk: their kernels are launch-bound, not
cache-bound.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["batch_slices"]

# About 2 MB of float32 per chunk: with the handful of temporaries a chain holds, the working set
# stays within a typical L2/L3.
_TARGET_NUMEL = 1 << 19


def batch_slices(x: Tensor, target_numel: int = _TARGET_NUMEL) -> list[slice]:
    """Slices along dimension 0 such that each chunk has about ``target_numel`` elements."""
    n = x.shape[0]
    if x.device.type != "cpu" or n == 0:
        return [slice(0, n)]
    per_sample = max(1, x.numel() // n)
    step = max(1, target_numel // per_sample)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]
