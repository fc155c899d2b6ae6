"""ONNX exporters of the normalization family: LRN, BatchNorm (alone and fused with its Scale),
Scale, Bias and Normalize -- the layers whose usual conversions are subtly wrong (see the
README's *Semantics* table)."""

from __future__ import annotations

import torch

from caffenorm.caffe.graph import Node
from caffenorm.export.onnx._context import ExportContext
from caffenorm.export.onnx._registry import register_exporter
from caffenorm.functional.batch_norm import global_stats
from caffenorm.functional.lrn import NormRegion
from caffenorm.nn import LRN, BatchNorm, BatchNormScale, Bias, Normalize, Scale

__all__ = ["export_batch_norm", "export_bias", "export_lrn", "export_normalize", "export_scale"]


@register_exporter(LRN)
def export_lrn(node: Node, ctx: ExportContext) -> None:
    """ACROSS_CHANNELS: ``LRN(size, alpha, beta, bias=k)`` (a window reaching all channels: ``ReduceSumSquare`` over them; alpha or beta <= 0, which onnxruntime's LRN refuses: the same over channels as WITHIN's chain with an n x 1 x 1 pool and ``Add(k)``); WITHIN_CHANNEL: ``Mul(x, x)``, zero ``Pad`` (n-1)/2, ``AveragePool`` (n x n, divisor n*n), ``Mul(alpha)``, ``Add(1)``, ``Pow(-beta)``, ``Mul(x)``.

    ACROSS: ONNX's LRN is ``x / (bias + alpha/size * sum)^beta`` over channels
    ``c - floor((size-1)/2) .. c + ceil((size-1)/2)`` clipped to the existing ones, which for Caffe's
    odd sizes is Caffe's centred window, so with ``bias = k`` it is Caffe's formula (k kept; fewer
    channels than the window included).  Caffe's running window sum, which turns a non-finite
    input into NaN for every later channel, is not reproduced (finite inputs agree).

    WITHIN: Caffe's own sub-layer chain (Power -> AVE Pooling -> Power(scale alpha, shift 1) ->
    Eltwise PROD), so k is ignored as in Caffe and the divisor is n*n everywhere: with stride 1 and
    pad (n-1)/2 every window lies inside the padded input and the padding counts.  The padding is an
    explicit ``Pad`` rather than AveragePool's ``pads`` with ``count_include_pad=1``: equal by ONNX's
    definition, but OpenCV dnn 4.x ignores ``count_include_pad`` (it divides border windows by the
    in-image count, as ONNX's default 0 would).
    """
    lrn = node.module
    assert isinstance(lrn, LRN)
    x = ctx.input(0)
    n = lrn.local_size
    p = (n - 1) // 2
    if lrn.norm_region == NormRegion.ACROSS_CHANNELS:
        channels = ctx.in_shape(0)[1] if len(ctx.in_shape(0)) > 1 else None
        if type(channels) is int and p >= channels - 1:
            # A window reaching every channel from every channel sums all of them; written as a
            # ReduceSumSquare, since runtimes size their LRN buffers by the window (onnxruntime asked
            # for 3 TB at a local_size of 2**30 + 1 and failed; found by fuzzing).
            _lrn_scale(ctx, x, ctx.reduce_sum_square(x, [1]), lrn.alpha / n, lrn.k, lrn.beta)
            return
        if lrn.alpha > 0 and lrn.beta > 0:
            ctx.op("LRN", x, top=0, size=n, alpha=float(lrn.alpha), beta=float(lrn.beta), bias=float(lrn.k))
            return
        # onnxruntime refuses an LRN node with alpha <= 0 or beta <= 0 (Caffe takes any value): the
        # same window over channels as an AveragePool of the squares on an added axis.
        sq = ctx.op("Unsqueeze", ctx.op("Mul", x, x), ctx.ints([1]))  # (N, 1, C, H, W)
        padded = ctx.op("Pad", sq, ctx.ints([0, 0, p, 0, 0, 0, 0, p, 0, 0]), ctx.const(0.0), mode="constant")
        mean = ctx.op("AveragePool", padded, kernel_shape=[n, 1, 1], strides=[1, 1, 1], count_include_pad=1)
        _lrn_scale(ctx, x, ctx.op("Squeeze", mean, ctx.ints([1])), lrn.alpha, lrn.k, lrn.beta)
        return
    sq = ctx.op("Mul", x, x)
    # Explicit zero padding, then an unpadded pool: the divisor is n*n everywhere, as Caffe's.  (The
    # same as AveragePool(pads=p, count_include_pad=1) by ONNX's definition, but readers that ignore
    # count_include_pad -- OpenCV dnn 4.x does -- compute it right too.)
    padded = ctx.op("Pad", sq, ctx.ints([0, 0, p, p, 0, 0, p, p]), ctx.const(0.0), mode="constant")
    mean = ctx.op("AveragePool", padded, kernel_shape=[n, n], strides=[1, 1], count_include_pad=1)
    # Caffe's Power shift is 1 here, whatever k says.
    _lrn_scale(ctx, x, mean, lrn.alpha, 1.0, lrn.beta)


