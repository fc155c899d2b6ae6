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

Only the facts are taken from Caffe; the code is our own. :func:`caffe_pool2d` uses only standard
ops that every exporter understands (``torch.jit.trace``, ``torch.export``, ``torch.compile``,
``torch.onnx.export``): no ``divisor_override`` (ONNX's AveragePool has no such attribute and the
TorchScript-based ONNX exporter drops it, so an exported model would divide twice), no read of the
batch size, no branch on tensor values; only the static H and W are read as Python ints.

* MAX: pad explicitly with ``-inf`` (``pad`` before; after, exactly what the last window reaches,
  cropping input that no window reads), ``F.max_pool2d`` without implicit padding, then clamp at
  ``-FLT_MAX``.
* AVE, windows inside the padded input (``(out-1)*stride + kernel <= size + 2*pad`` on both axes,
  true for every FLOOR-mode layer and most CEIL-mode ones): every Caffe divisor is ``kh*kw``. Where
  torch accepts the padding (``pad <= kernel/2``) that is exactly
  ``F.avg_pool2d(x, kernel, stride, pad, ceil_mode=False, count_include_pad=True)``, one ONNX
  AveragePool; otherwise explicit zero padding and ``F.avg_pool2d`` without padding.
* AVE, windows overhanging the padded input (CEIL mode at the bottom/right edge, also windows
  lying beyond an unpadded image): explicit zero padding to the extent the windows read,
  ``F.avg_pool2d(xp, kernel, stride)`` (window sum / ``kh*kw``), times the constant map
  ``kh*kw / pool_size`` of Caffe's divisors. Where ``pool_size`` is 0 the map is ``inf`` and the
  empty window gives ``0 * inf = NaN``; where it is negative the result is ``-0``, both as in
  Caffe. This path rounds twice, so it can differ from Caffe's single ``sum / pool_size`` in the
  last bit or so of float32 (about 1.5 ulp at most).

It is differentiable with autograd, and its gradients equal Caffe's ``Backward_cpu`` up to that
rounding (MAX: the first maximum in row-major order gets the gradient; AVE: ``top_diff /
pool_size`` spread over the in-image window).

How this compares with PyTorch (torch 2.13, CPU): ``F.avg_pool2d(ceil_mode=True,
count_include_pad=True)`` uses the same divisor rule (``min(start+k, size+pad)`` before
clipping) and the same drop rule, so it agrees with Caffe whenever it accepts the arguments.
It rejects ``pad > kernel/2`` (Caffe allows any ``pad < kernel``) and kernels larger than the
padded input, and it drops windows that start at or beyond the input even when ``pad == 0``
(Caffe keeps them). ``F.max_pool2d`` has the same restrictions. ``ceil_mode=False`` (PyTorch's
default) gives fewer outputs than Caffe's default CEIL whenever ``(size + 2*pad - kernel)`` is
not a multiple of ``stride``. We still do not use ``ceil_mode=True`` for the overhanging windows:
exported by ``torch.onnx.export`` (as a Pad and an AveragePool with ``ceil_mode=1``), its output
shape is where ONNX tools disagree -- for a 5x5 input, kernel 2, stride 2, pad 1, the graph
declares 4x4 (onnx 1.23 shape inference, without the drop rule) while torch and onnxruntime 1.32
compute 3x3. A zero Pad, a floor-mode AveragePool and a constant Mul leave no such corner.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from caffenorm.errors import InputShapeError, LayerConfigError

__all__ = [
    "pooled_size",
    "caffe_pool2d",
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
    """Caffe's AVE ``pool_size`` factor along one axis: ``min(start+kernel, size+pad) - start``
    with ``start = p*stride - pad`` for ``p < out`` (int64, on the CPU).

    Built from ``arange`` of static sizes, so tracers record it as constant ops (``torch.tensor``
    of a Python list would be a ``TracerWarning`` under ``torch.jit.trace``)."""
    start = torch.arange(out, dtype=torch.int64) * stride - pad
    end = torch.clamp(start + kernel, max=size + pad)
    return end - start


def _pad_to_windows(
    x: Tensor, hw: IntPair, out: IntPair, kernel: IntPair, stride: IntPair, pad: IntPair, value: float
) -> Tensor:
    """``x`` padded with ``value``: ``pad`` before and, after, exactly up to the end of the last
    window (``(out-1)*stride + kernel - pad``); input beyond that end, which no window reads, is
    cropped. Pooling the result without implicit padding gives exactly ``out`` windows per axis.

    Cropping is a slice rather than a negative pad: a plainer exported graph (Slice, then a Pad
    with non-negative amounts)."""
    ends = [(o - 1) * s + k - p for o, s, k, p in zip(out, stride, kernel, pad)]
    if ends[0] < hw[0]:
        x = x[:, :, : ends[0], :]
    if ends[1] < hw[1]:
        x = x[:, :, :, : ends[1]]
    pads = (pad[1], max(0, ends[1] - hw[1]), pad[0], max(0, ends[0] - hw[0]))
    return F.pad(x, pads, value=value) if any(pads) else x


def _fits(
    hw: Sequence[int], out: Sequence[int], kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int]
) -> bool:
    """Whether every window lies inside the padded input: ``(out-1)*stride + kernel <= size + 2*pad``
    on both axes. Then every Caffe AVE divisor is ``kh*kw`` (``start + kernel <= size + pad``)."""
    return all((o - 1) * s + k <= n + 2 * p for n, o, k, s, p in zip(hw, out, kernel, stride, pad))


