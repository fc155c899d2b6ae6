"""Caffe BatchNorm (+ the per-channel Scale/bias after it) as Triton kernels, both modes.

Same function as :func:`caffenorm.functional.batch_norm` (the torch path stays the CPU path and the
fallback), with ``m`` = values per channel (N x spatial), float32 math for float32/16/bf16 inputs:

    batch statistics:  mu = mean(x),  var = mean((x - mu)**2)   (biased, Caffe's normalisation)
    global statistics: mu = f * b0,   var = f * b1,  f = 0 if s == 0 else 1/s
    y  = (x - mu) * rsqrt(var + eps) * w + b                    (eps inside the sqrt)

    batch statistics:  dx = w * rsqrt(var + eps) * (g - mean(g) - xhat * mean(g * xhat))
    global statistics: dx = w * rsqrt(var + eps) * g
    dw = sum(g * xhat),  db = sum(g)

Inference without autograd (eval, no gradient wanted) is a single kernel launch that derives
``mu`` and ``var`` from the three blobs itself (``_apply_kernel`` with ``FROM_SUMS``), so a net's BatchNorm layers cost one launch each on a GPU
(deriving the statistics with torch ops first meant eight more small launches per layer); with autograd,
the statistics are derived with torch ops and the forward/backward kernels below run.

Caffe's blob update after a training forward (``s <- lambda*s + 1``, ``b0 <- lambda*b0 + mu``,
``b1 <- lambda*b1 + m/(m-1) * var``), done here with a few torch ops on ``(C,)`` tensors.

The statistics are exact to rounding for large mean offsets: each program reduces one block of a
channel to (count, mean, sum of squared deviations) in registers, and the blocks are merged with
Chan's parallel formula (no ``E[x^2] - E[x]^2`` cancellation).  A NaN or inf makes its channel's
statistics NaN (the whole channel's output), as on the torch path.  No host synchronisation.

Not covered (the caller keeps the torch path, see :func:`caffenorm.kernels.batch_norm_fits`): ``m <= 1``
in training (Caffe's no-correction special case), empty inputs, and ``torch.compile`` tracing (where
the torch path's ``torch.batch_norm`` traces natively).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from caffenorm.errors import InputShapeError
from caffenorm.functional._checks import check_real
from caffenorm.kernels import SUPPORTED_DTYPES, batch_norm_fits

__all__ = ["batch_norm"]

_BLOCK = 2048  # values of one channel per program


@triton.jit
def _stats_kernel(
    x_ptr, cnt_ptr, mean_ptr, m2_ptr,
    L, M, NB,
    sxn, sxc, sxl,
    BLOCK: tl.constexpr,
):  # fmt: skip
    # One program: BLOCK consecutive values (n, l) of one channel -> count, mean, sum (x - mean)^2.
    pid = tl.program_id(0)
    c = (pid // NB).to(tl.int64)
    j = (pid % NB) * BLOCK + tl.arange(0, BLOCK)
    ok = j < M
    n = j // L
    x = tl.load(x_ptr + c * sxc + n.to(tl.int64) * sxn + (j - n * L) * sxl, mask=ok, other=0.0).to(tl.float32)
    cnt = tl.sum(ok.to(tl.float32), axis=0)
    mean = tl.sum(x, axis=0) / cnt
    d = tl.where(ok, x - mean, 0.0)
    tl.store(cnt_ptr + pid, cnt)
    tl.store(mean_ptr + pid, mean)
    tl.store(m2_ptr + pid, tl.sum(d * d, axis=0))


@triton.jit
def _apply_kernel(
    x_ptr, y_ptr, mean_ptr, rstd_ptr, s_ptr, w_ptr, b_ptr, eps,
    L, M, NB,
    sxn, sxc, sxl,
    syn, syc, syl,
    FROM_SUMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """y = (x - mu_c) * (rstd_c * w_c) + b_c.  With FROM_SUMS, mean_ptr / rstd_ptr hold Caffe's
    blobs b0 / b1 (s at s_ptr) and the statistics are derived here (nothing to launch or cache
    beforehand): f = 0 if s == 0 else 1/s, mu = f*b0, rstd = rsqrt(f*b1 + eps)."""
    pid = tl.program_id(0)
    c = pid // NB
    j = (pid % NB) * BLOCK + tl.arange(0, BLOCK)
    ok = j < M
    n = j // L
    l = j - n * L
    c64 = c.to(tl.int64)
    n64 = n.to(tl.int64)
    x = tl.load(x_ptr + c64 * sxc + n64 * sxn + l * sxl, mask=ok, other=0.0).to(tl.float32)
    if FROM_SUMS:
        s = tl.load(s_ptr).to(tl.float32)
        f = tl.where(s == 0.0, 0.0, tl.div_rn(1.0, s))
        mu = tl.load(mean_ptr + c).to(tl.float32) * f
        a = tl.div_rn(1.0, tl.sqrt_rn(tl.load(rstd_ptr + c).to(tl.float32) * f + eps))
    else:
        mu = tl.load(mean_ptr + c)
        a = tl.load(rstd_ptr + c)
    if HAS_W:
        a = a * tl.load(w_ptr + c).to(tl.float32)
    y = (x - mu) * a
    if HAS_B:
        y = y + tl.load(b_ptr + c).to(tl.float32)
    tl.store(y_ptr + c64 * syc + n64 * syn + l * syl, y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _grad_sums_kernel(
    g_ptr, x_ptr, mean_ptr, rstd_ptr, sg_ptr, sgx_ptr,
    L, M, NB,
    sgn, sgc, sgl,
    sxn, sxc, sxl,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Per block of a channel: sum(g) and sum(g * xhat), xhat = (x - mu) * rstd."""
    pid = tl.program_id(0)
    c = pid // NB
    j = (pid % NB) * BLOCK + tl.arange(0, BLOCK)
    ok = j < M
    n = j // L
    l = j - n * L
    c64 = c.to(tl.int64)
    n64 = n.to(tl.int64)
    g = tl.load(g_ptr + c64 * sgc + n64 * sgn + l * sgl, mask=ok, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + c64 * sxc + n64 * sxn + l * sxl, mask=ok, other=0.0).to(tl.float32)
    xhat = tl.where(ok, (x - tl.load(mean_ptr + c)) * tl.load(rstd_ptr + c), 0.0)
    tl.store(sg_ptr + pid, tl.sum(g, axis=0))
    tl.store(sgx_ptr + pid, tl.sum(g * xhat, axis=0))


