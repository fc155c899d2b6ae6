"""Caffe's numbers on GPUs: full float32 convolutions and matrix products.

On Ampere and newer NVIDIA GPUs, PyTorch runs float32 convolutions with TF32 by default
(``torch.backends.cudnn.allow_tf32 = True``): inputs rounded to a 10-bit mantissa.  Caffe never
does, and the difference is not small: measured on an H200, TF32 moves res10's ``conv4_3_norm``
blob by 1.8e-3 and a detection row by 0.75 against Caffe, while with TF32 off every blob is
within 8e-7 of Caffe.

A :class:`caffenorm.Net` therefore runs its own calls with TF32 off (``precision="highest"``, the
default) and leaves the process-wide flags as they were; ``precision="tf32"`` opts into the faster
mode.  Code outside a Net (your own modules, or a compiled/exported net, whose calls happen
outside ``Net.forward``) can use :func:`full_float32` the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["PRECISIONS", "check_precision", "full_float32"]

PRECISIONS = ("highest", "tf32")


def check_precision(precision: str) -> str:
    from caffenorm.errors import LayerConfigError

    if precision not in PRECISIONS:
        raise LayerConfigError(
            f"precision={precision!r} is not allowed; use 'highest' (float32 everywhere, Caffe's numbers) or "
            "'tf32' (TF32 convolutions and matrix products on CUDA: faster, ~1e-3 relative error)"
        )
    return precision


def _new_api() -> bool:
    """torch >= 2.9 sets TF32 per backend with ``fp32_precision`` strings; mixing them with the
    legacy ``allow_tf32`` flags is an error there, so the new API is used where it exists."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    return hasattr(conv, "fp32_precision") and hasattr(torch.backends.cuda.matmul, "fp32_precision")


@contextmanager
def full_float32() -> Iterator[None]:
    """Within the block, CUDA convolutions (cuDNN) and matrix products run in full float32 (no
    TF32); the previous settings are restored exactly afterwards, also on error.

    The settings are process-wide (PyTorch has no per-call or per-thread switch): other threads
    running CUDA code at the same time see them too.  Backward passes run when ``backward()`` is
    called, outside ``Net.forward``: for gradients without TF32, call it inside the block.
    """
    if _new_api():
        conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
        saved = (conv.fp32_precision, matmul.fp32_precision)
        conv.fp32_precision = "ieee"
        matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
        return
    legacy = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = legacy