def _lrn_scale(ctx: ExportContext, x: str, window: str, coef: float, shift: float, beta: float) -> None:
    """The current node's top: ``x * (shift + coef * window)^-beta``."""
    scaled = ctx.op("Mul", window, ctx.const(coef))
    factor = ctx.op("Pow", ctx.op("Add", scaled, ctx.const(shift)), ctx.const(-beta))
    ctx.op("Mul", x, factor, top=0)


def _batch_norm_stats(bn: BatchNorm, ctx: ExportContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Caffe's stored statistics, mean = sum/s and var = sum/s (zero when s == 0), computed by
    caffenorm's own :func:`~caffenorm.functional.batch_norm.global_stats` in float32; a layer
    that normalises with batch statistics is refused."""
    if not bn.uses_global_stats():
        why = (
            "use_global_stats: false" if bn.use_global_stats is False
            else "the net is in training mode (net.train() or phase='train')"
        )
        raise ctx.error(
            f"normalises with batch statistics ({why}); ONNX export is for inference with the stored statistics: "
            "call net.eval() (and leave use_global_stats unset or true)"
        )
    with torch.no_grad():
        return global_stats(bn.mean_sum, bn.var_sum, bn.scale_factor, torch.float32)


@register_exporter(BatchNorm, BatchNormScale)
def export_batch_norm(node: Node, ctx: ExportContext) -> None:
    """``BatchNormalization`` (inference) with mean = b0/s and var = b1/s (0 when s == 0), eps;
    a fused BatchNorm+Scale is one ``BatchNormalization`` with the Scale's gamma and beta.

    The statistics are Caffe's *sums* divided by the scale factor, and a factor of 0 gives zero
    statistics (``y = x / sqrt(eps)``), never a division by zero; eps stays inside the sqrt, as
    in ONNX's formula.  A net in training mode (batch statistics) is refused.
    """
    module = node.module
    if isinstance(module, BatchNormScale):
        bn, scale = module.batch_norm, module.scale
        gamma = scale.weight.detach()
        beta = scale.bias.detach() if scale.bias is not None else torch.zeros_like(gamma)
    else:
        assert isinstance(module, BatchNorm)
        bn = module
        gamma = torch.ones(bn.channels)
        beta = torch.zeros(bn.channels)
    mean, var = _batch_norm_stats(bn, ctx)
    ctx.op(
        "BatchNormalization",
        ctx.input(0),
        ctx.tensor(gamma, "scale"),
        ctx.tensor(beta, "bias"),
        ctx.tensor(mean, "mean"),
        ctx.tensor(var, "var"),
        top=0,
        epsilon=float(bn.eps),
    )


def _trailing(blob_dims: int, axis: int, ndim: int) -> int:
    """How many size-1 axes a blob of ``blob_dims`` axes spanning input axes ``axis..`` needs to
    broadcast over an ``ndim``-axis input (0 for a scalar blob: it applies everywhere)."""
    return 0 if blob_dims == 0 else ndim - axis % ndim - blob_dims


def _broadcastable(ctx: ExportContext, blob: torch.Tensor, axis: int, ndim: int, hint: str) -> str:
    """A learned Scale/Bias blob as an initializer shaped to broadcast over the input: Caffe's
    ``outer x blob x inner`` view is the blob followed by size-1 axes (a scalar blob, num_axes 0,
    applies everywhere and ignores axis)."""
    value = blob.detach()
    return ctx.tensor(value.reshape((*value.shape, *(1,) * _trailing(value.dim(), axis, ndim))), hint)


def _unsqueeze_trailing(ctx: ExportContext, value: str, rank: int, axis: int, ndim: int) -> str:
    """A second-bottom scale/bias of rank ``rank`` spanning input axes ``axis..``: size-1 axes
    appended so that it broadcasts over the rest."""
    trailing = _trailing(rank, axis, ndim)
    if trailing == 0:
        return value
    return ctx.op("Unsqueeze", value, ctx.ints(range(rank, rank + trailing)))  # type: ignore[no-any-return]


@register_exporter(Scale)
def export_scale(node: Node, ctx: ExportContext) -> None:
    """``Mul`` by gamma (then ``Add`` beta), the blob reshaped to broadcast over input axes
    ``axis .. axis+num_axes-1`` (any axis, num_axes 0 / -1); two bottoms: ``Mul`` by the second,
    with ``Unsqueeze`` over the trailing axes."""
    scale = node.module
    assert isinstance(scale, Scale)
    x = ctx.input(0)
    ndim = len(ctx.in_shape(0))
    if scale.scale_from_input:
        rank = len(ctx.in_shape(1))
        gamma = _unsqueeze_trailing(ctx, ctx.input(1), rank, scale.axis, ndim)
    else:
        assert scale.weight is not None
        gamma = _broadcastable(ctx, scale.weight, scale.axis, ndim, "gamma")
    if scale.bias is None:
        ctx.op("Mul", x, gamma, top=0)
        return
    y = ctx.op("Mul", x, gamma)
    ctx.op("Add", y, _broadcastable(ctx, scale.bias, scale.axis, ndim, "beta"), top=0)


@register_exporter(Bias)
def export_bias(node: Node, ctx: ExportContext) -> None:
    """``Add`` of beta reshaped to broadcast over input axes ``axis .. axis+num_axes-1``; two
    bottoms: ``Add`` of the second, with ``Unsqueeze`` over the trailing axes."""
    bias = node.module
    assert isinstance(bias, Bias)
    x = ctx.input(0)
    ndim = len(ctx.in_shape(0))
    if bias.bias_from_input:
        beta = _unsqueeze_trailing(ctx, ctx.input(1), len(ctx.in_shape(1)), bias.axis, ndim)
    else:
        assert bias.bias is not None
        beta = _broadcastable(ctx, bias.bias, bias.axis, ndim, "beta")
    ctx.op("Add", x, beta, top=0)


@register_exporter(Normalize)
def export_normalize(node: Node, ctx: ExportContext) -> None:
    """``ReduceSumSquare`` (over C per position, or C*H*W per sample), ``Add(eps)``, ``Sqrt``,
    ``Div`` (per position) or ``Mul`` by ``Reciprocal`` (across spatial), ``Mul`` by the scale
    (shared, or per channel).

    eps stays inside the sqrt, as in Caffe (a zero vector gives 0, not NaN); ONNX's
    LpNormalization has no eps and one axis, so it is not used.  The division follows Caffe's
    two branches (``caffe_mul`` by the inverse norm across spatial positions, ``caffe_div`` per
    position), as caffenorm does.
    """
    norm = node.module
    assert isinstance(norm, Normalize)
    x = ctx.input(0)
    ndim = len(ctx.in_shape(0))
    axes = list(range(1, ndim)) if norm.across_spatial else [1]
    ss = ctx.reduce_sum_square(x, axes, keepdims=True)
    nrm = ctx.op("Sqrt", ctx.op("Add", ss, ctx.const(norm.eps)))
    if norm.across_spatial:
        y = ctx.op("Mul", x, ctx.op("Reciprocal", nrm))
    else:
        y = ctx.op("Div", x, nrm)
    weight = norm.weight.detach()
    if weight.dim() == 0:
        s = ctx.tensor(weight, "scale")
    else:
        s = ctx.tensor(weight.reshape(-1, *(1,) * (ndim - 2)), "scale")
    ctx.op("Mul", y, s, top=0)

