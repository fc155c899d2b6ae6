"""Caffe's LRN (local response normalization), both regions, with a hand-written backward.

Both regions share one shape of computation, which is what lets one autograd Function serve them:

    S = k' + c * window_sum(x**2)         y = x * S**(-beta)
    dx = g * S**(-beta) - 2 * beta * c * x * window_sum(g * y / S)

ACROSS_CHANNELS: the window is ``local_size`` channels, ``c = alpha / n``, ``k' = k``.
WITHIN_CHANNEL: the window is ``n x n`` spatial positions, ``c = alpha / n**2``, ``k' = 1``.
Both windows are zero padded and symmetric, so the window sum is its own adjoint.  Backward keeps
``x``, ``y`` and ``S``: recomputing ``S`` instead would save one tensor but cost about 20% more time.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import torch
from torch import Tensor

from caffenorm.errors import LayerConfigError
from caffenorm.functional._checks import check_ndim, check_real, compute_dtype
from caffenorm.functional._chunks import batch_slices

__all__ = ["NormRegion", "lrn", "parse_norm_region"]


class NormRegion(IntEnum):
    """``LRNParameter.NormRegion`` (caffe.proto field ``norm_region = 4``)."""

    ACROSS_CHANNELS = 0
    WITHIN_CHANNEL = 1


def parse_norm_region(value: str | int | NormRegion) -> NormRegion:
    """Accept Caffe's enum names (any case) or values 0/1."""
    if isinstance(value, str):
        try:
            return NormRegion[value.strip().upper()]
        except KeyError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return NormRegion(value)
        except ValueError:
            pass
    raise LayerConfigError(
        f"LRN: norm_region={value!r} is not allowed; use 'ACROSS_CHANNELS' (0) or 'WITHIN_CHANNEL' (1)"
    )


def check_local_size(local_size: int) -> int:
    """Caffe CHECKs ``local_size % 2 == 1``; a size must also be a positive integer."""
    if isinstance(local_size, bool) or not isinstance(local_size, int) or local_size < 1 or local_size % 2 == 0:
        raise LayerConfigError(
            f"LRN: local_size={local_size!r} is not allowed; Caffe requires a positive odd integer "
            "(its window is centred: c-(n-1)/2 .. c+(n-1)/2)"
        )
    return local_size


def _window_sum(t: Tensor, half: int, dims: tuple[int, ...], out: Tensor, shift: float = 0.0) -> Tensor:
    """Write into ``out`` ``shift`` plus the sum of ``t`` over the zero-padded window
    ``[i - half, i + half]`` along each of ``dims`` (separably).

    A direct sum of shifted slices: exact to a few ulp, unlike a cumulative-sum difference, whose
    float32 error grows with the magnitude of everything before the window.
    """
    src = t
    for i, dim in enumerate(dims):
        last = i == len(dims) - 1
        dst = out if last else torch.empty_like(t)
        if last and shift:
            torch.add(src, shift, out=dst)
        else:
            dst.copy_(src)
        size = src.shape[dim]
        for d in range(1, min(half, size - 1) + 1):
            dst.narrow(dim, d, size - d).add_(src.narrow(dim, 0, size - d))
            dst.narrow(dim, 0, size - d).add_(src.narrow(dim, d, size - d))
        src = dst
    return out


def _poison_like_running_sum(t: Tensor, wsum: Tensor, half: int) -> None:
    """Make ``wsum`` NaN wherever Caffe's running channel sum would be.

    Caffe's ACROSS_CHANNELS forward and backward slide the window with add-head / subtract-tail,
    so once a non-finite term has left the window (inf - inf, or NaN) every later channel at that
    position is NaN, and once the sum itself has overflowed every later channel stays inf.  A direct
    sum recovers; this restores Caffe's result.  The common all-finite case costs one reduction.
    """
    if t.device.type == "meta" or torch.isfinite(t.sum()):
        return
    channels = t.shape[1]
    idx = torch.arange(channels, device=t.device).view(1, channels, *([1] * (t.dim() - 2)))
    # A running sum that reached inf stays inf (inf - finite), however small the later windows.
    first_inf = torch.where(torch.isinf(wsum), idx, channels).amin(dim=1, keepdim=True)
    wsum.masked_fill_(idx > first_inf, float("inf"))
    # Once a non-finite term leaves the window, inf - inf (or NaN) is NaN for good.
    bad = ~torch.isfinite(t)
    first_bad = torch.where(bad, idx, channels).amin(dim=1, keepdim=True)
    wsum.masked_fill_(idx > first_bad + half, float("nan"))