@triton.jit
def _dx_kernel(
    g_ptr, x_ptr, dx_ptr, mean_ptr, rstd_ptr, w_ptr, mg_ptr, mgx_ptr,
    L, M, NB,
    sgn, sgc, sgl,
    sxn, sxc, sxl,
    sdn, sdc, sdl,
    TRAIN: tl.constexpr, HAS_W: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """dx = (g - mean(g) - xhat * mean(g*xhat)) * rstd * w (batch statistics) or g * rstd * w."""
    pid = tl.program_id(0)
    c = pid // NB
    j = (pid % NB) * BLOCK + tl.arange(0, BLOCK)
    ok = j < M
    n = j // L
    l = j - n * L
    c64 = c.to(tl.int64)
    n64 = n.to(tl.int64)
    g = tl.load(g_ptr + c64 * sgc + n64 * sgn + l * sgl, mask=ok, other=0.0).to(tl.float32)
    r = tl.load(rstd_ptr + c)
    a = r
    if HAS_W:
        a = r * tl.load(w_ptr + c).to(tl.float32)
    if TRAIN:
        x = tl.load(x_ptr + c64 * sxc + n64 * sxn + l * sxl, mask=ok, other=0.0).to(tl.float32)
        xhat = (x - tl.load(mean_ptr + c)) * r
        g = g - tl.load(mg_ptr + c) - xhat * tl.load(mgx_ptr + c)
    tl.store(dx_ptr + c64 * sdc + n64 * sdn + l * sdl, (g * a).to(dx_ptr.dtype.element_ty), mask=ok)


def _device(x: Tensor) -> contextlib.AbstractContextManager[object]:
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _layout(x3: Tensor) -> tuple[int, int, int]:
    """(L, M, blocks per channel) of an (N, C, L) view."""
    n, _, l = x3.shape
    m = n * l
    return l, m, triton.cdiv(m, _BLOCK)


def _batch_stats(x3: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance (float32), block partials merged with Chan's formula."""
    c = x3.shape[1]
    l, m, nb = _layout(x3)
    cnt, mean_b, m2_b = (torch.empty((c, nb), dtype=torch.float32, device=x3.device) for _ in range(3))
    _stats_kernel[(c * nb,)](x3, cnt, mean_b, m2_b, l, m, nb, *x3.stride(), BLOCK=_BLOCK)
    mean = (cnt * mean_b).sum(dim=1) / m
    m2 = m2_b.sum(dim=1) + (cnt * (mean_b - mean[:, None]).square()).sum(dim=1)
    return mean, m2 / m


class _BatchNormFunction(torch.autograd.Function):
    """y = (x - mu) * rstd * w + b on an (N, C, L) view; with ``train`` the statistics are the batch's
    (returned too, not differentiable), else ``mean``/``var`` given."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x3: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        train: bool,
        eps: float,
        mean: Tensor | None,
        var: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        c = x3.shape[1]
        l, m, nb = _layout(x3)
        with _device(x3):
            if train:
                mean, var = _batch_stats(x3)
            assert mean is not None and var is not None
            mean, var = mean.float().contiguous(), var.float().contiguous()
            rstd = torch.rsqrt(var + eps)
            w = weight.contiguous() if weight is not None else rstd  # placeholder pointer when unused
            b = bias.contiguous() if bias is not None else rstd
            y3 = torch.empty_like(x3)
            _apply_kernel[(c * nb,)](
                x3, y3, mean, rstd, rstd, w, b, 0.0, l, m, nb, *x3.stride(), *y3.stride(),
                FROM_SUMS=False, HAS_W=weight is not None, HAS_B=bias is not None, BLOCK=_BLOCK,
            )  # fmt: skip
        ctx.save_for_backward(x3, weight, mean, rstd)
        ctx.train = train
        ctx.bias_dtype = bias.dtype if bias is not None else x3.dtype
        ctx.mark_non_differentiable(mean, var)
        return y3, mean, var

    @staticmethod
    def backward(ctx: Any, gy: Tensor, _gm: Tensor | None, _gv: Tensor | None) -> tuple[Tensor | None, ...]:
        x3, weight, mean, rstd = ctx.saved_tensors
        want_x, want_w, want_b = ctx.needs_input_grad[:3]
        c = x3.shape[1]
        l, m, nb = _layout(x3)
        gy = gy.reshape(x3.shape)
        dx = dw = db = None
        with _device(x3):
            if want_w or want_b or (want_x and ctx.train):
                sg, sgx = (torch.empty((c, nb), dtype=torch.float32, device=x3.device) for _ in range(2))
                _grad_sums_kernel[(c * nb,)](
                    gy, x3, mean, rstd, sg, sgx, l, m, nb, *gy.stride(), *x3.stride(), BLOCK=_BLOCK
                )
                sum_g, sum_gx = sg.sum(dim=1), sgx.sum(dim=1)
                dw = sum_gx.to(weight.dtype) if want_w else None
                db = sum_g.to(ctx.bias_dtype) if want_b else None
            if want_x:
                dx = torch.empty_like(x3)
                mg, mgx = (sum_g / m, sum_gx / m) if ctx.train else (rstd, rstd)  # placeholders in eval
                w = weight.contiguous() if weight is not None else rstd
                _dx_kernel[(c * nb,)](
                    gy, x3, dx, mean, rstd, w, mg.contiguous(), mgx.contiguous(), l, m, nb,
                    *gy.stride(), *x3.stride(), *dx.stride(),
                    TRAIN=bool(ctx.train), HAS_W=weight is not None, BLOCK=_BLOCK,
                )  # fmt: skip
        return dx, dw, db, None, None, None, None


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _inference(
    x3: Tensor, mean_sum: Tensor, var_sum: Tensor, scale_factor: Tensor, weight: Tensor | None,
    bias: Tensor | None, eps: float,
) -> Tensor:
    """Eval forward without autograd: one launch, the statistics derived in the kernel (on a GPU
    the per-layer launches, not the bytes, are what a small batch pays for)."""
    c = x3.shape[1]
    l, m, nb = _layout(x3)
    y3 = torch.empty_like(x3)
    with _device(x3):
        w = weight.contiguous() if weight is not None else mean_sum  # placeholder pointer when unused
        b = bias.contiguous() if bias is not None else mean_sum
        _apply_kernel[(c * nb,)](
            x3, y3, mean_sum.contiguous(), var_sum.contiguous(), scale_factor, w, b, float(eps), l, m, nb,
            *x3.stride(), *y3.stride(), FROM_SUMS=True, HAS_W=weight is not None, HAS_B=bias is not None,
            BLOCK=_BLOCK,
        )  # fmt: skip
    return y3


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
    """Caffe BatchNorm (+ per-channel ``weight``/``bias``) on an ``(N, C, ...)`` tensor, the blobs
    updated in place in training, as :func:`caffenorm.functional.batch_norm` (which has validated the
    shapes and ``eps`` before dispatching here)."""
    if input.dtype not in SUPPORTED_DTYPES:
        raise InputShapeError(
            f"BatchNorm: the Triton kernels compute float32/float16/bfloat16, got {input.dtype}; use the torch path"
        )
    if not batch_norm_fits(input, use_global_stats):
        raise InputShapeError(f"BatchNorm: the Triton kernels do not take an input of shape {tuple(input.shape)} here")
    n, c = input.shape[0], input.shape[1]
    x3 = input.reshape(n, c, -1)
    if use_global_stats:
        if stats is None and not _needs_grad(input, weight, bias):
            return _inference(x3, mean_sum, var_sum, scale_factor, weight, bias, eps).view(input.shape)
        if stats is None:
            from caffenorm.functional.batch_norm import global_stats

            stats = global_stats(mean_sum, var_sum, scale_factor, torch.float32)
        y3, _, _ = _BatchNormFunction.apply(x3, weight, bias, False, eps, stats[0], stats[1])
        return y3.view(input.shape)
    maf = check_real("BatchNorm", "moving_average_fraction", moving_average_fraction)
    y3, mean, var = _BatchNormFunction.apply(x3, weight, bias, True, eps, None, None)
    m = input.numel() // c
    with torch.no_grad():
        scale_factor.mul_(maf).add_(1.0)
        mean_sum.mul_(maf).add_(mean.to(mean_sum.dtype))
        # Caffe stores the unbiased variance: m/(m-1) (m > 1 here).
        var_sum.mul_(maf).add_((var * (m / (m - 1))).to(var_sum.dtype))
    return y3.view(input.shape)
