"""Caffe's BatchNorm (three blobs, no affine term) and its Scale / Bias companions.

The normalisation itself is torch's native ``batch_norm`` kernel, whose forward and hand-written
backward compute exactly Caffe's formulas (biased batch variance, eps inside the sqrt,
``dx = (g - mean(g) - mean(g*xhat)*xhat) / sqrt(var + eps)``); what differs from torch, and is
done here, is how the statistics are stored and updated.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from caffenorm import kernels as _kernels
from caffenorm.errors import InputShapeError
from caffenorm.functional._checks import canonical_axis, check_ndim, check_real, compute_dtype

__all__ = ["batch_norm", "bias", "global_stats", "scale"]


def _cudnn() -> bool:
    return bool(torch.backends.cudnn.enabled)


def global_stats(mean_sum: Tensor, var_sum: Tensor, scale_factor: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Caffe's stored statistics, in ``dtype``: ``f = 0 if s == 0 else 1/s``, ``mean = f * b0``,
    ``var = f * b1``.  ``s == 0`` gives zero statistics (``y = x / sqrt(eps)``), never a division
    by zero."""
    s = scale_factor.to(dtype)
    f = torch.where(s == 0, torch.zeros_like(s), torch.reciprocal(s))
    return mean_sum.to(dtype) * f, var_sum.to(dtype) * f


