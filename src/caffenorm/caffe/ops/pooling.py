"""Caffe's Pooling layer and the shape rules of its Pooling / Convolution / Deconvolution layers.

Caffe's windows are placed differently from PyTorch's, so ``F.max_pool2d`` / ``F.avg_pool2d``
with Caffe's numbers do not always reproduce Caffe. Everything here follows BVLC Caffe's sources:

* ``src/caffe/layers/pooling_layer.cpp`` (``LayerSetUp``, ``Reshape``, ``Forward_cpu``):

  - output size: ``pooled = ceil((size + 2*pad - kernel) / stride) + 1`` (``round_mode: FLOOR``
    uses floor; the field is BVLC master only, default CEIL). Then, **if any pad is non-zero**
    (``if (pad_h_ || pad_w_)``, so for both axes even when only one axis is padded), a last window
    that starts at or beyond ``size + pad`` is dropped: ``if ((pooled-1)*stride >= size+pad)
    --pooled``. Without padding nothing is dropped, so ceil mode with ``stride > kernel`` can
    leave windows that lie completely outside the image (see below).
  - window of output ``p``: ``start = p*stride - pad``.
    MAX: ``end = min(start + kernel, size)``, ``start = max(start, 0)``; the maximum starts from
    ``-FLT_MAX`` and only in-image values compete, so padding never wins. An empty window
    gives ``-FLT_MAX``.
    AVE: ``end = min(start + kernel, size + pad)``; ``pool_size = (hend-hstart)*(wend-wstart)``
    is taken **before** clipping to the image, so padding counts towards the divisor up to
    ``size + pad`` and not beyond; the sum runs over the clipped (in-image) window. An empty
    window gives ``0 / pool_size``: ``0`` (or ``-0``) when ``pool_size != 0`` and **NaN** when a
    window starts exactly at ``size`` (``pool_size == 0``).
    STOCHASTIC: ``NOT_IMPLEMENTED`` on the CPU (only the GPU code has it).
  - checks: kernel given as ``kernel_size`` or ``kernel_h`` + ``kernel_w``; pad as ``pad`` or
    ``pad_h`` + ``pad_w``; stride as ``stride`` or ``stride_h`` + ``stride_w``; kernel > 0; with
    padding only AVE / MAX and ``pad < kernel``; ``global_pooling`` takes the kernel from the
    input's H x W, forbids any kernel field and requires ``pad == 0`` and ``stride == 1``.

* ``src/caffe/layers/base_conv_layer.cpp`` (``LayerSetUp``): ``kernel_size`` / ``stride`` /
  ``pad`` / ``dilation`` are repeated fields given once (all axes) or once per spatial axis;
  ``kernel_h/_w``, ``stride_h/_w``, ``pad_h/_w`` only for 2-D and never together with the repeated
  form; defaults stride 1, pad 0, dilation 1; ``num_output > 0``; ``channels % group == 0`` and
  ``num_output % group == 0``.
* ``src/caffe/layers/conv_layer.cpp`` (``compute_output_shape``):
  ``out = (in + 2*pad - (dilation*(k-1)+1)) / stride + 1`` with C++ integer division.
* ``src/caffe/layers/deconv_layer.cpp`` (``compute_output_shape``):
  ``out = stride*(in-1) + dilation*(k-1)+1 - 2*pad``.

Only the facts are taken from Caffe; the code is our own. :func:`caffe_pool2d` pads explicitly
(left/top by ``pad``, right/bottom by exactly what the last window needs, or crops what no window
reads), runs ``F.max_pool2d`` / ``F.avg_pool2d`` without implicit padding, and for AVE divides the
window sums by a divisor map computed from Caffe's rule. It is differentiable with autograd, and
its gradients equal Caffe's ``Backward_cpu`` (MAX: the first maximum in row-major order gets
the gradient; AVE: ``top_diff / pool_size`` spread over the in-image window).

How this compares with PyTorch (torch 2.13, CPU): ``F.avg_pool2d(ceil_mode=True,
count_include_pad=True)`` uses the same divisor rule (``min(start+k, size+pad)`` before
clipping) and the same drop rule, so it agrees with Caffe whenever it accepts the arguments.
It rejects ``pad > kernel/2`` (Caffe allows any ``pad < kernel``) and kernels larger than the
padded input, and it drops windows that start at or beyond the input even when ``pad == 0``
(Caffe keeps them). ``F.max_pool2d`` has the same restrictions. ``ceil_mode=False`` (PyTorch's
default) gives fewer outputs than Caffe's default CEIL whenever ``(size + 2*pad - kernel)`` is
not a multiple of ``stride``.
"""

