"""ONNX exporter of Caffe's Pooling (``pooling_layer.cpp``), the window geometry of
:func:`caffenorm.caffe.ops.pooling.caffe_pool2d`.

Caffe's windows are not ONNX's: the output size rounds up (``ceil``, then drops a last window
that starts in the bottom/right padding, on both axes as soon as either is padded), and the AVE
divisor of a border window counts the padding but not what lies beyond it.  Everything is
resolved here from the static H x W, so the ONNX graph never relies on ``ceil_mode`` (where ONNX
tools disagree about the output size): an explicit ``Pad`` makes the padded input reach exactly
where the last window ends, a floor-mode pooling takes the windows, and, for
AVE windows that overhang the padded input, a constant map multiplies by ``kh*kw / pool_size``.
"""

from __future__ import annotations

import numpy as np

from caffenorm.caffe.graph import Node
from caffenorm.caffe.layers.pooling import Pooling
from caffenorm.caffe.ops.pooling import _FLT_MAX, _ave_divisor, _fits, _inside, pooled_size
from caffenorm.export.onnx._context import ExportContext
from caffenorm.export.onnx._registry import register_exporter

__all__ = ["export_pooling"]


@register_exporter(Pooling)
def export_pooling(node: Node, ctx: ExportContext) -> None:
    """MAX: ``MaxPool`` with Caffe's ceil-rounded size as explicit end pads; AVE: zero ``Pad`` (Caffe's
    pad, and up to the last window's end), ``AveragePool``, times a constant border-divisor map where
    Caffe's divisor is not kh*kw; global: ``GlobalMaxPool`` / ``GlobalAveragePool``.

    The output size is Caffe's (ceil, or floor with ``round_mode: FLOOR``; the drop rule on both
    axes when either is padded).  MAX takes the maximum over the window clipped to the image (the
    padding never wins); a window wholly outside the image (ceil mode without padding, stride >
    kernel) gives -FLT_MAX as in Caffe.  AVE divides by Caffe's ``pool_size`` (padding counted, the
    overhang beyond it not).  The MAX mask top is refused.
    """
    pool = node.module
    assert isinstance(pool, Pooling)
    if pool.top_mask:
        raise ctx.error(
            "the second top (MAX pooling's argmax mask) is not exported: ONNX's MaxPool indices count over the "
            "whole tensor and break ties differently; drop the mask top (only Unpooling layers read it)"
        )
    x = ctx.input(0)
    H, W = ctx.static_spatial(0)
    if pool.global_pooling:
        # Caffe: kernel H x W, stride 1, pad 0 -> one window, the whole plane (divisor H*W).
        ctx.op("GlobalMaxPool" if pool.pool == "MAX" else "GlobalAveragePool", x, top=0)
        return
    assert pool.kernel_size is not None
    kernel, stride, pad, hw = pool.kernel_size, pool.stride, pool.pad, (H, W)
    any_pad = pad != (0, 0)
    out = tuple(
        pooled_size(n, k, s, p, pool.round_mode, any_pad=any_pad) for n, k, s, p in zip(hw, kernel, stride, pad)
    )
    # Windows that start beyond the padded input read nothing (possible when the stride exceeds
    # the kernel).  Padding the input out to them would cost (stride x outputs)^2 values per
    # channel (a stride of 4096 on a 16 x 16 input took gigabytes, found by fuzzing), so only the
    # windows that start inside it are pooled (``inside``) and the rest are appended to the
    # pooled output as constants: -FLT_MAX for MAX; for AVE a zero sum, which the divisor map
    # below turns into Caffe's 0 / pool_size (-0, +0 or NaN).
    inside = _inside(hw, out, stride, pad)
    tail = [o - i for o, i in zip(out, inside)]
    # Where the last of those windows ends, relative to the unpadded input: the input is padded up to
    # there.  Input beyond it, which no window reads, needs no crop: a floor-mode pooling of the
    # padded input gives exactly ``inside`` windows either way (Caffe's ceil count, after its drop
    # rule, never exceeds the floor count of windows that start before that end).
    ends = [(o - 1) * s + k - p for o, s, k, p in zip(inside, stride, kernel, pad)]
    after = [max(0, e - n) for e, n in zip(ends, hw)]

    def append_tail(y: str, value: float, **top: int) -> str:
        return ctx.op("Pad", y, ctx.ints([0, 0, 0, 0, 0, 0, tail[0], tail[1]]), ctx.const(value), mode="constant",
                      **top)

    if pool.pool == "MAX":
        # A window that starts beyond the image (possible only without padding) holds no value.
        empty = any((i - 1) * s - p >= n for i, s, p, n in zip(inside, stride, pad, hw))
        if not empty:
            # MaxPool's pads never win a maximum; asymmetric end pads give Caffe's window count.
            pads = [pad[0], pad[1], after[0], after[1]]
            if not any(tail):
                ctx.op("MaxPool", x, top=0, kernel_shape=list(kernel), strides=list(stride), pads=pads)
                return
            y = ctx.op("MaxPool", x, kernel_shape=list(kernel), strides=list(stride), pads=pads)
            append_tail(y, -_FLT_MAX, top=0)  # Caffe's running max starts at -FLT_MAX
            return
        padded = ctx.op("Pad", x, ctx.ints([0, 0, pad[0], pad[1], 0, 0, after[0], after[1]]),
                        ctx.const(-np.inf), mode="constant")
        y = ctx.op("MaxPool", padded, kernel_shape=list(kernel), strides=list(stride))
        if any(tail):
            y = append_tail(y, -np.inf)
        ctx.op("Max", y, ctx.const(-_FLT_MAX), top=0)  # Caffe's running max starts at -FLT_MAX
        return

    fits = _fits(hw, out, kernel, stride, pad)
    # Padding as an explicit Pad (zeros): a pooling without pads then has nothing to exclude, so
    # its divisor is kh*kw whatever a reader does with count_include_pad (OpenCV dnn 4.x ignores
    # it), and pads >= kernel/2, which some readers refuse, are no problem.
    if any(pad) or any(after):
        x = ctx.op("Pad", x, ctx.ints([0, 0, pad[0], pad[1], 0, 0, after[0], after[1]]), ctx.const(0.0),
                   mode="constant")
    if fits:
        # Every window lies inside the padded input: Caffe's divisor is kh*kw everywhere.
        ctx.op("AveragePool", x, top=0, kernel_shape=list(kernel), strides=list(stride), count_include_pad=1)
        return
    y = ctx.op("AveragePool", x, kernel_shape=list(kernel), strides=list(stride), count_include_pad=1)
    if any(tail):
        y = append_tail(y, 0.0)
    div = np.outer(*(_ave_divisor(o, n, k, s, p).numpy() for o, n, k, s, p in zip(out, hw, kernel, stride, pad)))
    # kh*kw / pool_size in float64, rounded once to float32 (as caffe_pool2d): inf where pool_size
    # is 0 (0 * inf = NaN, Caffe's 0/0), negative where it is negative (Caffe's 0/c = -0).
    with np.errstate(divide="ignore"):
        correction = (float(kernel[0] * kernel[1]) / div.astype(np.float64)).astype(np.float32)
    ctx.op("Mul", y, ctx.tensor(correction, "border_divisor"), top=0)
