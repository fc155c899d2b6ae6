"""Input validation shared by the functionals: each check raises a caffenorm error that names the
layer type, the parameter, the value received and what Caffe allows."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from caffenorm.errors import InputShapeError, LayerConfigError

# Half-precision inputs are computed in float32: sums of squares of fp16 values overflow fp16
# (300**2 > 65504), and Caffe itself never computes these layers in 16 bits.
_UPCAST = (torch.float16, torch.bfloat16)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype the math runs in for an input of ``x.dtype`` (float32 for fp16/bf16)."""
    if not x.is_floating_point():
        raise InputShapeError(f"expected a floating-point tensor, got dtype {x.dtype}; convert with .float()")
    return torch.float32 if x.dtype in _UPCAST else x.dtype


def check_ndim(layer: str, x: Tensor, allowed: range | tuple[int, ...], shape_hint: str) -> None:
    """Raise unless ``x.dim()`` is one of ``allowed``; ``shape_hint`` names the expected layout."""
    if x.dim() not in allowed:
        raise InputShapeError(
            f"{layer}: input has {x.dim()} dimensions (shape {tuple(x.shape)}), expected {shape_hint}"
        )


def check_real(layer: str, param: str, value: float, *, minimum: float | None = None, inclusive: bool = True) -> float:
    """Return ``float(value)`` after checking it is finite and (optionally) not below ``minimum``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise LayerConfigError(f"{layer}: {param}={value!r} is not a number") from None
    if not math.isfinite(v):
        raise LayerConfigError(f"{layer}: {param}={value!r} must be finite")
    if minimum is not None and (v < minimum or (not inclusive and v == minimum)):
        bound = f">= {minimum}" if inclusive else f"> {minimum}"
        raise LayerConfigError(f"{layer}: {param}={value!r} is not allowed; it must be {bound}")
    return v


def canonical_axis(layer: str, param: str, axis: int, ndim: int) -> int:
    """Caffe's ``CanonicalAxisIndex``: ``axis`` in ``[-ndim, ndim)`` mapped to ``[0, ndim)``."""
    if not -ndim <= axis < ndim:
        raise InputShapeError(
            f"{layer}: {param}={axis} is out of range for a {ndim}-D input; allowed {-ndim}..{ndim - 1}"
        )
    return axis + ndim if axis < 0 else axis