from __future__ import annotations

from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from caffenorm.errors import InputShapeError, LayerConfigError

__all__ = [
    "pooled_size",
    "caffe_pool2d",
    "resolve_pooling_param",
    "resolve_convolution_param",
    "conv_output_size",
    "deconv_output_size",
]

# Caffe starts the MAX search from -FLT_MAX (also for Dtype=double), so that is what an empty
# window (or a window of -inf values) produces.
_FLT_MAX = 3.4028234663852886e38

_POOL_METHODS = ("MAX", "AVE", "STOCHASTIC")  # PoolingParameter.PoolMethod: MAX=0 AVE=1 STOCHASTIC=2
_ROUND_MODES = ("CEIL", "FLOOR")  # PoolingParameter.RoundMode: CEIL=0 FLOOR=1

IntPair = tuple[int, int]
MethodLike = Union[str, int]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _where(layer: str, layer_name: str | None) -> str:
    return f"{layer} layer {layer_name!r}" if layer_name else layer


def _enum_name(value: MethodLike, names: tuple[str, ...], what: str, layer: str) -> str:
    """``value`` as one of ``names``: a name (any case) or its enum number."""
    if isinstance(value, str):
        name = value.strip().upper()
        if name in names:
            return name
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    allowed = ", ".join(f"{n!r} ({i})" for i, n in enumerate(names))
    raise LayerConfigError(f"{layer}: {what}={value!r} is not allowed; use one of {allowed}")


