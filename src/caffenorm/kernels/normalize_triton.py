"""SSD ``Normalize`` (weiliu89/caffe ssd, normalize_layer.cpp) forward and backward as Triton kernels.

Same math, outputs and saved tensors as the torch ops in :mod:`caffenorm.functional.normalize`
(which stay the CPU path and the fallback).  With ``<a, b>`` the sum over the region (C*H*W per
sample when ``across_spatial``, C per position otherwise), float32 math for float32/float16/bfloat16:

    norm = sqrt(<x, x> + eps)            (eps inside the sqrt, as Caffe)
    y    = s_c * x / norm

    true:   dx = (s_c * g - x * <s*g, x> / norm**2) / norm       ds_c = sum(g * x / norm)
    Caffe:  dx = s_c * (g - x * <g, x> / norm**2) / norm         ds   = sum(y * g) / s

(``caffe_backward`` reproduces Caffe's ``Backward_cpu``: ``<g, x>`` in place of ``<s*g, x>``, exact
only for equal scales, and a scale gradient divided by ``s``, NaN/inf at ``s == 0``.)

Kernels:

* per position (``across_spatial=False``): one program owns a block of positions of one sample and
  walks the channels twice (sum of squares, then ``y``; backward: the dot product and the
  per-channel scale-gradient partials, then ``dx``), so ``x`` is read from HBM once and from L2
  once;
* per sample (``across_spatial=True``): a row-reduction kernel gives ``sum_l`` per (sample, channel),
  a few torch ops on those ``(N, C)`` values give the norm (or the dot products and the scale
  gradient), and an element-wise kernel writes ``y`` (or ``dx``).

No host synchronisation anywhere; partial sums are written per program and reduced in a fixed
order, so results are deterministic.  Non-finite inputs propagate as in Caffe's direct sums: a NaN
or inf makes its own region NaN (``x / inf``, ``inf / inf``), nothing else.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

from caffenorm.errors import InputShapeError
from caffenorm.kernels import SUPPORTED_DTYPES

__all__ = ["normalize_backward", "normalize_forward"]


@triton.jit
def _pos_fwd_kernel(
    x_ptr, y_ptr, scale_ptr, norm_ptr,
    C, L, NBLK,
    sxn, sxc, sxl,
    syn, syc, syl,
    eps,
    SHARED: tl.constexpr, CB: tl.constexpr, BL: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    n = (pid // NBLK).to(tl.int64)
    ll = (pid % NBLK) * BL + tl.arange(0, BL)
    l_ok = ll < L
    x_pos = x_ptr + n * sxn + (ll * sxl)[None, :]
    ss = tl.zeros([BL], tl.float32)
    for c0 in range(0, C, CB):
        cc = c0 + tl.arange(0, CB)
        ok = (cc < C)[:, None] & l_ok[None, :]
        xv = tl.load(x_pos + cc[:, None] * sxc, mask=ok, other=0.0).to(tl.float32)
        ss += tl.sum(xv * xv, axis=0)
    nrm = tl.sqrt_rn(ss + eps)
    tl.store(norm_ptr + n * L + ll, nrm, mask=l_ok)
    y_pos = y_ptr + n * syn + (ll * syl)[None, :]
    if SHARED:
        sv = tl.load(scale_ptr).to(tl.float32)
    for c0 in range(0, C, CB):
        cc = c0 + tl.arange(0, CB)
        ok = (cc < C)[:, None] & l_ok[None, :]
        xv = tl.load(x_pos + cc[:, None] * sxc, mask=ok, other=0.0).to(tl.float32)
        if SHARED:
            yv = xv / nrm[None, :] * sv
        else:
            yv = xv / nrm[None, :] * tl.load(scale_ptr + cc, mask=cc < C, other=0.0).to(tl.float32)[:, None]
        tl.store(y_pos + cc[:, None] * syc, yv.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _pos_bwd_kernel(
    g_ptr, x_ptr, scale_ptr, norm_ptr, dx_ptr, part_ptr,
    C, L, NBLK,
    sgn, sgc, sgl,
    sxn, sxc, sxl,
    sdn, sdc, sdl,
    SHARED: tl.constexpr, CAFFE: tl.constexpr, INPUT_GRAD: tl.constexpr, SCALE_GRAD: tl.constexpr,
    CB: tl.constexpr, BL: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    n = (pid // NBLK).to(tl.int64)
    ll = (pid % NBLK) * BL + tl.arange(0, BL)
    l_ok = ll < L
    g_pos = g_ptr + n * sgn + (ll * sgl)[None, :]
    x_pos = x_ptr + n * sxn + (ll * sxl)[None, :]
    nrm = tl.load(norm_ptr + n * L + ll, mask=l_ok, other=1.0)
    inv = 1.0 / nrm
    dot = tl.zeros([BL], tl.float32)
    for c0 in range(0, C, CB):
        cc = c0 + tl.arange(0, CB)
        c_ok = cc < C
        ok = c_ok[:, None] & l_ok[None, :]
        gx = tl.load(g_pos + cc[:, None] * sgc, mask=ok, other=0.0).to(tl.float32) * tl.load(
            x_pos + cc[:, None] * sxc, mask=ok, other=0.0
        ).to(tl.float32)
        if SCALE_GRAD:
            # This program's share of ds_c = sum_{n,l} g*x/norm; reduced over programs on the host side.
            tl.store(part_ptr + pid.to(tl.int64) * C + cc, tl.sum(gx * inv[None, :], axis=1), mask=c_ok)
        if INPUT_GRAD:
            if SHARED:
                dot += tl.sum(gx, axis=0)
            elif CAFFE:
                dot += tl.sum(gx, axis=0)  # Caffe: <g, x>, whatever the scales
            else:
                sv = tl.load(scale_ptr + cc, mask=c_ok, other=0.0).to(tl.float32)
                dot += tl.sum(gx * sv[:, None], axis=0)  # <s*g, x>
    if INPUT_GRAD:
        if SHARED:
            s0 = tl.load(scale_ptr).to(tl.float32)
            if CAFFE == 0:
                dot = dot * s0
        coeff = dot / (nrm * nrm)
        d_pos = dx_ptr + n * sdn + (ll * sdl)[None, :]
        for c0 in range(0, C, CB):
            cc = c0 + tl.arange(0, CB)
            c_ok = cc < C
            ok = c_ok[:, None] & l_ok[None, :]
            gv = tl.load(g_pos + cc[:, None] * sgc, mask=ok, other=0.0).to(tl.float32)
            xv = tl.load(x_pos + cc[:, None] * sxc, mask=ok, other=0.0).to(tl.float32)
            if SHARED:
                sv2 = s0
            else:
                sv2 = tl.load(scale_ptr + cc, mask=c_ok, other=0.0).to(tl.float32)[:, None]
            if CAFFE:
                dxv = (gv - xv * coeff[None, :]) * sv2 / nrm[None, :]
            else:
                dxv = (gv * sv2 - xv * coeff[None, :]) / nrm[None, :]
            tl.store(d_pos + cc[:, None] * sdc, dxv.to(dx_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _rows_kernel(
    a_ptr, b_ptr, out_ptr,
    C, L, NCB,
    san, sac, sal,
    sbn, sbc, sbl,
    PRODUCT: tl.constexpr, CB: tl.constexpr, BL: tl.constexpr,
):  # fmt: skip
    """out[n, c] = sum_l a*a (PRODUCT=0) or sum_l a*b (PRODUCT=1)."""
    pid = tl.program_id(0)
    n = (pid // NCB).to(tl.int64)
    cc = (pid % NCB) * CB + tl.arange(0, CB)
    c_ok = cc < C
    a_row = a_ptr + n * san + (cc * sac)[:, None]
    b_row = b_ptr + n * sbn + (cc * sbc)[:, None]
    acc = tl.zeros([CB, BL], tl.float32)
    for l0 in range(0, L, BL):
        ll = l0 + tl.arange(0, BL)
        ok = c_ok[:, None] & (ll < L)[None, :]
        av = tl.load(a_row + (ll * sal)[None, :], mask=ok, other=0.0).to(tl.float32)
        if PRODUCT:
            acc += av * tl.load(b_row + (ll * sbl)[None, :], mask=ok, other=0.0).to(tl.float32)
        else:
            acc += av * av
    tl.store(out_ptr + n * C + cc, tl.sum(acc, axis=1), mask=c_ok)


@triton.jit
def _sample_y_kernel(
    x_ptr, y_ptr, scale_ptr, norm_ptr,
    C, L, NCB, NLB,
    sxn, sxc, sxl,
    syn, syc, syl,
    SHARED: tl.constexpr, CB: tl.constexpr, BL: tl.constexpr,
):  # fmt: skip
    """y = x * (1 / norm[n]) * s_c (Caffe multiplies by the reciprocal in the across_spatial branch)."""
    pid = tl.program_id(0)
    n = (pid // (NCB * NLB)).to(tl.int64)
    rest = pid % (NCB * NLB)
    cc = (rest // NLB) * CB + tl.arange(0, CB)
    ll = (rest % NLB) * BL + tl.arange(0, BL)
    c_ok = cc < C
    ok = c_ok[:, None] & (ll < L)[None, :]
    inv = 1.0 / tl.load(norm_ptr + n)
    xv = tl.load(x_ptr + n * sxn + (cc * sxc)[:, None] + (ll * sxl)[None, :], mask=ok, other=0.0).to(tl.float32)
    if SHARED:
        yv = xv * inv * tl.load(scale_ptr).to(tl.float32)
    else:
        yv = xv * inv * tl.load(scale_ptr + cc, mask=c_ok, other=0.0).to(tl.float32)[:, None]
    tl.store(y_ptr + n * syn + (cc * syc)[:, None] + (ll * syl)[None, :], yv.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _sample_dx_kernel(
    g_ptr, x_ptr, scale_ptr, norm_ptr, coeff_ptr, dx_ptr,
    C, L, NCB, NLB,
    sgn, sgc, sgl,
    sxn, sxc, sxl,
    sdn, sdc, sdl,
    SHARED: tl.constexpr, CAFFE: tl.constexpr, CB: tl.constexpr, BL: tl.constexpr,
):  # fmt: skip
    """dx from the per-sample norm and coeff = <., x> / norm**2 (formulas in the module doc)."""
    pid = tl.program_id(0)
    n = (pid // (NCB * NLB)).to(tl.int64)
    rest = pid % (NCB * NLB)
    cc = (rest // NLB) * CB + tl.arange(0, CB)
    ll = (rest % NLB) * BL + tl.arange(0, BL)
    c_ok = cc < C
    ok = c_ok[:, None] & (ll < L)[None, :]
    nrm = tl.load(norm_ptr + n)
    coeff = tl.load(coeff_ptr + n)
    gv = tl.load(g_ptr + n * sgn + (cc * sgc)[:, None] + (ll * sgl)[None, :], mask=ok, other=0.0).to(tl.float32)
    xv = tl.load(x_ptr + n * sxn + (cc * sxc)[:, None] + (ll * sxl)[None, :], mask=ok, other=0.0).to(tl.float32)
    if SHARED:
        sv = tl.load(scale_ptr).to(tl.float32)
    else:
        sv = tl.load(scale_ptr + cc, mask=c_ok, other=0.0).to(tl.float32)[:, None]
    if CAFFE:
        dxv = (gv - xv * coeff) * sv / nrm
    else:
        dxv = (gv * sv - xv * coeff) / nrm
    tl.store(dx_ptr + n * sdn + (cc * sdc)[:, None] + (ll * sdl)[None, :], dxv.to(dx_ptr.dtype.element_ty), mask=ok)


def _device(x: Tensor) -> contextlib.AbstractContextManager[object]:
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def _tiles(c: int, l: int) -> tuple[int, int]:
    """(channels, positions) per tile: about 2048 elements, positions first (they are contiguous in NCHW)."""
    bl = min(64, max(16, _next_pow2(l)))
    return min(max(1, 2048 // bl), _next_pow2(c)), bl


def _check(x: Tensor, scale: Tensor) -> tuple[int, int, int]:
    if x.dim() < 2:
        raise InputShapeError(f"Normalize: input of shape {tuple(x.shape)} has no channel axis")
    if x.dtype not in SUPPORTED_DTYPES:
        raise InputShapeError(
            f"Normalize: the Triton kernels compute float32/float16/bfloat16, got {x.dtype}; use the torch path"
        )
    if scale.device != x.device:
        raise InputShapeError(
            f"Normalize: scale is on {scale.device} but the input on {x.device}; move both to one device"
        )
    n, c = x.shape[0], x.shape[1]
    if scale.dim() > 1 or (scale.dim() == 1 and scale.shape[0] != c):
        raise InputShapeError(f"Normalize: scale of shape {tuple(scale.shape)} does not fit {c} channels")
    return n, c, x.numel() // max(1, n * c) if n * c else 0


def normalize_forward(x: Tensor, scale: Tensor, across_spatial: bool, eps: float) -> tuple[Tensor, Tensor]:
    """SSD Normalize forward; returns ``(y, norm)`` like ``caffenorm::normalize``: ``y`` in ``x``'s
    dtype with the layout of ``torch.empty_like(x.reshape(N, C, -1))``, ``norm`` float32 of shape
    ``(N, 1, 1)`` (``across_spatial``) or ``(N, 1, H*W)``."""
    n, c, l = _check(x, scale)
    x3 = x.reshape(n, c, -1)
    l = x3.shape[2]
    y3 = torch.empty_like(x3)
    norm = torch.empty((n, 1, 1 if across_spatial else l), dtype=torch.float32, device=x.device)
    shared = 1 if scale.dim() == 0 else 0
    scale = scale.contiguous()
    cb, bl = _tiles(c, l)
    with _device(x):
        if across_spatial:
            rows = torch.zeros((n, c), dtype=torch.float32, device=x.device)
            ncb = triton.cdiv(c, cb)
            if n * c and l:
                _rows_kernel[(n * ncb,)](x3, x3, rows, c, l, ncb, *x3.stride(), *x3.stride(), PRODUCT=0, CB=cb, BL=bl)
            torch.sqrt(rows.sum(dim=1).add_(eps), out=norm.view(n))
            nlb = triton.cdiv(l, bl)
            if x3.numel():
                _sample_y_kernel[(n * ncb * nlb,)](
                    x3, y3, scale, norm, c, l, ncb, nlb, *x3.stride(), *y3.stride(), SHARED=shared, CB=cb, BL=bl
                )
        else:
            nblk = triton.cdiv(l, bl)
            if n and l:
                if c:
                    _pos_fwd_kernel[(n * nblk,)](
                        x3, y3, scale, norm, c, l, nblk, *x3.stride(), *y3.stride(), float(eps),
                        SHARED=shared, CB=cb, BL=bl,
                    )  # fmt: skip
                else:
                    norm.fill_(eps).sqrt_()
    return y3.view(x.shape), norm


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
    """SSD Normalize backward from ``x``, ``scale`` and the forward's ``norm``; returns ``(dx, ds)``
    like ``caffenorm::normalize_backward`` (an output whose flag is False comes back as an empty
    ``(0,)`` tensor)."""
    n, c, _ = _check(x, scale)
    if grad.shape != x.shape or grad.device != x.device or norm.device != x.device:
        raise InputShapeError(
            f"Normalize backward: grad {tuple(grad.shape)} on {grad.device} and norm on {norm.device} must have "
            f"the input's shape {tuple(x.shape)} and device {x.device}"
        )
    x3, g3 = x.reshape(n, c, -1), grad.reshape(n, c, -1)
    l = x3.shape[2]
    nrm = norm if norm.dtype == torch.float32 else norm.float()
    scale = scale.contiguous()
    sc = scale.to(torch.float32)
    shared = 1 if scale.dim() == 0 else 0
    caffe = 1 if caffe_backward else 0
    grad_x = torch.empty_like(x3) if input_grad else None
    dx_arg = grad_x if grad_x is not None else x3  # never written when INPUT_GRAD is 0
    cb, bl = _tiles(c, l)
    with _device(x):
        if across_spatial:
            gxr = torch.zeros((n, c), dtype=torch.float32, device=x.device)  # sum_l g*x
            ncb = triton.cdiv(c, cb)
            if n * c and l:
                _rows_kernel[(n * ncb,)](g3, x3, gxr, c, l, ncb, *g3.stride(), *x3.stride(), PRODUCT=1, CB=cb, BL=bl)
            nrm1 = nrm.reshape(n)
            per_c = (gxr * torch.reciprocal(nrm1)[:, None]).sum(dim=0)
            if grad_x is not None:
                if caffe or shared:
                    dot = gxr.sum(dim=1)
                    if shared and not caffe:
                        dot = dot * sc
                else:
                    dot = (gxr * sc).sum(dim=1)
                coeff = dot / (nrm1 * nrm1)
                nlb = triton.cdiv(l, bl)
                if x3.numel():
                    _sample_dx_kernel[(n * ncb * nlb,)](
                        g3, x3, scale, nrm1, coeff, grad_x, c, l, ncb, nlb,
                        *g3.stride(), *x3.stride(), *grad_x.stride(), SHARED=shared, CAFFE=caffe, CB=cb, BL=bl,
                    )  # fmt: skip
        else:
            nblk = triton.cdiv(l, bl)
            part = torch.zeros((max(1, n * nblk), c), dtype=torch.float32, device=x.device)
            if n * c and l and (input_grad or scale_grad):
                _pos_bwd_kernel[(n * nblk,)](
                    g3, x3, scale, nrm, dx_arg, part, c, l, nblk,
                    *g3.stride(), *x3.stride(), *dx_arg.stride(),
                    SHARED=shared, CAFFE=caffe, INPUT_GRAD=1 if input_grad else 0,
                    SCALE_GRAD=1 if scale_grad else 0, CB=cb, BL=bl,
                )  # fmt: skip
            per_c = part.sum(dim=0)
    if scale_grad:
        grad_s = per_c.sum() if shared else per_c
        if caffe:
            # Caffe accumulates sum(y*g) and divides by s: NaN/inf when s == 0, kept on purpose.
            grad_s = grad_s * sc / sc
        grad_s = grad_s.to(scale.dtype)
    else:
        grad_s = scale.new_empty((0,))
    return (x.new_empty((0,)) if grad_x is None else grad_x.view(x.shape)), grad_s