def _pow_neg(s: Tensor, beta: float, out: Tensor) -> Tensor:
    """Write ``s ** -beta`` into ``out``; the betas of real models get forms several times cheaper
    than ``pow``.

    beta = 0.75 (AlexNet, CaffeNet, GoogLeNet, ZF): ``rsqrt(s) * sqrt(rsqrt(s))``, within 2 ulp, and
    like ``pow`` it gives 0 at s = inf and inf at s = 0.
    """
    if beta == 0.75:
        r = torch.rsqrt(s, out=out)
        return r.mul_(torch.sqrt(r))
    if beta == 0.5:
        return torch.rsqrt(s, out=out)
    if beta == 1.0:
        return torch.reciprocal(s, out=out)
    if beta == 0.0:
        return out.fill_(1.0)
    return torch.pow(s, -beta, out=out)


class _LRNFunction(torch.autograd.Function):
    """Forward saves ``x``, ``y`` and ``S`` (the denominator base) and nothing else."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, half: int, coef: float, beta: float, k: float, within: bool) -> Tensor:
        dims = (2, 3) if within else (1,)
        dtype = compute_dtype(x)
        y = torch.empty_like(x)
        s_all = torch.empty(x.shape, dtype=dtype, device=x.device)
        for rows in batch_slices(x):
            xc = x[rows].to(dtype)
            # Caffe scales each square by alpha/n before summing the window (caffe_axpy).
            sq = torch.mul(xc, xc).mul_(coef)
            s = _window_sum(sq, half, dims, out=s_all[rows], shift=k)
            if not within:
                _poison_like_running_sum(sq, s, half)
            p = _pow_neg(s, beta, out=sq)
            if y.dtype == dtype:
                torch.mul(p, xc, out=y[rows])
            else:
                y[rows] = p.mul_(xc)
        ctx.save_for_backward(x, y, s_all)
        ctx.config = (half, coef, beta, dims, within)
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, None, None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        x, y, s_all = ctx.saved_tensors
        half, coef, beta, dims, within = ctx.config
        dtype = s_all.dtype
        dx = torch.empty_like(x)
        for rows in batch_slices(x):
            s, gc = s_all[rows], g[rows].to(dtype)
            ratio = torch.mul(gc, y[rows].to(dtype)).div_(s)
            w = _window_sum(ratio, half, dims, out=torch.empty_like(ratio))
            if not within:
                _poison_like_running_sum(ratio, w, half)
            gp = _pow_neg(s, beta, out=ratio).mul_(gc)
            if dx.dtype == dtype:
                torch.addcmul(gp, x[rows], w, value=-2.0 * beta * coef, out=dx[rows])
            else:
                dx[rows] = gp.addcmul_(x[rows].to(dtype), w, value=-2.0 * beta * coef)
        return dx, None, None, None, None, None


def lrn(
    input: Tensor,
    local_size: int = 5,
    alpha: float = 1.0,
    beta: float = 0.75,
    k: float = 1.0,
    norm_region: str | int | NormRegion = NormRegion.ACROSS_CHANNELS,
) -> Tensor:
    """Caffe LRN on a 4-D ``(N, C, H, W)`` tensor.  See :class:`caffenorm.LRN` for the formulas."""
    local_size = check_local_size(local_size)
    region = parse_norm_region(norm_region)
    alpha = check_real("LRN", "alpha", alpha)
    beta = check_real("LRN", "beta", beta)
    k = check_real("LRN", "k", k)
    check_ndim("LRN", input, (4,), "a 4-D (N, C, H, W) tensor, as Caffe's LRN requires")
    compute_dtype(input)
    within = region is NormRegion.WITHIN_CHANNEL
    # Caffe's WITHIN_CHANNEL path is Power -> AVE pooling -> Power(shift=1): k is never used and
    # the pooling divides by n*n even at borders (the padding counts).
    coef = alpha / (local_size * local_size) if within else alpha / local_size
    shift = 1.0 if within else k
    return _LRNFunction.apply(input, (local_size - 1) // 2, coef, beta, shift, within)