def _pair(layer: str, what: str, value: Any, *, minimum: int) -> IntPair:
    """An int or a pair of ints as ``(h, w)``, each ``>= minimum``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise LayerConfigError(f"{layer}: {what}={value!r} must be an int or a pair (h, w)")
        h, w = value
    else:
        h = w = value
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise LayerConfigError(
                f"{layer}: {what}={value!r} is not allowed; each value must be an integer >= {minimum}"
            )
    return int(h), int(w)


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


# ---------------------------------------------------------------------------------------------
# Output sizes
# ---------------------------------------------------------------------------------------------


def pooled_size(
    size: int,
    kernel: int,
    stride: int,
    pad: int,
    round_mode: MethodLike = "CEIL",
    *,
    any_pad: bool | None = None,
) -> int:
    """Caffe's pooled output size along one axis (``PoolingLayer::Reshape``, pooling_layer.cpp).

    ``pooled = ceil((size + 2*pad - kernel) / stride) + 1`` (``floor`` for ``round_mode="FLOOR"``),
    then, if padding is used, ``if ((pooled - 1) * stride >= size + pad) --pooled`` so that the
    last window starts strictly before ``size + pad``.

    Caffe applies that drop rule to *both* axes when *either* pad is non-zero
    (``if (pad_h_ || pad_w_)``). ``any_pad`` says whether that is the case; by default it is
    ``pad > 0``. Pass ``any_pad=(pad_h > 0 or pad_w > 0)`` to reproduce Caffe for a 2-D layer whose
    other axis is padded.

    The value is returned as computed (it can be ``<= 0`` when the kernel is larger than the
    padded input); :func:`caffe_pool2d` rejects such shapes. The division is done exactly in
    integers; Caffe divides in ``float``, which agrees for every size below 2**24.
    """
    mode = _enum_name(round_mode, _ROUND_MODES, "round_mode", "Pooling")
    if stride < 1:
        raise LayerConfigError(f"Pooling: stride={stride} is not allowed; it must be >= 1")
    span = size + 2 * pad - kernel
    pooled = (_ceil_div(span, stride) if mode == "CEIL" else span // stride) + 1
    if (pad > 0) if any_pad is None else any_pad:
        if (pooled - 1) * stride >= size + pad:
            pooled -= 1
    return pooled


def conv_output_size(size: int, kernel: int, stride: int = 1, pad: int = 0, dilation: int = 1) -> int:
    """Caffe's Convolution output size along one axis (``ConvolutionLayer::compute_output_shape``).

    ``out = (size + 2*pad - (dilation*(kernel-1) + 1)) / stride + 1``

    with C++ integer division, which truncates toward zero. For a non-negative numerator (the
    kernel fits into the padded input) that is ``//``; when the dilated kernel is larger than the
    padded input by less than ``stride``, Caffe still produces one output (im2col reads zeros
    beyond the input), and so does this function.
    """
    extent = dilation * (kernel - 1) + 1
    num = size + 2 * pad - extent
    quotient = abs(num) // stride
    return (quotient if num >= 0 else -quotient) + 1


def deconv_output_size(size: int, kernel: int, stride: int = 1, pad: int = 0, dilation: int = 1) -> int:
    """Caffe's Deconvolution output size along one axis (``DeconvolutionLayer::compute_output_shape``).

    ``out = stride*(size - 1) + dilation*(kernel - 1) + 1 - 2*pad``

    This is ``F.conv_transpose2d``'s size with ``output_padding=0``.
    """
    return stride * (size - 1) + dilation * (kernel - 1) + 1 - 2 * pad


# ---------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------


def _ave_divisor(out: int, size: int, kernel: int, stride: int, pad: int) -> Tensor:
    """Caffe's AVE ``pool_size`` factor along one axis: ``min(start+kernel, size+pad) - start``."""
    start = torch.arange(out, dtype=torch.int64) * stride - pad
    end = torch.clamp(start + kernel, max=size + pad)
    return end - start


