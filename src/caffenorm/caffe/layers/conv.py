"""Converters of the convolution family: Convolution and Deconvolution (2-D, NCHW).

Caffe's facts (``base_conv_layer.cpp``, ``conv_layer.cpp``, ``deconv_layer.cpp``, ``im2col.cpp``):

* geometry fields and their checks: :func:`~caffenorm.caffe.ops.pooling.resolve_convolution_param`;
* blobs: weight ``(num_output, C/group, kh, kw)`` for Convolution and ``(C, num_output/group, kh, kw)``
  for Deconvolution (Caffe swaps the channel roles), then bias ``(num_output,)`` if ``bias_term``;
  both initialised from ``weight_filler`` / ``bias_filler``, whose default is constant 0;
* several bottoms are allowed, one top each, all with the same shape and the same weights;
* Convolution's output size truncates toward zero (:func:`conv_output_size`): when the dilated
  kernel overhangs the padded input by less than ``stride`` Caffe still gives one output, reading
  zeros beyond the input (im2col), where ``F.conv2d`` refuses.  We pad those zeros explicitly.
* Deconvolution's output is ``stride*(in-1) + dilation*(k-1) + 1 - 2*pad``, which is
  ``F.conv_transpose2d``'s with ``output_padding=0``.

``engine`` (CAFFE / CUDNN) and ``force_nd_im2col`` do not change the result and are ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caffenorm.caffe.ops.pooling import conv_output_size, deconv_output_size, resolve_convolution_param
from caffenorm.caffe.registry import BuildContext, register_layer
from caffenorm.caffe.spec import LayerSpec
from caffenorm.errors import CaffeNormError, InputShapeError, LayerConfigError, UnsupportedLayerError
from caffenorm.nn._base import CaffeLayer

__all__ = ["Convolution", "Deconvolution", "convert_convolution", "convert_deconvolution"]

Pair = tuple[int, int]


class _ConvBase(CaffeLayer):
    """What Convolution and Deconvolution share: settings, blobs and the bottom checks."""

    transposed = False
    blob_attrs = ("weight", "bias")

    def __init__(
        self,
        channels: int,
        num_output: int,
        kernel_size: Pair,
        stride: Pair = (1, 1),
        pad: Pair = (0, 0),
        dilation: Pair = (1, 1),
        group: int = 1,
        bias_term: bool = True,
    ) -> None:
        super().__init__()
        if min(channels, num_output, group, *kernel_size, *stride, *dilation) < 1 or min(pad) < 0:
            raise LayerConfigError(
                f"{self.caffe_type}: channels={channels}, num_output={num_output}, group={group}, kernel_size="
                f"{kernel_size}, stride={stride}, dilation={dilation} must be >= 1 and pad={pad} >= 0"
            )
        if channels % group or num_output % group:
            raise LayerConfigError(
                f"{self.caffe_type}: channels={channels} and num_output={num_output} must be multiples of group={group}"
            )
        self.channels, self.num_output, self.group = int(channels), int(num_output), int(group)
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.pad, self.dilation = tuple(pad), tuple(dilation)
        self.bias_term = bool(bias_term)
        if self.transposed:
            shape = (self.channels, self.num_output // self.group, *self.kernel_size)
        else:
            shape = (self.num_output, self.channels // self.group, *self.kernel_size)
        self.weight = nn.Parameter(torch.zeros(shape))
        self.bias = nn.Parameter(torch.zeros(self.num_output)) if self.bias_term else None

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, num_output={self.num_output}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, pad={self.pad}, dilation={self.dilation}, group={self.group}, "
            f"bias_term={self.bias_term}"
        )

    def _check(self, bottoms: tuple[Tensor, ...]) -> None:
        """Caffe's ``BaseConvolutionLayer::Reshape`` checks: 4 axes, the set-up channel count, and
        every bottom shaped like the first."""
        if not bottoms:
            raise InputShapeError(f"{self.caffe_type}: needs at least one bottom")
        first = tuple(bottoms[0].shape)
        for i, x in enumerate(bottoms):
            if x.dim() != 4:
                raise InputShapeError(
                    f"{self.caffe_type}: bottom {i} has shape {tuple(x.shape)}; expected 4 axes (N, C, H, W)"
                )
            if x.shape[1] != self.channels:
                raise InputShapeError(
                    f"{self.caffe_type}: bottom {i} has {x.shape[1]} channels (shape {tuple(x.shape)}); the layer "
                    f"was set up for {self.channels} (its weight has shape {tuple(self.weight.shape)})"
                )
            if tuple(x.shape) != first:
                raise InputShapeError(
                    f"{self.caffe_type}: bottom {i} has shape {tuple(x.shape)}, bottom 0 has {first}; Caffe "
                    "requires every bottom of one layer to have the same shape"
                )

    def forward(self, *bottoms: Tensor) -> Tensor | tuple[Tensor, ...]:
        self._check(bottoms)
        outs = tuple(self._one(x) for x in bottoms)
        return outs[0] if len(outs) == 1 else outs

    def _one(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class Convolution(_ConvBase):
    """Caffe's Convolution (``conv_layer.cpp``) over NCHW bottoms; one top per bottom.

    Blobs (Caffe order): weight ``(num_output, channels/group, kh, kw)``, bias ``(num_output,)``.
    Output size per axis: ``(size + 2*pad - (dilation*(k-1)+1)) / stride + 1`` with C integer
    division (truncation toward zero).
    """

    caffe_type = "Convolution"

    def _one(self, x: Tensor) -> Tensor:
        extra = []
        for axis in (0, 1):
            size = int(x.shape[2 + axis])
            k, s, p, d = self.kernel_size[axis], self.stride[axis], self.pad[axis], self.dilation[axis]
            out = conv_output_size(size, k, s, p, d)
            if out < 1:
                raise InputShapeError(
                    f"Convolution: input {'HW'[axis]}={size} (shape {tuple(x.shape)}) with kernel {k}, dilation {d}, "
                    f"pad {p} and stride {s} gives {out} outputs; the dilated kernel ({d * (k - 1) + 1}) must fit "
                    "into the padded input"
                )
            # Caffe's truncating division gives one output even when the kernel overhangs the
            # padded input (by less than the stride); im2col reads zeros there.
            extra.append(max(0, (out - 1) * s + d * (k - 1) + 1 - (size + 2 * p)))
        if any(extra):
            x = F.pad(x, (0, extra[1], 0, extra[0]))
        return F.conv2d(x, self.weight, self.bias, self.stride, self.pad, self.dilation, self.group)


class Deconvolution(_ConvBase):
    """Caffe's Deconvolution (``deconv_layer.cpp``): the transpose of Convolution; one top per bottom.

    Blobs (Caffe order): weight ``(channels, num_output/group, kh, kw)``, bias ``(num_output,)``.
    Output size per axis: ``stride*(size-1) + dilation*(k-1) + 1 - 2*pad``.
    """

    caffe_type = "Deconvolution"
    transposed = True

    def _one(self, x: Tensor) -> Tensor:
        for axis in (0, 1):
            size = int(x.shape[2 + axis])
            k, s, p, d = self.kernel_size[axis], self.stride[axis], self.pad[axis], self.dilation[axis]
            out = deconv_output_size(size, k, s, p, d)
            if out < 1:
                raise InputShapeError(
                    f"Deconvolution: input {'HW'[axis]}={size} (shape {tuple(x.shape)}) with kernel {k}, dilation "
                    f"{d}, pad {p} and stride {s} gives {out} outputs; reduce pad"
                )
        return F.conv_transpose2d(
            x, self.weight, self.bias, self.stride, self.pad, 0, self.group, self.dilation
        )


def _build(layer: LayerSpec, ctx: BuildContext, cls: type[_ConvBase]) -> _ConvBase:
    """The shared converter: Caffe's ``BaseConvolutionLayer::LayerSetUp`` for a 2-D layer."""
    if not layer.bottoms:
        raise ctx.error(f"has no bottom; Caffe's {layer.type} takes one or more")
    if len(layer.tops) != len(layer.bottoms):
        raise ctx.error(
            f"has {len(layer.bottoms)} bottom(s) and {len(layer.tops)} top(s); Caffe's {layer.type} produces one "
            "top per bottom"
        )
    shape = ctx.shape(0)
    for i, other in enumerate(ctx.bottom_shapes[1:], start=1):
        if other is not None and other != shape:
            raise ctx.error(
                f"bottom {i} {layer.bottoms[i]!r} has shape {other}, bottom 0 has {shape}; Caffe requires every "
                "bottom to have the same shape"
            )
    p = layer.param.convolution_param
    ndim = len(shape)
    if not -ndim <= p.axis < ndim:
        raise ctx.error(f"axis={p.axis} is out of range for the {ndim}-D bottom {shape}", LayerConfigError)
    if p.axis % ndim != 1:
        raise ctx.error(
            f"axis={p.axis} is not supported; only the channel axis 1 (layout N, C, H, W) is", UnsupportedLayerError
        )
    if ndim != 4:
        raise ctx.error(
            f"bottom {layer.bottoms[0]!r} has shape {shape}, i.e. {ndim - 2} spatial axes; only 2-D convolution "
            "over (N, C, H, W) bottoms is supported (N-D convolution is not implemented)",
            UnsupportedLayerError,
        )
    try:
        r = resolve_convolution_param(p, 2, in_channels=shape[1], layer_type=layer.type)
    except CaffeNormError as err:
        # Re-raise with the layer's location; the resolver's own prefix is the bare type.
        raise ctx.error(str(err).removeprefix(f"{layer.type}: "), type(err)) from None
    num_output, group, channels = r["num_output"], r["group"], shape[1]
    if cls.transposed:
        weight_shape = (channels, num_output // group, *r["kernel_size"])
    else:
        weight_shape = (num_output, channels // group, *r["kernel_size"])
    ctx.check_elements(weight_shape, "weight blob")
    module = cls(channels, num_output, r["kernel_size"], r["stride"], r["pad"], r["dilation"], group, r["bias_term"])
    # Caffe always runs both fillers; an unset FillerParameter is constant 0.
    ctx.fill(module.weight, p.weight_filler)
    if module.bias is not None:
        ctx.fill(module.bias, p.bias_filler)
    return module


@register_layer("Convolution")
def convert_convolution(layer: LayerSpec, ctx: BuildContext) -> Convolution:
    """Caffe's Convolution: all kernel/stride/pad forms, dilation, group, bias_term and fillers."""
    return _build(layer, ctx, Convolution)  # type: ignore[return-value]


@register_layer("Deconvolution")
def convert_deconvolution(layer: LayerSpec, ctx: BuildContext) -> Deconvolution:
    """Caffe's Deconvolution: Convolution's fields, with the transposed weight layout."""
    return _build(layer, ctx, Deconvolution)  # type: ignore[return-value]
