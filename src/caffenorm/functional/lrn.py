"""Caffe's LRN (local response normalization), both regions, with a hand-written backward.

Both regions share one shape of computation, which is what lets one pair of ops serve them:

    S = k' + c * window_sum(x**2)         y = x * S**(-beta)
    dx = g * S**(-beta) - 2 * beta * c * x * window_sum(g * y / S)

ACROSS_CHANNELS: the window is ``local_size`` channels, ``c = alpha / n``, ``k' = k``.
WITHIN_CHANNEL: the window is ``n x n`` spatial positions, ``c = alpha / n**2``, ``k' = 1``.
Both windows are zero padded and symmetric, so the window sum is its own adjoint.  Backward keeps
``x``, ``y`` and ``S``: recomputing ``S`` instead would save one tensor but cost about 20% more time.

The math lives in two ``torch.library`` custom ops, ``caffenorm::lrn`` (returns ``y`` and ``S``)
and ``caffenorm::lrn_backward``, with fake kernels and an autograd formula that calls the backward
op.  Tracers and compilers (``torch.export``, ``torch.compile(fullgraph=True)``, ``torch.jit.trace``)
see each as one node, so the eager kernels, including the data-dependent emulation of Caffe's
running sum for non-finite inputs, run unchanged inside traced programs.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import torch
from torch import Tensor

from caffenorm import kernels as _kernels
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
    # A branch on the data: fine here, since this only runs inside the eager kernels of the
    # caffenorm::lrn ops (tracers and compilers see the ops' fake kernels instead).
    if torch.isfinite(t.sum()):
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


def _check_settings(local_size: int, alpha: float, beta: float, k: float) -> tuple[int, float, float, float]:
    """Caffe's constraints on the scalar settings (odd positive ``local_size``, finite numbers)."""
    return (
        check_local_size(local_size),
        check_real("LRN", "alpha", alpha),
        check_real("LRN", "beta", beta),
        check_real("LRN", "k", k),
    )


def _lrn_settings(
    local_size: int, alpha: float, k: float, norm_region: int
) -> tuple[int, float, float, tuple[int, ...]]:
    """``(half, c, k', window dims)`` of the shared computation for one region (see the module doc).

    Caffe's WITHIN_CHANNEL path is Power -> AVE pooling -> Power(shift=1): k is never used and the
    pooling divides by n*n even at borders (the padding counts).
    """
    half = (local_size - 1) // 2
    if norm_region == NormRegion.WITHIN_CHANNEL:
        return half, alpha / (local_size * local_size), 1.0, (2, 3)
    return half, alpha / local_size, k, (1,)


# The schemas are written out rather than inferred from the type hints: inference of string
# annotations (``from __future__ import annotations``) is not available in every torch >= 2.4.
@torch.library.custom_op(
    "caffenorm::lrn",
    mutates_args=(),
    schema="(Tensor x, int local_size, float alpha, float beta, float k, int norm_region) -> (Tensor, Tensor)",
)
def _lrn_op(
    x: Tensor, local_size: int, alpha: float, beta: float, k: float, norm_region: int
) -> tuple[Tensor, Tensor]:
    """Caffe LRN forward (``lrn_layer.cpp``; ``norm_region`` is caffe.proto's enum, 0 = ACROSS_CHANNELS,
    1 = WITHIN_CHANNEL): returns ``y = x * S**(-beta)`` and ``S`` (kept for backward), with

        S = k' + c * window_sum(x**2)   (ACROSS: c = alpha/n, k' = k; WITHIN: c = alpha/n**2, k' = 1)

    ``S`` is in the compute dtype (float32 for fp16/bf16 input), ``y`` in the input dtype.  ACROSS
    reproduces Caffe's running channel sum for non-finite inputs (``_poison_like_running_sum``);
    that branch on the data is why this is an opaque custom op for tracers and compilers.
    """
    # Checked here too: direct op calls and compiled callers skip lrn()'s checks (microseconds).
    _check_settings(local_size, alpha, beta, k)
    parse_norm_region(norm_region)
    if _kernels.available(x):  # CUDA + triton: the fused kernels (caffenorm.kernels.lrn_triton)
        return _kernels.lrn(x, local_size, alpha, beta, k, norm_region)
    half, coef, shift, dims = _lrn_settings(local_size, alpha, k, norm_region)
    within = len(dims) == 2
    dtype = compute_dtype(x)
    y = torch.empty_like(x)
    s_all = torch.empty_like(x, dtype=dtype)  # x's layout: channels-last stays channels-last
    for rows in batch_slices(x):
        xc = x[rows].to(dtype)
        # Caffe scales each square by alpha/n before summing the window (caffe_axpy).
        sq = torch.mul(xc, xc).mul_(coef)
        s = _window_sum(sq, half, dims, out=s_all[rows], shift=shift)
        if not within:
            _poison_like_running_sum(sq, s, half)
        p = _pow_neg(s, beta, out=sq)
        if y.dtype == dtype:
            torch.mul(p, xc, out=y[rows])
        else:
            y[rows] = p.mul_(xc)
    return y, s_all