def batch_norm(
    input: Tensor,
    mean_sum: Tensor,
    var_sum: Tensor,
    scale_factor: Tensor,
    use_global_stats: bool,
    moving_average_fraction: float = 0.999,
    eps: float = 1e-5,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    stats: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Caffe BatchNorm on an ``(N, C, ...)`` tensor.  See :class:`caffenorm.BatchNorm`.

    With ``use_global_stats=False`` the three blobs are updated in place, as Caffe does.
    ``weight`` and ``bias`` (shape ``(C,)``) apply the per-channel Scale that follows BatchNorm in
    Caffe models in the same kernel (see :class:`caffenorm.BatchNormScale`).  ``stats`` is the
    ``(mean, var)`` of :func:`global_stats` in the compute dtype, when the caller already has them.
    """
    check_ndim("BatchNorm", input, range(2, 64), "at least 2 dimensions (N, C, ...)")
    channels = mean_sum.numel()
    if input.shape[1] != channels or var_sum.numel() != channels or scale_factor.numel() != 1:
        raise InputShapeError(
            f"BatchNorm: input has {input.shape[1]} channels (shape {tuple(input.shape)}) but the layer's "
            f"blobs are for channels={channels} (shapes {tuple(mean_sum.shape)}, {tuple(var_sum.shape)}, "
            f"{tuple(scale_factor.shape)}); build the layer with channels={input.shape[1]} or feed the matching tensor"
        )
    eps = check_real("BatchNorm", "eps", eps, minimum=0.0)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (channels,):
            raise InputShapeError(f"BatchNorm: {name} has shape {tuple(t.shape)}, expected ({channels},)")
    dtype = compute_dtype(input)
    if _kernels.available(input) and _kernels.batch_norm_fits(input, use_global_stats):  # CUDA + triton
        return _kernels.batch_norm(
            input, mean_sum, var_sum, scale_factor, use_global_stats, moving_average_fraction, eps, weight, bias, stats
        )
    x = input.to(dtype)
    w = None if weight is None else weight.to(dtype)
    b = None if bias is None else bias.to(dtype)

    if use_global_stats:
        mean, var = stats if stats is not None else global_stats(mean_sum, var_sum, scale_factor, dtype)
        y = torch.batch_norm(x, w, b, mean, var, False, 0.0, eps, _cudnn())
        return y.to(input.dtype)

    maf = check_real("BatchNorm", "moving_average_fraction", moving_average_fraction)
    m = input.numel() // channels if channels else 0
    if m > 1:
        # momentum 1 makes the native kernel write the batch mean and the m/(m-1)-corrected
        # variance into these buffers: exactly the terms Caffe adds to its blobs.
        batch_mean = torch.zeros(channels, dtype=dtype, device=input.device)
        batch_var = torch.zeros(channels, dtype=dtype, device=input.device)
        y = torch.batch_norm(x, w, b, batch_mean, batch_var, True, 1.0, eps, _cudnn())
    else:
        # m == 1 (e.g. one sample of an (N=1, C) input): every value is its own mean.  Caffe
        # normalises to 0 and, with m/(m-1) undefined, applies no correction to the variance.
        dims = [d for d in range(x.dim()) if d != 1]
        centred = x - x.mean(dim=dims, keepdim=True)
        var = centred.square().mean(dim=dims, keepdim=True)
        y = centred / torch.sqrt(var + eps)
        if w is not None or b is not None:
            shape = (1, channels) + (1,) * (x.dim() - 2)
            y = y * (1.0 if w is None else w.view(shape)) + (0.0 if b is None else b.view(shape))
        batch_mean = x.detach().mean(dim=dims).reshape(channels)
        batch_var = var.detach().reshape(channels)
    with torch.no_grad():
        scale_factor.mul_(maf).add_(1.0)
        mean_sum.mul_(maf).add_(batch_mean.to(mean_sum.dtype))
        var_sum.mul_(maf).add_(batch_var.to(var_sum.dtype))
    return y.to(input.dtype)


def _span(layer: str, x: Tensor, blob: Tensor, axis: int, what: str) -> tuple[int, int, int]:
    """Caffe's ``outer x blob x inner`` factorisation of ``x`` for a blob starting at ``axis``."""
    if blob.dim() == 0:
        return 1, 1, x.numel()  # Caffe: a 0-axis blob applies everywhere, axis ignored
    start = canonical_axis(layer, "axis", axis, x.dim())
    end = start + blob.dim()
    if end > x.dim() or tuple(x.shape[start:end]) != tuple(blob.shape):
        raise InputShapeError(
            f"{layer}: {what} of shape {tuple(blob.shape)} does not match input dimensions {start}.."
            f"{end - 1} (input shape {tuple(x.shape)}, axis={axis}); the {what} must equal "
            f"input.shape[axis:axis+{blob.dim()}]"
        )
    return math.prod(x.shape[:start]), blob.numel(), math.prod(x.shape[end:])


def scale(input: Tensor, scale: Tensor, bias: Tensor | None = None, axis: int = 1) -> Tensor:
    """Caffe Scale: ``y = x * scale (+ bias)``, broadcast over ``input.shape[axis:axis+scale.dim()]``.

    ``scale.dim()`` plays the role of Caffe's ``num_axes`` (0 for a scalar).  ``bias``, if given,
    has the shape of ``scale``.  See :class:`caffenorm.Scale`.
    """
    dtype = compute_dtype(input)
    outer, span, inner = _span("Scale", input, scale, axis, "scale")
    if bias is not None and tuple(bias.shape) != tuple(scale.shape):
        raise InputShapeError(
            f"Scale: bias of shape {tuple(bias.shape)} must have the scale's shape {tuple(scale.shape)}"
        )
    x, w = input.to(dtype), scale.to(dtype)
    b = None if bias is None else bias.to(dtype)
    if scale.dim() == 0:
        y = x * w if b is None else torch.addcmul(b, x, w)
        return y.to(input.dtype)
    # The native eval-mode batch_norm kernel with mean 0, var 1, eps 0 is exactly x*w + b, and its
    # backward yields dx, dw and db in one fused pass: much cheaper than autograd over mul + add.
    neutral_mean = torch.zeros(span, dtype=dtype, device=input.device)
    neutral_var = torch.ones(span, dtype=dtype, device=input.device)
    y = torch.batch_norm(
        x.reshape(outer, span, inner),
        w.reshape(span),
        None if b is None else b.reshape(span),
        neutral_mean,
        neutral_var,
        False,
        0.0,
        0.0,
        _cudnn(),
    )
    return y.reshape(input.shape).to(input.dtype)


def bias(input: Tensor, bias: Tensor, axis: int = 1) -> Tensor:
    """Caffe Bias: ``y = x + bias``, broadcast over ``input.shape[axis:axis+bias.dim()]``."""
    dtype = compute_dtype(input)
    outer, span, inner = _span("Bias", input, bias, axis, "bias")
    x = input.to(dtype)
    b = bias.to(dtype)
    if bias.dim() == 0:
        return (x + b).to(input.dtype)
    y = x.reshape(outer, span, inner) + b.reshape(1, span, 1)
    return y.reshape(input.shape).to(input.dtype)
