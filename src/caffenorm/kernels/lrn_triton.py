"""Caffe LRN forward and backward as Triton kernels, both regions, one pass over memory each.

Same math, same saved tensors and same summation order as the torch ops in
:mod:`caffenorm.functional.lrn` (which stay the CPU path and the fallback):

    S  = k' + c * window_sum(x**2)                      y  = x * S**(-beta)
    dx = g * S**(-beta) - 2 * beta * c * x * window_sum(g * y / S)

ACROSS_CHANNELS: window of ``local_size`` channels, ``c = alpha / n``, ``k' = k``.
WITHIN_CHANNEL: ``n x n`` spatial window, ``c = alpha / n**2``, ``k' = 1`` (Caffe's Power layer has
``shift = 1`` hard-coded, so ``k`` is ignored; the AVE pooling divides by ``n*n`` at borders too).

The window sums are direct sums of the zero-padded window, added in the torch path's order
(centre, then -1, +1, -2, +2, ...; WITHIN sums columns first, then rows), computed in float32
for float32, float16 and bfloat16 inputs; ``S`` is float32, ``y``/``dx`` the input dtype.

Non-finite inputs (ACROSS_CHANNELS): Caffe slides its channel window with a running sum (add the
head, subtract the tail), so once a non-finite term has left the window every later channel at that
position is NaN (inf - inf), and once the sum has overflowed to inf every later channel stays inf.
The kernels reproduce that on device, without a host sync and without the running sum's rounding
drift: each program walks the channels in order and carries, per position, the first channel whose
term ``c * x**2`` (backward: ``g * y / S``) is non-finite and the first channel whose window sum is
inf; channels past ``first_inf`` get ``S = inf``, channels past ``first_bad + (n-1)/2`` get NaN.
This is exactly the torch path's ``_poison_like_running_sum``, so results agree element by element,
NaN for NaN.  WITHIN_CHANNEL is Caffe's pooling, a direct sum: NaN stays in its own window.

Layout: any strides (NCHW, channels-last, expanded gradients) are read and written in place, no
copies; ``y``/``dx`` and ``S`` follow ``torch.empty_like(x)``, as on the torch path.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

from caffenorm.errors import InputShapeError
from caffenorm.functional.lrn import NormRegion, _lrn_settings
from caffenorm.kernels import SUPPORTED_DTYPES

__all__ = ["lrn_backward", "lrn_forward"]

# beta forms (constexpr BETA_MODE): the betas of real models get cheaper forms than exp2/log2.
_GENERAL, _B075, _B05, _B1, _B0 = 0, 1, 2, 3, 4


@triton.jit
def _pow_neg(s, beta, BETA_MODE: tl.constexpr, NEG_SIGN: tl.constexpr):
    """``s ** -beta`` with torch.pow's special values: inf at s = 0 (beta > 0), 0 at s = inf, NaN for
    NaN, and for s < 0 NaN unless ``-beta`` is an integer (NEG_SIGN: 0 NaN, 1 even, -1 odd)."""
    if BETA_MODE == 1:
        r = tl.math.rsqrt(s)
        p = r * tl.sqrt(r)  # the torch path's form for beta = 0.75
    elif BETA_MODE == 2:
        p = tl.math.rsqrt(s)
    elif BETA_MODE == 3:
        p = 1.0 / s
    elif BETA_MODE == 4:
        p = tl.full(s.shape, 1.0, tl.float32)  # pow(anything, 0) = 1, NaN included
    else:
        p = tl.exp2(-beta * tl.log2(tl.abs(s)))
        if NEG_SIGN == 0:
            p = tl.where(s < 0, float("nan"), p)
        elif NEG_SIGN == -1:
            p = tl.where(s < 0, -p, p)
    return p


@triton.jit
def _across_fwd_kernel(
    x_ptr, y_ptr, s_ptr,
    C, HW, W, NBLK,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    ssn, ssc, ssh, ssw,
    coef, k, beta,
    HALF: tl.constexpr, BETA_MODE: tl.constexpr, NEG_SIGN: tl.constexpr,
    CB: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    # One program: BHW positions of one sample, walking all channels in chunks of CB, in order
    # (the order carries the running-sum emulation).
    pid = tl.program_id(0)
    n = (pid // NBLK).to(tl.int64)
    hw = (pid % NBLK) * BHW + tl.arange(0, BHW)
    hw_ok = hw < HW
    h = hw // W
    w = hw - h * W
    x_pos = x_ptr + n * sxn + (h * sxh + w * sxw)[None, :]
    y_pos = y_ptr + n * syn + (h * syh + w * syw)[None, :]
    s_pos = s_ptr + n * ssn + (h * ssh + w * ssw)[None, :]
    first_bad = tl.full([BHW], 0, tl.int32) + C
    first_inf = tl.full([BHW], 0, tl.int32) + C
    for c0 in range(0, C, CB):
        cc = c0 + tl.arange(0, CB)
        ok = (cc < C)[:, None] & hw_ok[None, :]
        xc = tl.load(x_pos + cc[:, None] * sxc, mask=ok, other=0.0).to(tl.float32)
        sq = xc * xc * coef  # Caffe scales each square by alpha/n before summing
        acc = sq + k
        for d in tl.static_range(1, HALF + 1):
            lo = cc - d
            xl = tl.load(x_pos + lo[:, None] * sxc, mask=ok & (lo >= 0)[:, None], other=0.0).to(tl.float32)
            acc += xl * xl * coef
            hi = cc + d
            xh = tl.load(x_pos + hi[:, None] * sxc, mask=ok & (hi < C)[:, None], other=0.0).to(tl.float32)
            acc += xh * xh * coef
        # Running-sum emulation (module doc): abs(v) < inf is False for NaN and +-inf.
        bad = ok & ~(tl.abs(sq) < float("inf"))
        first_bad = tl.minimum(first_bad, tl.min(tl.where(bad, cc[:, None], C), axis=0))
        over = ok & (tl.abs(acc) == float("inf"))
        first_inf = tl.minimum(first_inf, tl.min(tl.where(over, cc[:, None], C), axis=0))
        s = tl.where(cc[:, None] > first_inf[None, :], float("inf"), acc)
        s = tl.where(cc[:, None] > first_bad[None, :] + HALF, float("nan"), s)
        tl.store(s_pos + cc[:, None] * ssc, s, mask=ok)
        y = _pow_neg(s, beta, BETA_MODE, NEG_SIGN) * xc
        tl.store(y_pos + cc[:, None] * syc, y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _across_bwd_kernel(
    g_ptr, x_ptr, y_ptr, s_ptr, dx_ptr,
    C, HW, W, NBLK,
    sgn, sgc, sgh, sgw,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    ssn, ssc, ssh, ssw,
    sdn, sdc, sdh, sdw,
    neg2bc, beta,
    HALF: tl.constexpr, BETA_MODE: tl.constexpr, NEG_SIGN: tl.constexpr,
    CB: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    n = (pid // NBLK).to(tl.int64)
    hw = (pid % NBLK) * BHW + tl.arange(0, BHW)
    hw_ok = hw < HW
    h = hw // W
    w = hw - h * W
    g_pos = g_ptr + n * sgn + (h * sgh + w * sgw)[None, :]
    x_pos = x_ptr + n * sxn + (h * sxh + w * sxw)[None, :]
    y_pos = y_ptr + n * syn + (h * syh + w * syw)[None, :]
    s_pos = s_ptr + n * ssn + (h * ssh + w * ssw)[None, :]
    d_pos = dx_ptr + n * sdn + (h * sdh + w * sdw)[None, :]
    first_bad = tl.full([BHW], 0, tl.int32) + C
    first_inf = tl.full([BHW], 0, tl.int32) + C
    for c0 in range(0, C, CB):
        cc = c0 + tl.arange(0, CB)
        ok = (cc < C)[:, None] & hw_ok[None, :]
        gc = tl.load(g_pos + cc[:, None] * sgc, mask=ok, other=0.0).to(tl.float32)
        sc = tl.load(s_pos + cc[:, None] * ssc, mask=ok, other=1.0)
        ratio = gc * tl.load(y_pos + cc[:, None] * syc, mask=ok, other=0.0).to(tl.float32) / sc
        acc = ratio
        for d in tl.static_range(1, HALF + 1):
            # Out-of-range neighbours load g = y = 0 and S = 1: a zero term, as the zero padding.
            lo = cc - d
            ml = ok & (lo >= 0)[:, None]
            gl = tl.load(g_pos + lo[:, None] * sgc, mask=ml, other=0.0).to(tl.float32)
            yl = tl.load(y_pos + lo[:, None] * syc, mask=ml, other=0.0).to(tl.float32)
            acc += gl * yl / tl.load(s_pos + lo[:, None] * ssc, mask=ml, other=1.0)
            hi = cc + d
            mh = ok & (hi < C)[:, None]
            gh = tl.load(g_pos + hi[:, None] * sgc, mask=mh, other=0.0).to(tl.float32)
            yh = tl.load(y_pos + hi[:, None] * syc, mask=mh, other=0.0).to(tl.float32)
            acc += gh * yh / tl.load(s_pos + hi[:, None] * ssc, mask=mh, other=1.0)
        # Caffe's backward slides a running sum too (CrossChannelBackward_cpu): same emulation.
        bad = ok & ~(tl.abs(ratio) < float("inf"))
        first_bad = tl.minimum(first_bad, tl.min(tl.where(bad, cc[:, None], C), axis=0))
        over = ok & (tl.abs(acc) == float("inf"))
        first_inf = tl.minimum(first_inf, tl.min(tl.where(over, cc[:, None], C), axis=0))
        wsum = tl.where(cc[:, None] > first_inf[None, :], float("inf"), acc)
        wsum = tl.where(cc[:, None] > first_bad[None, :] + HALF, float("nan"), wsum)
        xc = tl.load(x_pos + cc[:, None] * sxc, mask=ok, other=0.0).to(tl.float32)
        dx = _pow_neg(sc, beta, BETA_MODE, NEG_SIGN) * gc + neg2bc * xc * wsum
        tl.store(d_pos + cc[:, None] * sdc, dx.to(dx_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _within_fwd_kernel(
    x_ptr, y_ptr, s_ptr,
    C, H, W, NBLK,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    ssn, ssc, ssh, ssw,
    coef, beta,
    HALF: tl.constexpr, BETA_MODE: tl.constexpr, NEG_SIGN: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    # One program: BLOCK positions of one (sample, channel) plane.
    pid = tl.program_id(0)
    plane = pid // NBLK
    n = (plane // C).to(tl.int64)
    c = plane % C
    hw = (pid % NBLK) * BLOCK + tl.arange(0, BLOCK)
    ok = hw < H * W
    h = hw // W
    w = hw - h * W
    x_pl = x_ptr + n * sxn + c * sxc
    acc = tl.zeros([BLOCK], tl.float32)
    xc = tl.zeros([BLOCK], tl.float32)
    # The torch path's separable order: column sums T over rows (0, -1, +1, ...), then
    # S = ((T[w] + 1) + T[w-1]) + T[w+1] + ...; out-of-image terms load 0 (zero padding).
    for jw in tl.static_range(0, 2 * HALF + 1):
        dw = ((jw + 1) // 2) * (1 - 2 * (jw % 2))
        ww = w + dw
        okw = ok & (ww >= 0) & (ww < W)
        col = tl.zeros([BLOCK], tl.float32)
        for jh in tl.static_range(0, 2 * HALF + 1):
            dh = ((jh + 1) // 2) * (1 - 2 * (jh % 2))
            hh = h + dh
            v = tl.load(x_pl + hh * sxh + ww * sxw, mask=okw & (hh >= 0) & (hh < H), other=0.0).to(tl.float32)
            if jw == 0:  # noqa: SIM102 (nested constexpr ifs: static in Triton, unlike `and`)
                if jh == 0:
                    xc = v
            if jh == 0:
                col = v * v * coef
            else:
                col += v * v * coef
        if jw == 0:
            acc = col + 1.0  # Caffe's Power layer: shift = 1, k unused
        else:
            acc += col
    tl.store(s_ptr + n * ssn + c * ssc + h * ssh + w * ssw, acc, mask=ok)
    y = _pow_neg(acc, beta, BETA_MODE, NEG_SIGN) * xc
    tl.store(y_ptr + n * syn + c * syc + h * syh + w * syw, y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _within_bwd_kernel(
    g_ptr, x_ptr, y_ptr, s_ptr, dx_ptr,
    C, H, W, NBLK,
    sgn, sgc, sgh, sgw,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    ssn, ssc, ssh, ssw,
    sdn, sdc, sdh, sdw,
    neg2bc, beta,
    HALF: tl.constexpr, BETA_MODE: tl.constexpr, NEG_SIGN: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    plane = pid // NBLK
    n = (plane // C).to(tl.int64)
    c = plane % C
    hw = (pid % NBLK) * BLOCK + tl.arange(0, BLOCK)
    ok = hw < H * W
    h = hw // W
    w = hw - h * W
    g_pl = g_ptr + n * sgn + c * sgc
    y_pl = y_ptr + n * syn + c * syc
    s_pl = s_ptr + n * ssn + c * ssc
    acc = tl.zeros([BLOCK], tl.float32)
    for jw in tl.static_range(0, 2 * HALF + 1):
        dw = ((jw + 1) // 2) * (1 - 2 * (jw % 2))
        ww = w + dw
        okw = ok & (ww >= 0) & (ww < W)
        col = tl.zeros([BLOCK], tl.float32)
        for jh in tl.static_range(0, 2 * HALF + 1):
            dh = ((jh + 1) // 2) * (1 - 2 * (jh % 2))
            hh = h + dh
            m = okw & (hh >= 0) & (hh < H)
            gv = tl.load(g_pl + hh * sgh + ww * sgw, mask=m, other=0.0).to(tl.float32)
            yv = tl.load(y_pl + hh * syh + ww * syw, mask=m, other=0.0).to(tl.float32)
            r = gv * yv / tl.load(s_pl + hh * ssh + ww * ssw, mask=m, other=1.0)
            if jh == 0:
                col = r
            else:
                col += r
        if jw == 0:
            acc = col
        else:
            acc += col
    gc = tl.load(g_pl + h * sgh + w * sgw, mask=ok, other=0.0).to(tl.float32)
    sc = tl.load(s_pl + h * ssh + w * ssw, mask=ok, other=1.0)
    xc = tl.load(x_ptr + n * sxn + c * sxc + h * sxh + w * sxw, mask=ok, other=0.0).to(tl.float32)
    dx = _pow_neg(sc, beta, BETA_MODE, NEG_SIGN) * gc + neg2bc * xc * acc
    tl.store(dx_ptr + n * sdn + c * sdc + h * sdh + w * sdw, dx.to(dx_ptr.dtype.element_ty), mask=ok)


def _beta_mode(beta: float) -> tuple[int, int]:
    """``(BETA_MODE, NEG_SIGN)`` for ``s ** -beta``: a fast form for 0.75/0.5/1/0, else exp2/log2
    with the sign rule of ``pow`` for negative ``s`` (possible only with negative ``k`` or ``alpha``)."""
    fast = {0.75: _B075, 0.5: _B05, 1.0: _B1, 0.0: _B0}
    if beta in fast:
        return fast[beta], 0
    e = -beta
    if e.is_integer():
        return _GENERAL, 1 if int(e) % 2 == 0 else -1
    return _GENERAL, 0


def _check_input(x: Tensor, what: str) -> None:
    if x.dim() != 4:
        raise InputShapeError(f"LRN: {what} has {x.dim()} dimensions (shape {tuple(x.shape)}), expected (N, C, H, W)")
    if x.dtype not in SUPPORTED_DTYPES:
        raise InputShapeError(
            f"LRN: the Triton kernels compute float32/float16/bfloat16, got {x.dtype}; use the torch path"
        )


def _device(x: Tensor) -> contextlib.AbstractContextManager[object]:
    # Triton launches on the current CUDA device: make it the tensor's.
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def _across_blocks(c: int, hw: int, backward: bool) -> tuple[int, int]:
    """(channel chunk, positions per program): 16 x 64 tiles forward, 8 x 64 backward (which holds
    three tensors' windows: about 140 registers a thread at 16, no spills at either), smaller for
    small inputs."""
    return min(8 if backward else 16, _next_pow2(c)), min(64, max(16, _next_pow2(hw)))


def _within_block(hw: int) -> int:
    """Positions per program: 256 (two a thread), so that the unrolled n*n window stays in registers."""
    return min(256, max(16, _next_pow2(hw)))


def lrn_forward(
    x: Tensor, local_size: int, alpha: float, beta: float, k: float, norm_region: int
) -> tuple[Tensor, Tensor]:
    """Caffe LRN forward; returns ``(y, S)`` like ``caffenorm::lrn`` (``y`` in ``x``'s dtype and
    ``torch.empty_like(x)`` layout, ``S`` float32 in the same layout).  The settings are not validated here:
    the op validates them before dispatching."""
    _check_input(x, "input")
    half, coef, shift, _ = _lrn_settings(local_size, alpha, k, norm_region)
    mode, neg = _beta_mode(float(beta))
    y = torch.empty_like(x)
    s_all = torch.empty_like(x, dtype=torch.float32)
    if x.numel() == 0:
        return y, s_all
    n, c, h, w = x.shape
    with _device(x):
        if norm_region == NormRegion.WITHIN_CHANNEL:
            block = _within_block(h * w)
            nblk = triton.cdiv(h * w, block)
            _within_fwd_kernel[(n * c * nblk,)](
                x, y, s_all, c, h, w, nblk, *x.stride(), *y.stride(), *s_all.stride(),
                coef, float(beta), HALF=half, BETA_MODE=mode, NEG_SIGN=neg, BLOCK=block,
            )  # fmt: skip
        else:
            cb, bhw = _across_blocks(c, h * w, False)
            nblk = triton.cdiv(h * w, bhw)
            _across_fwd_kernel[(n * nblk,)](
                x, y, s_all, c, h * w, w, nblk, *x.stride(), *y.stride(), *s_all.stride(),
                coef, shift, float(beta), HALF=half, BETA_MODE=mode, NEG_SIGN=neg, CB=cb, BHW=bhw,
            )  # fmt: skip
    return y, s_all


def lrn_backward(
    grad: Tensor, x: Tensor, y: Tensor, scale: Tensor, local_size: int, alpha: float, beta: float, norm_region: int
) -> Tensor:
    """Caffe LRN backward from the forward's ``x``, ``y`` and ``scale = S``; returns ``dx`` in
    ``x``'s dtype, like ``caffenorm::lrn_backward``."""
    _check_input(x, "input")
    if any(t.shape != x.shape or t.device != x.device for t in (grad, y, scale)):
        raise InputShapeError(
            f"LRN backward: grad {tuple(grad.shape)}, y {tuple(y.shape)} and scale {tuple(scale.shape)} "
            f"must all have the input's shape {tuple(x.shape)} and device {x.device}"
        )
    half, coef, _, _ = _lrn_settings(local_size, alpha, 1.0, norm_region)
    mode, neg = _beta_mode(float(beta))
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return dx
    scale = scale if scale.dtype == torch.float32 else scale.float()
    neg2bc = -2.0 * float(beta) * coef
    n, c, h, w = x.shape
    strides = (*grad.stride(), *x.stride(), *y.stride(), *scale.stride(), *dx.stride())
    with _device(x):
        if norm_region == NormRegion.WITHIN_CHANNEL:
            block = _within_block(h * w)
            nblk = triton.cdiv(h * w, block)
            _within_bwd_kernel[(n * c * nblk,)](
                grad, x, y, scale, dx, c, h, w, nblk, *strides, neg2bc, float(beta),
                HALF=half, BETA_MODE=mode, NEG_SIGN=neg, BLOCK=block,
            )  # fmt: skip
        else:
            cb, bhw = _across_blocks(c, h * w, True)
            nblk = triton.cdiv(h * w, bhw)
            _across_bwd_kernel[(n * nblk,)](
                grad, x, y, scale, dx, c, h * w, w, nblk, *strides, neg2bc, float(beta),
                HALF=half, BETA_MODE=mode, NEG_SIGN=neg, CB=cb, BHW=bhw,
            )  # fmt: skip
    return dx
