"""Converters of the convolution family: Convolution and Deconvolution (2-D, NCHW).

Caffe's facts (``base_conv_layer.cpp``, ``conv_layer.cpp``, ``deconv_layer.cpp``, ``im2col.cpp``):

* geometry fields and their checks: :func:`resolve_convolution_param` (it reads the
  ``caffe.ConvolutionParameter`` message; the ops in :mod:`caffenorm.caffe.ops.pooling` take plain values);
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

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caffenorm.caffe.layers._fields import has, where, write_pair
from caffenorm.caffe.ops.pooling import conv_output_size, deconv_output_size
from caffenorm.caffe.registry import BuildContext, register_layer, register_writer, write_fields
from caffenorm.caffe.spec import LayerSpec
from caffenorm.errors import CaffeNormError, InputShapeError, LayerConfigError, UnsupportedLayerError
from caffenorm.nn._base import CaffeLayer

__all__ = [
    "Convolution",
    "Deconvolution",
    "convert_convolution",
    "convert_deconvolution",
    "resolve_convolution_param",
]

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

    def caffe_settings(self) -> dict[str, Any]:
        return {
            "num_output": self.num_output,
            "bias_term": self.bias_term,
            "group": self.group,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "pad": self.pad,
            "dilation": self.dilation,
        }

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


# ---------------------------------------------------------------------------------------------
# The ConvolutionParameter message
# ---------------------------------------------------------------------------------------------


def resolve_convolution_param(
    param: Any,
    num_spatial_axes: int = 2,
    *,
    in_channels: int | None = None,
    layer_type: str = "Convolution",
    layer_name: str | None = None,
) -> dict[str, Any]:
    """A ``caffe.ConvolutionParameter`` as plain values, with ``BaseConvolutionLayer::LayerSetUp``'s checks.

    Returns ``{"num_output", "bias_term", "group", "kernel_size", "stride", "pad", "dilation",
    "axis"}``; the four geometry entries are tuples with one value per spatial axis. For 2-D they
    map directly onto ``F.conv2d(stride=..., padding=..., dilation=..., groups=...)`` /
    ``F.conv_transpose2d`` (see :func:`~caffenorm.caffe.ops.pooling.conv_output_size` /
    :func:`~caffenorm.caffe.ops.pooling.deconv_output_size`).

    Rules (base_conv_layer.cpp), violations raise :class:`~caffenorm.errors.LayerConfigError`:

    * ``kernel_size``, ``stride``, ``pad``, ``dilation`` are repeated: one value for every axis, or
      one per spatial axis (``kernel_size`` is required; the others default to 1, 0, 1).
    * ``kernel_h``/``kernel_w``, ``stride_h``/``stride_w``, ``pad_h``/``pad_w``: 2-D only, and not
      together with the repeated form of the same field. Caffe reads both members of the pair, so
      a missing one is 0 (``pad_h: 1`` alone means ``pad_w = 0``; a lone ``kernel_h`` or
      ``stride_h`` leaves the other 0, which is rejected).
    * kernel > 0, stride > 0, dilation > 0 (Caffe checks neither stride_h/_w nor dilation, but
      divides by the stride, and a dilation of 0 is not a convolution PyTorch can run).
    * ``num_output > 0``; ``group >= 1``, ``num_output % group == 0`` and, when ``in_channels`` is
      given, ``in_channels % group == 0``.
    * ``axis`` must be the channel axis 1 (or its negative form ``-(num_spatial_axes + 1)``);
      other layouts are not supported. ``force_nd_im2col`` and ``engine`` do not change the result
      and are ignored.
    """
    layer = where(layer_type, layer_name)
    n = int(num_spatial_axes)
    if n < 1:
        raise LayerConfigError(f"{layer}: num_spatial_axes={num_spatial_axes!r} is not allowed; it must be >= 1")
    axis = int(param.axis)
    if axis not in (1, -(n + 1)):
        raise LayerConfigError(
            f"{layer}: axis={axis} is not supported; only the channel axis 1 (layout N, C, spatial...) is"
        )

    def _geometry(base: str, hw: tuple[str, str], default: int | None) -> tuple[int, ...]:
        has_hw = has(param, hw[0]) or has(param, hw[1])
        values = list(getattr(param, base))
        if has_hw:
            if n != 2:
                raise LayerConfigError(
                    f"{layer}: {hw[0]}/{hw[1]} can only be used for 2-D convolution; this one has {n} spatial axes "
                    f"(use {base})"
                )
            if values:
                raise LayerConfigError(
                    f"{layer}: {base}={values} is set together with {hw[0]}/{hw[1]}; give either {base} or "
                    f"{hw[0]}/{hw[1]}, not both"
                )
            return int(getattr(param, hw[0])), int(getattr(param, hw[1]))
        if not values and default is not None:
            return (default,) * n
        if len(values) not in (1, n):
            raise LayerConfigError(
                f"{layer}: {base} is given {len(values)} times ({values}); give it once, or once per spatial "
                f"dimension ({n})"
            )
        return tuple(int(v) for v in values) if len(values) == n else (int(values[0]),) * n

    kernel = _geometry("kernel_size", ("kernel_h", "kernel_w"), None)
    stride = _geometry("stride", ("stride_h", "stride_w"), 1)
    pad = _geometry("pad", ("pad_h", "pad_w"), 0)
    dilation_values = list(param.dilation)
    if dilation_values and len(dilation_values) not in (1, n):
        raise LayerConfigError(
            f"{layer}: dilation is given {len(dilation_values)} times ({dilation_values}); give it once, or once "
            f"per spatial dimension ({n})"
        )
    if not dilation_values:
        dilation: tuple[int, ...] = (1,) * n
    elif len(dilation_values) == n:
        dilation = tuple(int(v) for v in dilation_values)
    else:
        dilation = (int(dilation_values[0]),) * n

    for what, values, minimum in (("kernel_size", kernel, 1), ("stride", stride, 1), ("dilation", dilation, 1)):
        if min(values) < minimum:
            raise LayerConfigError(
                f"{layer}: {what}={values} is not allowed; every {what} value must be >= {minimum} "
                "(kernel_h/kernel_w or stride_h/stride_w default to 0 when only one of them is set)"
            )

    num_output = int(param.num_output)
    if num_output <= 0:
        raise LayerConfigError(f"{layer}: num_output={num_output} is not allowed; set num_output > 0")
    group = int(param.group)
    if group < 1:
        raise LayerConfigError(f"{layer}: group={group} is not allowed; it must be >= 1")
    if num_output % group:
        raise LayerConfigError(
            f"{layer}: num_output={num_output} is not a multiple of group={group}; Caffe requires "
            "num_output % group == 0"
        )
    if in_channels is not None and in_channels % group:
        raise LayerConfigError(
            f"{layer}: the input has {in_channels} channels, not a multiple of group={group}; Caffe requires "
            "channels % group == 0"
        )

    return {
        "num_output": num_output,
        "bias_term": bool(param.bias_term),
        "group": group,
        "kernel_size": kernel,
        "stride": stride,
        "pad": pad,
        "dilation": dilation,
        "axis": 1,
    }


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
        raise err.at(layer.location) from None
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


@register_writer(Convolution, Deconvolution)
def write_convolution(module: _ConvBase, layer: Any) -> None:
    """``convolution_param``: num_output, bias_term (a folded layer gains ``bias_term: true``),
    group, and the geometry (``kernel_size``/``stride``/``pad`` once, or ``_h``/``_w`` when the axes
    differ; ``dilation``)."""
    param = layer.convolution_param
    settings = module.caffe_settings()
    write_fields(param, {"num_output": settings["num_output"]}, keep_defaults=True)
    write_fields(param, {"bias_term": settings["bias_term"], "group": settings["group"]})
    write_pair(param, "kernel_size", settings["kernel_size"], None, repeated=True)
    write_pair(param, "stride", settings["stride"], 1, repeated=True)
    write_pair(param, "pad", settings["pad"], 0, repeated=True)
    dilation = settings["dilation"]
    given = len(param.dilation) > 0
    del param.dilation[:]
    if given or tuple(dilation) != (1, 1):
        param.dilation.extend([dilation[0]] if dilation[0] == dilation[1] else list(dilation))
