"""ONNX exporters of the convolution family: Convolution and Deconvolution (2-D, NCHW)."""

from __future__ import annotations

from caffenorm.caffe.graph import Node
from caffenorm.caffe.layers.conv import Convolution, Deconvolution
from caffenorm.caffe.ops.pooling import conv_output_size
from caffenorm.export.onnx._context import ExportContext
from caffenorm.export.onnx._registry import register_exporter

__all__ = ["export_convolution", "export_deconvolution"]


@register_exporter(Convolution)
def export_convolution(node: Node, ctx: ExportContext) -> None:
    """``Conv`` (group, dilations, strides, symmetric pads), after a zero ``Pad`` on the bottom/right
    where Caffe's truncating output size reads beyond the padded input; one ``Conv`` per bottom,
    sharing the weights.

    Caffe's output size is ``(size + 2*pad - (dilation*(k-1)+1)) / stride + 1`` with C's
    truncating division: when the dilated kernel overhangs the padded input by less than the
    stride, Caffe still gives one output and im2col reads zeros there.  ONNX's ``Conv`` (like
    torch's) would give none, so those zeros are made explicit, as caffenorm's forward does.
    """
    conv = node.module
    assert isinstance(conv, Convolution)
    weight = ctx.tensor(conv.weight, "weight")
    bias = ctx.tensor(conv.bias, "bias") if conv.bias is not None else None
    for j in range(len(node.bottoms)):
        x = ctx.input(j)
        hw = ctx.static_spatial(j)
        extra = []
        for axis in (0, 1):
            k, s, p, d = conv.kernel_size[axis], conv.stride[axis], conv.pad[axis], conv.dilation[axis]
            out = conv_output_size(hw[axis], k, s, p, d)
            extra.append(max(0, (out - 1) * s + d * (k - 1) + 1 - (hw[axis] + 2 * p)))
        if any(extra):
            # Pad takes [x1_begin, x2_begin, ..., x1_end, x2_end, ...] over all four axes.
            x = ctx.op("Pad", x, ctx.ints([0, 0, 0, 0, 0, 0, extra[0], extra[1]]), ctx.const(0.0), mode="constant")
        inputs = [x, weight] + ([bias] if bias is not None else [])
        ctx.op(
            "Conv",
            *inputs,
            top=j,
            kernel_shape=list(conv.kernel_size),
            strides=list(conv.stride),
            pads=[conv.pad[0], conv.pad[1], conv.pad[0], conv.pad[1]],
            dilations=list(conv.dilation),
            group=conv.group,
        )


@register_exporter(Deconvolution)
def export_deconvolution(node: Node, ctx: ExportContext) -> None:
    """``ConvTranspose`` (group, dilations, strides, symmetric pads, no output padding); Caffe's
    weight layout ``(C, num_output/group, kh, kw)`` is ONNX's; one node per bottom.

    Output size ``stride*(size-1) + dilation*(k-1) + 1 - 2*pad``: ONNX's formula with
    ``output_padding = 0``.
    """
    deconv = node.module
    assert isinstance(deconv, Deconvolution)
    weight = ctx.tensor(deconv.weight, "weight")
    bias = ctx.tensor(deconv.bias, "bias") if deconv.bias is not None else None
    for j in range(len(node.bottoms)):
        inputs = [ctx.input(j), weight] + ([bias] if bias is not None else [])
        ctx.op(
            "ConvTranspose",
            *inputs,
            top=j,
            kernel_shape=list(deconv.kernel_size),
            strides=list(deconv.stride),
            pads=[deconv.pad[0], deconv.pad[1], deconv.pad[0], deconv.pad[1]],
            dilations=list(deconv.dilation),
            group=deconv.group,
        )
