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

__all__ = ["normalize"]


class _NormalizeFunction(torch.autograd.Function):
    """Saves the input and the norm (one value per sample or per position), nothing else."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, s: Tensor, across_spatial: bool, eps: float, caffe_backward: bool) -> Tensor:
        dtype = compute_dtype(x)
        n, c = x.shape[0], x.shape[1]
        x3 = x.to(dtype).reshape(n, c, -1)
        sc = s.to(dtype)
        sum_dims = (1, 2) if across_spatial else (1,)
        norm = torch.sqrt((x3 * x3).sum(dim=sum_dims, keepdim=True).add_(eps))
        # Caffe multiplies by 1/norm in the across_spatial branch and divides in the other.
        y = x3 * torch.reciprocal(norm) if across_spatial else x3 / norm
        y.mul_(sc if sc.dim() == 0 else sc.view(1, c, 1))
        ctx.save_for_backward(x, s, norm)
        ctx.config = (across_spatial, caffe_backward)
        return y.reshape(x.shape).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        x, s, norm = ctx.saved_tensors
        across_spatial, caffe_backward = ctx.config
        dtype = norm.dtype
        n, c = x.shape[0], x.shape[1]
        x3 = x.to(dtype).reshape(n, c, -1)
        g3 = g.to(dtype).reshape(n, c, -1)
        sc = s.to(dtype)
        shared = sc.dim() == 0
        s_view = sc if shared else sc.view(1, c, 1)

        gx = g3 * x3
        # Reduce g*x over positions first (per sample and channel, or per position): the dot
        # products and the scale gradient are then small contractions of this one tensor.
        per_chan = gx.sum(dim=2) if across_spatial else gx  # (N, C) or (N, C, L)
        grad_x = grad_s = None
        if ctx.needs_input_grad[0]:
            if caffe_backward or shared:
                dot = per_chan.sum(dim=1)  # <g, x>
                if shared and not caffe_backward:
                    dot = dot * sc
            else:
                dot = torch.einsum("c,nc...->n...", sc, per_chan)  # <s*g, x>
            dot = dot.reshape(n, 1, -1) if not across_spatial else dot.reshape(n, 1, 1)
            coeff = dot / (norm * norm)
            if caffe_backward:
                grad_x = torch.addcmul(g3, x3, coeff, value=-1.0).mul_(s_view).div_(norm)
            else:
                grad_x = torch.addcmul(g3 * s_view, x3, coeff, value=-1.0).div_(norm)
            grad_x = grad_x.reshape(x.shape).to(x.dtype)
        if ctx.needs_input_grad[1]:
            inv = torch.reciprocal(norm).reshape(n, -1)  # (N, 1) or (N, L)
            if across_spatial:
                per_c = (per_chan * inv).sum(dim=0)
            else:
                per_c = torch.einsum("ncl,nl->c", per_chan, inv)
            grad_s = per_c.sum() if shared else per_c
            if caffe_backward:
                # Caffe accumulates sum(y*g) and divides by s: NaN/inf when s == 0, kept on purpose.
                grad_s = grad_s * sc / sc
            grad_s = grad_s.to(s.dtype)
        return grad_x, grad_s, None, None, None


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