@_lrn_op.register_fake
def _lrn_fake(
    x: Tensor, local_size: int, alpha: float, beta: float, k: float, norm_region: int
) -> tuple[Tensor, Tensor]:
    # Same allocations as the real kernel, so shapes, dtypes, devices and strides all agree.
    return torch.empty_like(x), torch.empty_like(x, dtype=compute_dtype(x))


@torch.library.custom_op(
    "caffenorm::lrn_backward",
    mutates_args=(),
    schema="(Tensor grad, Tensor x, Tensor y, Tensor scale, int local_size, float alpha, float beta, "
    "int norm_region) -> Tensor",
)
def _lrn_backward_op(
    grad: Tensor, x: Tensor, y: Tensor, scale: Tensor, local_size: int, alpha: float, beta: float, norm_region: int
) -> Tensor:
    """Caffe LRN backward (``CrossChannelBackward_cpu``; for WITHIN the chained sub-layer backward),
    from ``x``, ``y`` and ``scale = S`` of :func:`_lrn_op`:

        dx = g * S**(-beta) - 2 * beta * c * x * window_sum(g * y / S)

    ``dx`` is in the input dtype, computed in ``S``'s dtype.  ACROSS poisons the window sum like
    Caffe's running sum, as the forward does.
    """
    if _kernels.available(x):  # CUDA + triton: the fused kernels (caffenorm.kernels.lrn_triton)
        return _kernels.lrn_backward(grad, x, y, scale, local_size, alpha, beta, norm_region)
    half, coef, _, dims = _lrn_settings(local_size, alpha, 1.0, norm_region)
    within = len(dims) == 2
    dtype = scale.dtype
    dx = torch.empty_like(x)
    for rows in batch_slices(x):
        s, gc = scale[rows], grad[rows].to(dtype)
        ratio = torch.mul(gc, y[rows].to(dtype)).div_(s)
        w = _window_sum(ratio, half, dims, out=torch.empty_like(ratio))
        if not within:
            _poison_like_running_sum(ratio, w, half)
        gp = _pow_neg(s, beta, out=ratio).mul_(gc)
        if dx.dtype == dtype:
            torch.addcmul(gp, x[rows], w, value=-2.0 * beta * coef, out=dx[rows])
        else:
            dx[rows] = gp.addcmul_(x[rows].to(dtype), w, value=-2.0 * beta * coef)
    return dx


@_lrn_backward_op.register_fake
def _lrn_backward_fake(
    grad: Tensor, x: Tensor, y: Tensor, scale: Tensor, local_size: int, alpha: float, beta: float, norm_region: int
) -> Tensor:
    return torch.empty_like(x)


def _lrn_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    """Save ``x``, ``y`` and ``S`` and nothing else (recomputing ``S`` would cost ~20% more time)."""
    x, local_size, alpha, beta, _, norm_region = inputs
    y, s_all = output
    # S is an implementation detail: no gradient flows into it, and autograd need not build a
    # zero gradient for it (the public function never returns it).
    ctx.mark_non_differentiable(s_all)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, y, s_all)
    ctx.config = (local_size, alpha, beta, norm_region)


def _lrn_autograd_backward(ctx: Any, g: Tensor | None, _g_scale: Tensor | None) -> tuple[Tensor | None, ...]:
    nones = (None,) * 5
    if g is None or not ctx.needs_input_grad[0]:
        return (None, *nones)
    x, y, s_all = ctx.saved_tensors
    # A custom op call, not inline math: traced backward graphs (torch.compile, export of a
    # training graph) keep it as one node and never see the data-dependent poisoning branch.
    return (torch.ops.caffenorm.lrn_backward(g, x, y, s_all, *ctx.config), *nones)


_lrn_op.register_autograd(_lrn_autograd_backward, setup_context=_lrn_setup_context)


def lrn(
    input: Tensor,
    local_size: int = 5,
    alpha: float = 1.0,
    beta: float = 0.75,
    k: float = 1.0,
    norm_region: str | int | NormRegion = NormRegion.ACROSS_CHANNELS,
) -> Tensor:
    """Caffe LRN on a 4-D ``(N, C, H, W)`` tensor.  See :class:`caffenorm.LRN` for the formulas.

    Validates the settings and the input's rank and dtype, then calls ``caffenorm::lrn``.
    """
    region = parse_norm_region(norm_region)
    # Under torch.compile a module's float attributes may arrive as symbolic values (dynamo makes
    # them dynamic when a second instance recompiles the same forward), which check_real cannot
    # test without a graph break; the op's kernel checks the settings again at run time.
    if not torch.compiler.is_compiling():
        local_size, alpha, beta, k = _check_settings(local_size, alpha, beta, k)
    check_ndim("LRN", input, (4,), "a 4-D (N, C, H, W) tensor, as Caffe's LRN requires")
    compute_dtype(input)
    # Everything above looks only at Python values, ranks and dtypes, never at tensor data, so it
    # traces under torch.compile / torch.export; the op returns (y, S), S is for backward.
    return torch.ops.caffenorm.lrn(input, local_size, alpha, beta, k, int(region))[0]
