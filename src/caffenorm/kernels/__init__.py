"""Fused Triton kernels for CUDA tensors: LRN (both regions), SSD Normalize, BatchNorm + Scale.

The torch implementations in :mod:`caffenorm.functional` stay the reference, the CPU path and the
fallback.  The functional layer (the eager kernels of the ``caffenorm::*`` custom ops, and
:func:`caffenorm.functional.batch_norm`) hands a tensor to these kernels only when
:func:`available` says yes:

* the tensor is on a CUDA (or ROCm) device,
* its dtype is float32, float16 or bfloat16 (the kernels compute in float32; float64 stays on the
  torch path, which computes in float64),
* one sample has fewer than 2**31 elements (the kernels index within a sample in 32 bits),
* ``triton`` imports, and
* the environment does not switch them off: ``CAFFENORM_TRITON=0`` (read at every call, so it can
  be flipped in a running process).

CPU tensors never reach this package: ``available`` returns False before importing triton, so CPU
behaviour is unchanged whether triton is installed or not.

The kernels run on CPU tensors too under Triton's interpreter, which is how the tests check them
without a GPU: ``TRITON_INTERPRET=1`` must be set before triton is first imported (``triton.jit``
reads it when it decorates, and triton's own ``tl.sum``/``tl.min`` are decorated when
``triton.language`` is imported), see ``tests/kernels/conftest.py``.  The launch functions of the
submodules take any device; only the dispatch here is CUDA-only.

Where the functional layer dispatches here (one ``if`` each, after the input checks):
``caffenorm::lrn`` and ``caffenorm::lrn_backward`` (functional/lrn.py), ``caffenorm::normalize`` and
``caffenorm::normalize_backward`` (functional/normalize.py), :func:`caffenorm.functional.batch_norm`.
"""

from __future__ import annotations

import importlib
import os
from functools import lru_cache
from types import ModuleType

import torch
from torch import Tensor

__all__ = ["SUPPORTED_DTYPES", "available", "batch_norm_fits", "enabled", "triton_importable"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Indices within one sample are 32-bit in the kernels (the batch offset is 64-bit).
_MAX_SAMPLE_NUMEL = 2**31 - 1


def enabled() -> bool:
    """False when the environment switches the kernels off (``CAFFENORM_TRITON=0``, ``false``, ``off``)."""
    return os.environ.get("CAFFENORM_TRITON", "1").strip().lower() not in ("0", "false", "off", "no")


@lru_cache(maxsize=1)
def triton_importable() -> bool:
    """Whether ``import triton`` succeeds (checked once per process)."""
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 (ImportError, or a broken install failing while it loads its driver)
        return False
    return True


def available(x: Tensor) -> bool:
    """Whether the Triton kernels should compute on ``x`` (see the module doc for the conditions).

    The cheap tests come first: a CPU tensor is rejected without importing triton.
    """
    if not x.is_cuda or x.dtype not in SUPPORTED_DTYPES:
        return False
    if x.dim() > 0 and x.shape[0] > 0 and x.numel() // x.shape[0] > _MAX_SAMPLE_NUMEL:
        return False
    return enabled() and triton_importable()


def _module(name: str) -> ModuleType:
    # Imported on first use: the package itself must import without triton.
    return importlib.import_module(f"caffenorm.kernels.{name}")


def lrn(x: Tensor, local_size: int, alpha: float, beta: float, k: float, norm_region: int) -> tuple[Tensor, Tensor]:
    """``caffenorm::lrn`` on the Triton kernels: see :func:`caffenorm.kernels.lrn_triton.lrn_forward`."""
    return _module("lrn_triton").lrn_forward(x, local_size, alpha, beta, k, norm_region)


def lrn_backward(
    grad: Tensor, x: Tensor, y: Tensor, scale: Tensor, local_size: int, alpha: float, beta: float, norm_region: int
) -> Tensor:
    """``caffenorm::lrn_backward`` on the Triton kernels: see :func:`caffenorm.kernels.lrn_triton.lrn_backward`."""
    return _module("lrn_triton").lrn_backward(grad, x, y, scale, local_size, alpha, beta, norm_region)


def normalize(x: Tensor, scale: Tensor, across_spatial: bool, eps: float) -> tuple[Tensor, Tensor]:
    """``caffenorm::normalize`` on the Triton kernels: see :func:`caffenorm.kernels.normalize_triton.normalize_forward`."""
    return _module("normalize_triton").normalize_forward(x, scale, across_spatial, eps)


def normalize_backward(
    grad: Tensor,
    x: Tensor,
    scale: Tensor,
    norm: Tensor,
    across_spatial: bool,
    caffe_backward: bool,
    input_grad: bool,
    scale_grad: bool,
) -> tuple[Tensor, Tensor]:
    """``caffenorm::normalize_backward`` on the Triton kernels: see
    :func:`caffenorm.kernels.normalize_triton.normalize_backward`."""
    return _module("normalize_triton").normalize_backward(
        grad, x, scale, norm, across_spatial, caffe_backward, input_grad, scale_grad
    )


def batch_norm_fits(x: Tensor, use_global_stats: bool) -> bool:
    """Whether the BatchNorm kernels may take this call (checked after :func:`available`).

    Not while torch.compile / torch.export trace or torch.jit.trace records: BatchNorm is not a
    custom op, so a tracer would see the kernels' launches (or miss them); the torch path's
    ``torch.batch_norm`` traces natively.  Not for empty inputs, nor for ``m <= 1`` values per
    channel in training (Caffe's special case), and only below 2**31 values per channel.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or x.dim() < 2 or x.numel() == 0:
        return False
    m = x.numel() // x.shape[1]
    return m < 2**31 and (use_global_stats or m > 1)


def batch_norm(
    input: Tensor,
    mean_sum: Tensor,
    var_sum: Tensor,
    scale_factor: Tensor,
    use_global_stats: bool,
    moving_average_fraction: float,
    eps: float,
    weight: Tensor | None,
    bias: Tensor | None,
    stats: tuple[Tensor, Tensor] | None,
) -> Tensor:
    """:func:`caffenorm.functional.batch_norm` on the Triton kernels: see
    :func:`caffenorm.kernels.batch_norm_triton.batch_norm`."""
    return _module("batch_norm_triton").batch_norm(
        input, mean_sum, var_sum, scale_factor, use_global_stats, moving_average_fraction, eps, weight, bias, stats
    )