def _inside(hw: IntPair, out: IntPair, stride: IntPair, pad: IntPair) -> IntPair:
    """How many windows per axis start inside the padded input; the others (ceil mode, stride >
    kernel, no padding) read nothing, and padding the input out to them would cost memory in
    proportion to ``stride x out`` (a stride of 4096 on 16 x 13: 4099 x 4099 per channel)."""
    return tuple(min(o, (n + 2 * p - 1) // s + 1) for o, n, s, p in zip(out, hw, stride, pad))  # type: ignore[return-value]


def _avg_pool(x: Tensor, hw: IntPair, out: IntPair, kernel: IntPair, stride: IntPair, pad: IntPair) -> Tensor:
    """Caffe's AVE pooling, ``sum(clipped window) / pool_size``, with standard ops only (see the
    module docstring): one ``F.avg_pool2d`` where its divisor ``kh*kw`` is Caffe's everywhere, else
    explicit padding, ``F.avg_pool2d`` and the constant map ``kh*kw / pool_size``."""
    fits = _fits(hw, out, kernel, stride, pad)
    if fits and all(2 * p <= k for p, k in zip(pad, kernel)):
        # torch's floor-mode count equals Caffe's here: the windows fit, and Caffe's drop rule never
        # removes a window that fits (it starts before size + 2*pad - kernel < size + pad).
        return F.avg_pool2d(x, kernel, stride, pad, ceil_mode=False, count_include_pad=True)
    inside = _inside(hw, out, stride, pad)
    y = F.avg_pool2d(_pad_to_windows(x, hw, inside, kernel, stride, pad, 0.0), kernel, stride)
    if fits:
        return y  # pad > kernel/2, which torch's own padding refuses; divisors are all kh*kw
    if inside != out:  # windows past the input: a zero sum, which the map below makes 0 / pool_size
        y = F.pad(y, (0, out[1] - inside[1], 0, out[0] - inside[0]), value=0.0)
    div_h = _ave_divisor(out[0], hw[0], kernel[0], stride[0], pad[0])
    div_w = _ave_divisor(out[1], hw[1], kernel[1], stride[1], pad[1])
    # kh*kw / pool_size in float64, then rounded once to the compute dtype: inf where pool_size is
    # 0 (0 * inf = NaN, Caffe's 0/0) and negative where it is negative (0 * c = -0, Caffe's 0/c).
    divisor = (div_h[:, None] * div_w[None, :]).to(torch.float64)
    correction = (float(kernel[0] * kernel[1]) / divisor).to(y.dtype).to(y.device)
    return y * correction


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
      taken before clipping. An empty window gives ``0`` (NaN when ``pool_size`` is 0, ``-0``
      when it is negative). Computed without ``divisor_override`` (see the module docstring), equal
      to that quotient up to float rounding (about 1.5 ulp where the windows overhang).
    * ``"STOCHASTIC"``: Caffe's CPU code is ``NOT_IMPLEMENTED`` (only its GPU kernels sample / take
      the probability-weighted average), so it raises :class:`~caffenorm.errors.LayerConfigError`.

    ``global_pooling=True`` uses the kernel ``(H, W)`` of the input with pad 0 and stride 1 (Caffe
    CHECKs both); ``kernel_hw`` must then be ``None`` or equal to ``(H, W)``.

    ``method`` and ``round_mode`` accept the enum names (any case) or their numbers
    (MAX=0, AVE=1, STOCHASTIC=2; CEIL=0, FLOOR=1). fp16/bf16 inputs are computed in float32 and
    returned in their own dtype.

    Traceable and exportable: only H and W are read (as ints; ``torch.jit.trace`` fixes them, not
    the batch size), nothing branches on tensor values, and every op has an ONNX counterpart.
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

    hw, out = (H, W), (out_h, out_w)
    if name == "MAX":
        # -inf never wins against an image value; Caffe's running max starts at -FLT_MAX.
        inside = _inside(hw, out, stride, pad)
        y = F.max_pool2d(_pad_to_windows(x, hw, inside, kernel, stride, pad, float("-inf")), kernel, stride)
        y = torch.clamp(y, min=-_FLT_MAX)
        if inside != out:  # windows past the input hold nothing: Caffe's -FLT_MAX
            y = F.pad(y, (0, out[1] - inside[1], 0, out[0] - inside[0]), value=-_FLT_MAX)
    else:
        y = _avg_pool(x, hw, out, kernel, stride, pad)
    return y.to(orig_dtype)
