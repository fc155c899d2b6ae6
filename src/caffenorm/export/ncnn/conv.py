"""ncnn emitters of the convolution family: Convolution and Deconvolution (plain and grouped).

ncnn's weight layouts (``src/layer/convolution*.cpp``, ``deconvolution*.cpp``): Convolution's
``[kw, kh, in/group, out/group, group]`` is Caffe's ``(out, in/group, kh, kw)`` blob as it lies in
memory; Deconvolution's is ``(group, out/group, in/group, kh, kw)`` where Caffe's blob is
``(in, out/group, kh, kw)``, so the two channel axes are swapped within each group.  Both read the
weights with a 4-byte type tag (0: float32) before them, the bias without.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np

from caffenorm.caffe.layers.conv import Convolution, Deconvolution
from caffenorm.caffe.ops.pooling import conv_output_size, deconv_output_size
from caffenorm.export.ncnn._model import Blob, EmitContext, ParamValue, Weight, float32_array
from caffenorm.export.ncnn._registry import register_emitter

__all__ = ["emit_convolution", "emit_deconvolution"]

# ncnn Convolution / ConvolutionDepthWise / Deconvolution / DeconvolutionDepthWise
CONV_NUM_OUTPUT: Final = 0
CONV_KERNEL_W: Final = 1
CONV_DILATION_W: Final = 2
CONV_STRIDE_W: Final = 3
CONV_PAD_LEFT: Final = 4
CONV_BIAS_TERM: Final = 5
CONV_WEIGHT_DATA_SIZE: Final = 6
CONV_GROUP: Final = 7  # the DepthWise variants only (any group, not just group == channels)
CONV_KERNEL_H: Final = 11
CONV_DILATION_H: Final = 12
CONV_STRIDE_H: Final = 13
CONV_PAD_TOP: Final = 14
CONV_PAD_RIGHT: Final = 15
CONV_PAD_BOTTOM: Final = 16


def _geometry(module: Convolution | Deconvolution, pad_extra: tuple[int, int] = (0, 0)) -> dict[int, ParamValue]:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = module.kernel_size, module.stride, module.pad, module.dilation
    params: dict[int, ParamValue] = {
        CONV_NUM_OUTPUT: module.num_output,
        CONV_KERNEL_W: kw,
        CONV_KERNEL_H: kh,
        CONV_DILATION_W: dw,
        CONV_DILATION_H: dh,
        CONV_STRIDE_W: sw,
        CONV_STRIDE_H: sh,
        CONV_PAD_LEFT: pw,
        CONV_PAD_TOP: ph,
        CONV_PAD_RIGHT: pw + pad_extra[1],
        CONV_PAD_BOTTOM: ph + pad_extra[0],
    }
    return params


def _weights(weight: np.ndarray, bias: np.ndarray | None) -> list[Weight]:
    out = [Weight(np.ascontiguousarray(weight).reshape(-1), tagged=True)]
    if bias is not None:
        out.append(Weight(bias))
    return out


def _emit(
    ctx: EmitContext,
    module: Convolution | Deconvolution,
    x: Blob,
    shape: tuple[int, ...],
    weight: np.ndarray,
    kind: str,
    params: dict[int, ParamValue],
    suffix: str | None,
) -> Blob:
    """One Caffe convolution of ``x``: the ncnn layer ``kind``, or its DepthWise variant (any
    group, depthwise or not) when ``group > 1``; ``weight`` in ncnn's layout."""
    bias = None if module.bias is None else float32_array(module.bias)
    params[CONV_BIAS_TERM] = int(bias is not None)
    params[CONV_WEIGHT_DATA_SIZE] = weight.size
    if module.group != 1:
        params[CONV_GROUP] = module.group
        kind += "DepthWise"
    return ctx.layer(kind, [x], params, _weights(weight, bias), shape=shape, suffix=suffix)


@register_emitter(Convolution)
def emit_convolution(ctx: EmitContext, module: Convolution, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Convolution (ConvolutionDepthWise, 7=group, when group > 1): 0=num_output, 1/11=kernel w/h, 2/12=dilation, 3/13=stride, 4/14=pad left/top, 15/16=pad right/bottom (Caffe's pad plus the zeros its truncated output size reads), 5=bias_term, 6=weight_data_size."""
    group = module.group
    weight = float32_array(module.weight).reshape(group, module.num_output // group, *module.weight.shape[1:])
    tops = []
    for k, (x, shape) in enumerate(zip(bottoms, ctx.out_shapes)):
        _, height, width = x.shape
        extra = []
        for size, kernel, stride, pad, dilation in zip(
            (height, width), module.kernel_size, module.stride, module.pad, module.dilation
        ):
            out = conv_output_size(size, kernel, stride, pad, dilation)
            # Caffe divides with truncation toward zero: a dilated kernel overhanging the padded
            # input by less than the stride still gives one output, over zeros (im2col); ncnn
            # floors, so pad those zeros explicitly at the bottom/right.
            extra.append(max(0, (out - 1) * stride + dilation * (kernel - 1) + 1 - (size + 2 * pad)))
        params = _geometry(module, (extra[0], extra[1]))
        tops.append(_emit(ctx, module, x, shape, weight, "Convolution", params, None if k == 0 else str(k)))
    return tops


@register_emitter(Deconvolution)
def emit_deconvolution(ctx: EmitContext, module: Deconvolution, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Deconvolution (DeconvolutionDepthWise, 7=group, when group > 1): Convolution's ids 0-6 and 11-16; the weight's in/out channel axes swapped per group."""
    group = module.group
    blob = float32_array(module.weight).reshape(module.weight.shape)
    c_in, out_per_group, kh, kw = blob.shape
    # Caffe (in, out/group, kh, kw) -> ncnn (group, out/group, in/group, kh, kw)
    weight = np.ascontiguousarray(blob.reshape(group, c_in // group, out_per_group, kh, kw).transpose(0, 2, 1, 3, 4))
    tops = []
    for k, (x, shape) in enumerate(zip(bottoms, ctx.out_shapes)):
        _, height, width = x.shape
        for size, kernel, stride, pad, dilation, out in zip(
            (height, width), module.kernel_size, module.stride, module.pad, module.dilation, shape[1:]
        ):
            if deconv_output_size(size, kernel, stride, pad, dilation) != out:
                raise ctx.refuse(f"internal: deconvolution output {shape} does not follow Caffe's rule")
        tops.append(_emit(ctx, module, x, shape, weight, "Deconvolution", _geometry(module), None if k == 0 else str(k)))
    return tops