def caffe_pool2d(
    x: Tensor,
    method: MethodLike = "MAX",
    kernel_hw: int | IntPair | None = None,
    stride_hw: int | IntPair = 1,
    pad_hw: int | IntPair = 0,
    round_mode: MethodLike = "CEIL",
    global_pooling: bool = False,
) -> Tensor:
    """Caffe's Pooling forward (``PoolingLayer::Forward_cpu``) on an NCHW tensor; autograd-able.

    Output size per axis: :func:`pooled_size` (the drop rule applies to both axes when either pad
    is non-zero). Window of output ``(ph, pw)``: ``hstart = ph*stride_h - pad_h`` (same for w).

    * ``"MAX"``: maximum over the window clipped to the image; padding never wins. A window lying
      wholly outside the image (possible only without padding, in ceil mode, when
      ``stride > kernel``) gives ``-FLT_MAX``, as Caffe does; NaN inputs are propagated (Caffe's
      ``>`` comparison would skip them).
    * ``"AVE"``: ``sum(x over the clipped window) / pool_size`` with
      ``pool_size = (min(hstart+kh, H+pad_h) - hstart) * (min(wstart+kw, W+pad_w) - wstart)``
      taken before clipping. An empty window gives ``0`` (NaN when ``pool_size`` is 0).
    * ``"STOCHASTIC"``: Caffe's CPU code is ``NOT_IMPLEMENTED`` (only its GPU kernels sample / take
      the probability-weighted average), so it raises :class:`~caffenorm.errors.LayerConfigError`.

    ``global_pooling=True`` uses the kernel ``(H, W)`` of the input with pad 0 and stride 1 (Caffe
    CHECKs both); ``kernel_hw`` must then be ``None`` or equal to ``(H, W)``.

    ``method`` and ``round_mode`` accept the enum names (any case) or their numbers
    (MAX=0, AVE=1, STOCHASTIC=2; CEIL=0, FLOOR=1). fp16/bf16 inputs are computed in float32 and
    returned in their own dtype.
    """
    layer = "Pooling"
    name = _enum_name(method, _POOL_METHODS, "pool", layer)
    if name == "STOCHASTIC":
        raise LayerConfigError(
            f"{layer}: pool='STOCHASTIC' is not supported; Caffe's CPU Pooling layer does not implement it "
            "(NOT_IMPLEMENTED in pooling_layer.cpp; only the GPU kernels exist). Use 'MAX' or 'AVE'"
        )
    _enum_name(round_mode, _ROUND_MODES, "round_mode", layer)
    if not isinstance(x, Tensor):
        raise InputShapeError(f"{layer}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise InputShapeError(
            f"{layer}: input has {x.dim()} dimensions (shape {tuple(x.shape)}); Caffe's Pooling needs 4 (N, C, H, W)"
        )
    if not x.is_floating_point():
        raise InputShapeError(f"{layer}: expected a floating-point tensor, got dtype {x.dtype}; convert with .float()")
    H, W = int(x.shape[2]), int(x.shape[3])

    stride = _pair(layer, "stride", stride_hw, minimum=1)
    pad = _pair(layer, "pad", pad_hw, minimum=0)
    if global_pooling:
        if kernel_hw is not None and _pair(layer, "kernel", kernel_hw, minimum=1) != (H, W):
            raise LayerConfigError(
                f"{layer}: global_pooling=True takes the kernel from the input ({H}, {W}); kernel={kernel_hw!r} "
                "contradicts it (leave kernel unset)"
            )
        if pad != (0, 0) or stride != (1, 1):
            raise LayerConfigError(
                f"{layer}: with global_pooling=True only pad=0 and stride=1 are allowed; got pad={pad_hw!r}, "
                f"stride={stride_hw!r}"
            )
        kernel = (H, W)
        if H < 1 or W < 1:
            raise InputShapeError(f"{layer}: global pooling needs a non-empty input, got shape {tuple(x.shape)}")
    else:
        if kernel_hw is None:
            raise LayerConfigError(f"{layer}: kernel is required unless global_pooling=True")
        kernel = _pair(layer, "kernel", kernel_hw, minimum=1)
    if pad != (0, 0):
        for axis, p, k in (("h", pad[0], kernel[0]), ("w", pad[1], kernel[1])):
            if p >= k:
                raise LayerConfigError(
                    f"{layer}: pad_{axis}={p} is not allowed with kernel_{axis}={k}; Caffe requires pad < kernel"
                )

    any_pad = pad != (0, 0)
    out_h = pooled_size(H, kernel[0], stride[0], pad[0], round_mode, any_pad=any_pad)
    out_w = pooled_size(W, kernel[1], stride[1], pad[1], round_mode, any_pad=any_pad)
    if out_h < 1 or out_w < 1:
        raise InputShapeError(
            f"{layer}: input {H}x{W} with kernel {kernel}, stride {stride}, pad {pad} and round_mode "
            f"{_enum_name(round_mode, _ROUND_MODES, 'round_mode', layer)} gives an output of {out_h}x{out_w}; "
            "the kernel must fit into the padded input"
        )

    orig_dtype = x.dtype
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()

    # Explicit padding: `pad` before, and after exactly what the last window reaches (a negative
    # amount crops input that no window reads). The op then pools without implicit padding and
    # produces exactly out_h x out_w windows.
    extent_h = (out_h - 1) * stride[0] + kernel[0]
    extent_w = (out_w - 1) * stride[1] + kernel[1]
    pads = (pad[1], extent_w - pad[1] - W, pad[0], extent_h - pad[0] - H)
    if name == "MAX":
        xp = F.pad(x, pads, value=float("-inf"))
        y = F.max_pool2d(xp, kernel, stride)
        y = torch.clamp(y, min=-_FLT_MAX)  # Caffe's running max starts at -FLT_MAX
    else:
        xp = F.pad(x, pads, value=0.0)
        sums = F.avg_pool2d(xp, kernel, stride, divisor_override=1)
        div_h = _ave_divisor(out_h, H, kernel[0], stride[0], pad[0])
        div_w = _ave_divisor(out_w, W, kernel[1], stride[1], pad[1])
        divisor = (div_h[:, None] * div_w[None, :]).to(device=sums.device, dtype=sums.dtype)
        y = sums / divisor
    return y.to(orig_dtype)


