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

The math lives in two ``torch.library`` custom ops, ``caffenorm::normalize`` (returns ``y`` and
``norm``) and ``caffenorm::normalize_backward``, with fake kernels and an autograd formula that calls
the backward op, so ``torch.export``, ``torch.compile(fullgraph=True)`` and ``torch.jit.trace`` keep
each as one node running the eager kernels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from caffenorm import kernels as _kernels
from caffenorm.errors import InputShapeError
from caffenorm.functional._checks import check_ndim, check_real, compute_dtype
from caffenorm.functional._chunks import batch_slices

__all__ = ["normalize"]


def _check_eps(eps: float) -> float:
    """Caffe's Normalize takes any ``eps >= 0`` (it is added inside the sqrt)."""
    return check_real("Normalize", "eps", eps, minimum=0.0)


def _norm_shape(x: Tensor, across_spatial: bool) -> tuple[int, int, int]:
    """Shape of the saved norm: one value per sample ``(N, 1, 1)`` or per position ``(N, 1, H*W)``."""
    n = x.shape[0]
    spatial = 1
    for d in x.shape[2:]:
        spatial = spatial * d
    return (n, 1, 1 if across_spatial else spatial)


# The schemas are written out rather than inferred from the type hints: inference of string
# annotations (``from __future__ import annotations``) is not available in every torch >= 2.4.
@torch.library.custom_op(
    "caffenorm::normalize",
    mutates_args=(),
    schema="(Tensor x, Tensor scale, bool across_spatial, float eps, bool caffe_backward) -> (Tensor, Tensor)",
)
def _normalize_op(
    x: Tensor, scale: Tensor, across_spatial: bool, eps: float, caffe_backward: bool
) -> tuple[Tensor, Tensor]:
    """SSD Normalize forward (``normalize_layer.cpp``): returns ``y = s_c * x / norm`` and ``norm``,
    with ``norm = sqrt(sum x**2 + eps)`` over C*H*W per sample (``across_spatial``) or over C per
    position, shape ``(N, 1, 1)`` or ``(N, 1, H*W)``, in the compute dtype (float32 for fp16/bf16);
    ``y`` is in the input dtype.  ``caffe_backward`` only selects the backward formula; it is an
    argument here so that the autograd formula registered for this op can see it.
    """
    _check_eps(eps)  # also here: direct op calls and compiled callers skip the public function's check
    if _kernels.available(x):  # CUDA + triton: the fused kernels (caffenorm.kernels.normalize_triton)
        return _kernels.normalize(x, scale, across_spatial, eps)
    dtype = compute_dtype(x)
    n, c = x.shape[0], x.shape[1]
    x3 = x.reshape(n, c, -1)
    sum_dims = (1, 2) if across_spatial else (1,)
    norm = torch.empty(_norm_shape(x, across_spatial), dtype=dtype, device=x.device)
    s_view = scale.to(dtype) if scale.dim() == 0 else scale.to(dtype).view(1, c, 1)
    y3 = torch.empty_like(x3)
    for rows in batch_slices(x3):
        xc = x3[rows].to(dtype)
        nrm = torch.sqrt(torch.sum(xc * xc, dim=sum_dims, keepdim=True).add_(eps), out=norm[rows])
        # Caffe multiplies by 1/norm in the across_spatial branch and divides in the other.
        yc = xc * torch.reciprocal(nrm) if across_spatial else xc / nrm
        y3[rows] = yc.mul_(s_view)
    return y3.view(x.shape), norm


@_normalize_op.register_fake
def _normalize_fake(
    x: Tensor, scale: Tensor, across_spatial: bool, eps: float, caffe_backward: bool
) -> tuple[Tensor, Tensor]:
    # Same allocations as the real kernel (strides included: empty_like of the (N, C, L) view).
    y = torch.empty_like(x.reshape(x.shape[0], x.shape[1], -1)).view(x.shape)
    return y, x.new_empty(_norm_shape(x, across_spatial), dtype=compute_dtype(x))


