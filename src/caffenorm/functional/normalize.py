"""The ParseNet / SSD ``Normalize`` layer (L2 normalisation with a learned scale).

Forward (weiliu89/caffe ssd, normalize_layer.cpp), with the sum over C*H*W per sample when
``across_spatial`` and over C per position otherwise:

    norm = sqrt(sum x**2 + eps)          (eps inside the sqrt)
    y    = s_c * x / norm

True gradient, with ``<a, b>`` the same region's sum:

    dx = s * g / norm - x * <s*g, x> / norm**3          ds = sum(g * x / norm)

Caffe's own backward (``caffe_backward=True``) uses ``<g, x>`` instead of ``<s*g, x>``, which is
only right when all the per-channel scales are equal, and divides the scale gradient by ``s``:

    dx = s * (g - x * <g, x> / norm**2) / norm      ds = sum(y * g) / s
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from caffenorm.errors import InputShapeError
from caffenorm.functional._checks import check_ndim, check_real, compute_dtype
from caffenorm.functional._chunks import batch_slices

__all__ = ["normalize"]


class _NormalizeFunction(torch.autograd.Function):
    """Saves the input and the norm (one value per sample or per position), nothing else."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, s: Tensor, across_spatial: bool, eps: float, caffe_backward: bool) -> Tensor:
        dtype = compute_dtype(x)
        n, c = x.shape[0], x.shape[1]
        x3 = x.reshape(n, c, -1)
        sum_dims = (1, 2) if across_spatial else (1,)
        norm = torch.empty((n, 1, 1 if across_spatial else x3.shape[2]), dtype=dtype, device=x.device)
        s_view = s.to(dtype) if s.dim() == 0 else s.to(dtype).view(1, c, 1)
        y3 = torch.empty_like(x3)
        for rows in batch_slices(x3):
            xc = x3[rows].to(dtype)
            nrm = torch.sqrt(torch.sum(xc * xc, dim=sum_dims, keepdim=True).add_(eps), out=norm[rows])
            # Caffe multiplies by 1/norm in the across_spatial branch and divides in the other.
            yc = xc * torch.reciprocal(nrm) if across_spatial else xc / nrm
            y3[rows] = yc.mul_(s_view)
        ctx.save_for_backward(x, s, norm)
        ctx.config = (across_spatial, caffe_backward)
        return y3.view(x.shape)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        x, s, norm = ctx.saved_tensors
        across_spatial, caffe_backward = ctx.config
        want_x, want_s = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype = norm.dtype
        n, c = x.shape[0], x.shape[1]
        x3, g3 = x.reshape(n, c, -1), g.reshape(n, c, -1)
        sc = s.to(dtype)
        shared = sc.dim() == 0
        s_view = sc if shared else sc.view(1, c, 1)
        grad_x = torch.empty_like(x3) if want_x else None
        per_c = torch.zeros(c, dtype=dtype, device=x.device)  # sum of g*x/norm per channel
        for rows in batch_slices(x3):
            xc, gc, nrm = x3[rows].to(dtype), g3[rows].to(dtype), norm[rows]
            gx = gc * xc
            # Reduce g*x over positions first (per sample and channel) when the norm is per sample:
            # the dot products and the scale gradient are then small contractions.
            gx_red = gx.sum(dim=2, keepdim=True) if across_spatial else gx  # (n, C, 1) or (n, C, L)
            if want_s:
                per_c += torch.einsum("ncl,nl->c", gx_red, torch.reciprocal(nrm).squeeze(1))
            if want_x:
                if caffe_backward or shared:
                    dot = gx_red.sum(dim=1, keepdim=True)  # <g, x>
                    if shared and not caffe_backward:
                        dot = dot * sc
                else:
                    dot = torch.einsum("c,ncl->nl", sc, gx_red).unsqueeze(1)  # <s*g, x>
                coeff = dot.div_(nrm * nrm)
                if caffe_backward:
                    dxc = torch.addcmul(gc, xc, coeff, value=-1.0, out=gx).mul_(s_view)
                else:
                    dxc = torch.mul(gc, s_view, out=gx).addcmul_(xc, coeff, value=-1.0)
                grad_x[rows] = dxc.div_(nrm)
        grad_s = None
        if want_s:
            grad_s = per_c.sum() if shared else per_c
            if caffe_backward:
                # Caffe accumulates sum(y*g) and divides by s: NaN/inf when s == 0, kept on purpose.
                grad_s = grad_s * sc / sc
            grad_s = grad_s.to(s.dtype)
        return (None if grad_x is None else grad_x.view(x.shape)), grad_s, None, None, None


def normalize(
    input: Tensor,
    scale: Tensor,
    across_spatial: bool = True,
    eps: float = 1e-10,
    caffe_backward: bool = False,
) -> Tensor:
    """SSD Normalize on an ``(N, C[, H[, W]])`` tensor.  See :class:`caffenorm.Normalize`.

    ``scale`` has shape ``()`` (channel shared) or ``(C,)``.
    """
    check_ndim("Normalize", input, (2, 3, 4), "2 to 4 dimensions (N, C[, H[, W]]), as Caffe's Normalize")
    compute_dtype(input)
    eps = check_real("Normalize", "eps", eps, minimum=0.0)
    channels = input.shape[1]
    if scale.dim() > 1 or (scale.dim() == 1 and scale.shape[0] != channels):
        raise InputShapeError(
            f"Normalize: scale of shape {tuple(scale.shape)} does not fit an input with {channels} channels "
            f"(shape {tuple(input.shape)}); expected () when channel_shared, ({channels},) otherwise"
        )
    return _NormalizeFunction.apply(input, scale, bool(across_spatial), eps, bool(caffe_backward))