# ---------------------------------------------------------------------------------------------
# Parameter messages
# ---------------------------------------------------------------------------------------------


def _has(msg: Any, field: str) -> bool:
    return bool(msg.HasField(field))


def _enum_value_name(msg: Any, field: str) -> str:
    fd = msg.DESCRIPTOR.fields_by_name[field]
    return str(fd.enum_type.values_by_number[getattr(msg, field)].name)


def resolve_pooling_param(
    param: Any,
    input_hw: IntPair | None = None,
    *,
    layer_name: str | None = None,
) -> dict[str, Any]:
    """A ``caffe.PoolingParameter`` message as keyword arguments for :func:`caffe_pool2d`.

    Returns ``{"method", "kernel_hw", "stride_hw", "pad_hw", "round_mode", "global_pooling"}``.
    Applies the checks of ``PoolingLayer::LayerSetUp`` (pooling_layer.cpp), raising
    :class:`~caffenorm.errors.LayerConfigError`:

    * kernel: ``kernel_size``, or both ``kernel_h`` and ``kernel_w``; every value > 0. (Caffe's own
      check lets ``kernel_size`` together with a lone ``kernel_h`` or ``kernel_w`` through and then
      uses ``kernel_size``; so does this function.) With ``global_pooling`` no kernel field may be
      set and the kernel is ``input_hw`` (``None`` if ``input_hw`` is not given).
    * pad: ``pad``, or both ``pad_h`` and ``pad_w`` (not mixed); stride likewise (stride must be
      > 0, which Caffe does not check but divides by).
    * with any pad non-zero: ``pool`` must be MAX or AVE and ``pad < kernel`` per axis.
    * with ``global_pooling``: pad 0 and stride 1.
    * ``pool: STOCHASTIC`` is accepted here (Caffe accepts it at setup); :func:`caffe_pool2d`
      raises for it.

    ``engine`` is ignored. With ``input_hw`` given, an empty output is reported as
    :class:`~caffenorm.errors.InputShapeError`.
    """
    layer = _where("Pooling", layer_name)
    method = _enum_value_name(param, "pool")
    round_mode = _enum_value_name(param, "round_mode")
    global_pooling = bool(param.global_pooling)

    has_ks, has_kh, has_kw = _has(param, "kernel_size"), _has(param, "kernel_h"), _has(param, "kernel_w")
    kernel: IntPair | None
    if global_pooling:
        if has_ks or has_kh or has_kw:
            set_fields = [f for f, s in (("kernel_size", has_ks), ("kernel_h", has_kh), ("kernel_w", has_kw)) if s]
            raise LayerConfigError(
                f"{layer}: global_pooling: true takes the kernel from the input; {', '.join(set_fields)} must not "
                "be set"
            )
        kernel = None if input_hw is None else _pair(layer, "input_hw", tuple(input_hw), minimum=1)
    else:
        if has_ks:
            kernel = (int(param.kernel_size), int(param.kernel_size))
        elif has_kh and has_kw:
            kernel = (int(param.kernel_h), int(param.kernel_w))
        elif has_kh or has_kw:
            given, missing = ("kernel_h", "kernel_w") if has_kh else ("kernel_w", "kernel_h")
            raise LayerConfigError(
                f"{layer}: {given}={getattr(param, given)} is set without {missing}; a non-square kernel needs both "
                "kernel_h and kernel_w (or use kernel_size)"
            )
        else:
            raise LayerConfigError(
                f"{layer}: no kernel size; set kernel_size, or kernel_h and kernel_w, or global_pooling: true"
            )
        for axis, k in zip("hw", kernel):
            if k <= 0:
                field = "kernel_size" if has_ks else f"kernel_{axis}"
                raise LayerConfigError(f"{layer}: {field}=0 is not allowed; filter dimensions must be > 0")

    def _pair_field(base: str, default: int) -> IntPair:
        has_one, has_h, has_w = _has(param, base), _has(param, f"{base}_h"), _has(param, f"{base}_w")
        if has_h or has_w:
            if has_one:
                raise LayerConfigError(
                    f"{layer}: {base}={getattr(param, base)} is set together with {base}_h/{base}_w; give {base} OR "
                    f"both {base}_h and {base}_w"
                )
            if not (has_h and has_w):
                given, missing = (f"{base}_h", f"{base}_w") if has_h else (f"{base}_w", f"{base}_h")
                raise LayerConfigError(
                    f"{layer}: {given}={getattr(param, given)} is set without {missing}; give {base} OR both "
                    f"{base}_h and {base}_w"
                )
            return int(getattr(param, f"{base}_h")), int(getattr(param, f"{base}_w"))
        v = int(getattr(param, base)) if has_one else default
        return v, v

    pad = _pair_field("pad", 0)
    stride = _pair_field("stride", 1)
    for axis, s in zip("hw", stride):
        if s <= 0:
            field = f"stride_{axis}" if _has(param, f"stride_{axis}") else "stride"
            raise LayerConfigError(f"{layer}: {field}={s} is not allowed; the stride must be >= 1")
    if global_pooling and (pad != (0, 0) or stride != (1, 1)):
        raise LayerConfigError(
            f"{layer}: with global_pooling: true only pad = 0 and stride = 1 are allowed; got pad {pad}, "
            f"stride {stride}"
        )
    if pad != (0, 0):
        if method not in ("MAX", "AVE"):
            raise LayerConfigError(
                f"{layer}: pool={method} with pad {pad} is not allowed; Caffe implements padding only for MAX and "
                "AVE pooling (set pad to 0)"
            )
        assert kernel is not None  # global pooling has pad 0
        for axis, p, k in zip("hw", pad, kernel):
            if p >= k:
                field = f"pad_{axis}" if _has(param, f"pad_{axis}") else "pad"
                kfield = "kernel_size" if has_ks else f"kernel_{axis}"
                raise LayerConfigError(
                    f"{layer}: {field}={p} is not allowed with {kfield}={k}; Caffe requires pad < kernel"
                )

    if input_hw is not None and kernel is not None:
        H, W = _pair(layer, "input_hw", tuple(input_hw), minimum=0)
        any_pad = pad != (0, 0)
        out = (
            pooled_size(H, kernel[0], stride[0], pad[0], round_mode, any_pad=any_pad),
            pooled_size(W, kernel[1], stride[1], pad[1], round_mode, any_pad=any_pad),
        )
        if min(out) < 1:
            raise InputShapeError(
                f"{layer}: input {H}x{W} with kernel {kernel}, stride {stride}, pad {pad} gives an output of "
                f"{out[0]}x{out[1]}; the kernel must fit into the padded input"
            )

    return {
        "method": method,
        "kernel_hw": kernel,
        "stride_hw": stride,
        "pad_hw": pad,
        "round_mode": round_mode,
        "global_pooling": global_pooling,
    }


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
    ``F.conv_transpose2d`` (see :func:`conv_output_size` / :func:`deconv_output_size`).

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
    layer = _where(layer_type, layer_name)
    n = int(num_spatial_axes)
    if n < 1:
        raise LayerConfigError(f"{layer}: num_spatial_axes={num_spatial_axes!r} is not allowed; it must be >= 1")
    axis = int(param.axis)
    if axis not in (1, -(n + 1)):
        raise LayerConfigError(
            f"{layer}: axis={axis} is not supported; only the channel axis 1 (layout N, C, spatial...) is"
        )

    def _geometry(base: str, hw: tuple[str, str], default: int | None) -> tuple[int, ...]:
        has_hw = _has(param, hw[0]) or _has(param, hw[1])
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