@torch.library.custom_op(
    "caffenorm::normalize_backward",
    mutates_args=(),
    schema="(Tensor grad, Tensor x, Tensor scale, Tensor norm, bool across_spatial, bool caffe_backward, "
    "bool input_grad, bool scale_grad) -> (Tensor, Tensor)",
)
def _normalize_backward_op(
    grad: Tensor,
    x: Tensor,
    scale: Tensor,
    norm: Tensor,
    across_spatial: bool,
    caffe_backward: bool,
    input_grad: bool,
    scale_grad: bool,
) -> tuple[Tensor, Tensor]:
    """SSD Normalize backward from ``x``, ``scale`` and the forward's ``norm``; ``<a, b>`` sums over
    the forward's region:

        true:   dx = s * g / norm - x * <s*g, x> / norm**3        ds = sum(g * x / norm)
        Caffe:  dx = s * (g - x * <g, x> / norm**2) / norm        ds = sum(y * g) / s

    (``caffe_backward`` selects Caffe's ``Backward_cpu``, NaN scale gradient at ``s == 0`` included.)
    Returns ``(dx, dscale)``; an output whose flag (``input_grad``/``scale_grad``) is False is not
    computed and comes back as an empty tensor of shape ``(0,)`` (custom ops cannot return None).
    """
    if _kernels.available(x):  # CUDA + triton: the fused kernels (caffenorm.kernels.normalize_triton)
        return _kernels.normalize_backward(grad, x, scale, norm, across_spatial, caffe_backward, input_grad, scale_grad)
    want_x, want_s = input_grad, scale_grad
    dtype = norm.dtype
    n, c = x.shape[0], x.shape[1]
    x3, g3 = x.reshape(n, c, -1), grad.reshape(n, c, -1)
    sc = scale.to(dtype)
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
    if want_s:
        grad_s = per_c.sum() if shared else per_c
        if caffe_backward:
            # Caffe accumulates sum(y*g) and divides by s: NaN/inf when s == 0, kept on purpose.
            grad_s = grad_s * sc / sc
        grad_s = grad_s.to(scale.dtype)
    else:
        grad_s = scale.new_empty((0,))
    return (x.new_empty((0,)) if grad_x is None else grad_x.view(x.shape)), grad_s


@_normalize_backward_op.register_fake
def _normalize_backward_fake(
    grad: Tensor,
    x: Tensor,
    scale: Tensor,
    norm: Tensor,
    across_spatial: bool,
    caffe_backward: bool,
    input_grad: bool,
    scale_grad: bool,
) -> tuple[Tensor, Tensor]:
    grad_x = torch.empty_like(x.reshape(x.shape[0], x.shape[1], -1)).view(x.shape) if input_grad else x.new_empty((0,))
    grad_s = torch.empty_like(scale, memory_format=torch.contiguous_format) if scale_grad else scale.new_empty((0,))
    return grad_x, grad_s


def _normalize_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    """Save the input, the scale and the norm (one value per sample or per position), nothing else."""
    x, scale, across_spatial, _, caffe_backward = inputs
    _, norm = output
    # The norm is an implementation detail: no gradient flows into it, and autograd need not build
    # a zero gradient for it (the public function never returns it).
    ctx.mark_non_differentiable(norm)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, scale, norm)
    ctx.config = (across_spatial, caffe_backward)


def _normalize_autograd_backward(
    ctx: Any, g: Tensor | None, _g_norm: Tensor | None
) -> tuple[Tensor | None, Tensor | None, None, None, None]:
    want_x, want_s = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if g is None or not (want_x or want_s):
        return None, None, None, None, None
    x, scale, norm = ctx.saved_tensors
    # A custom op call, not inline math, so traced backward graphs keep it as one node.
    grad_x, grad_s = torch.ops.caffenorm.normalize_backward(g, x, scale, norm, *ctx.config, want_x, want_s)
    return (grad_x if want_x else None), (grad_s if want_s else None), None, None, None


_normalize_op.register_autograd(_normalize_autograd_backward, setup_context=_normalize_setup_context)


def normalize(
    input: Tensor,
    scale: Tensor,
    across_spatial: bool = True,
    eps: float = 1e-10,
    caffe_backward: bool = False,
) -> Tensor:
    """SSD Normalize on an ``(N, C[, H[, W]])`` tensor.  See :class:`caffenorm.Normalize`.

    ``scale`` has shape ``()`` (channel shared) or ``(C,)``.  Validates ranks and shapes, then calls
    ``caffenorm::normalize``.
    """
    check_ndim("Normalize", input, (2, 3, 4), "2 to 4 dimensions (N, C[, H[, W]]), as Caffe's Normalize")
    compute_dtype(input)
    # Under torch.compile a module's float attributes may arrive as symbolic values (dynamo makes
    # them dynamic when a second instance recompiles the same forward), which check_real cannot
    # test without a graph break; the op's kernel checks eps again at run time.
    if not torch.compiler.is_compiling():
        eps = _check_eps(eps)
    channels = input.shape[1]
    if scale.dim() > 1 or (scale.dim() == 1 and scale.shape[0] != channels):
        raise InputShapeError(
            f"Normalize: scale of shape {tuple(scale.shape)} does not fit an input with {channels} channels "
            f"(shape {tuple(input.shape)}); expected () when channel_shared, ({channels},) otherwise"
        )
    # Everything above looks only at Python values, ranks, shapes and dtypes, never at tensor data, so
    # it traces under torch.compile / torch.export; the op returns (y, norm), norm is for backward.
    return torch.ops.caffenorm.normalize(input, scale, bool(across_spatial), eps, bool(caffe_backward))[0]
