"""Converter of Caffe's Pooling layer (``pooling_layer.cpp``), computed by
:func:`~caffenorm.caffe.ops.pooling.caffe_pool2d`.

What the converter adds to the op:

* the field checks of ``LayerSetUp`` (:func:`resolve_pooling_param`, which reads the
  ``caffe.PoolingParameter`` message; the op itself takes plain values), raised with the layer's
  location;
* ``pool: STOCHASTIC`` is refused when the net is built: Caffe's CPU code is ``NOT_IMPLEMENTED``
  and its GPU code samples in TRAIN, so there is no single result to reproduce;
* ``global_pooling`` takes the kernel from each input's H x W at forward time, as Caffe's
  ``Reshape`` does;
* Caffe's optional second top for MAX: the mask, the index ``h * W + w`` of each window's first
  maximum in its channel's plane (as a float), ``-1`` where no value beat ``-FLT_MAX``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from caffenorm.caffe.layers._fields import enum_name, has, where, write_pair
from caffenorm.caffe.ops.pooling import _FLT_MAX, IntPair, _pair, caffe_pool2d, pooled_size
from caffenorm.caffe.registry import BuildContext, register_layer, register_writer, write_fields
from caffenorm.caffe.spec import LayerSpec
from caffenorm.errors import CaffeNormError, InputShapeError, LayerConfigError, UnsupportedLayerError
from caffenorm.nn._base import CaffeLayer

__all__ = ["Pooling", "convert_pooling", "resolve_pooling_param", "write_pooling"]

Pair = tuple[int, int]


class Pooling(CaffeLayer):
    """Caffe's Pooling over an NCHW bottom: MAX or AVE, CEIL or FLOOR rounding, global pooling.

    ``kernel_size`` is ``None`` with ``global_pooling`` (the kernel is the input's H x W).
    With ``top_mask`` (MAX only) the forward returns ``(pooled, mask)``; the mask is Caffe's
    second top and carries no gradient.  The layer has no blobs.
    """

    caffe_type = "Pooling"

    def __init__(
        self,
        pool: str = "MAX",
        kernel_size: Pair | None = None,
        stride: Pair = (1, 1),
        pad: Pair = (0, 0),
        round_mode: str = "CEIL",
        global_pooling: bool = False,
        top_mask: bool = False,
    ) -> None:
        super().__init__()
        if top_mask and pool != "MAX":
            raise LayerConfigError(f"Pooling: top_mask=True needs pool='MAX', got pool={pool!r}")
        self.pool, self.round_mode = pool, round_mode
        self.kernel_size = None if kernel_size is None else tuple(kernel_size)
        self.stride, self.pad = tuple(stride), tuple(pad)
        self.global_pooling, self.top_mask = bool(global_pooling), bool(top_mask)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        y = caffe_pool2d(
            x, self.pool, None if self.global_pooling else self.kernel_size, self.stride, self.pad,
            self.round_mode, self.global_pooling,
        )
        if not self.top_mask:
            return y
        return y, self._mask(x)

    @torch.no_grad()
    def _mask(self, x: Tensor) -> Tensor:
        """Caffe's MAX mask: the window geometry of ``caffe_pool2d`` (already validated by it)."""
        H, W = int(x.shape[2]), int(x.shape[3])
        kernel = (H, W) if self.global_pooling else self.kernel_size
        any_pad = self.pad != (0, 0)
        out = [
            pooled_size(size, k, s, p, self.round_mode, any_pad=any_pad)
            for size, k, s, p in zip((H, W), kernel, self.stride, self.pad)
        ]
        extent = [(o - 1) * s + k for o, s, k in zip(out, self.stride, kernel)]
        # Pad with -inf (never a maximum; a negative amount crops what no window reads).
        pads = (self.pad[1], extent[1] - self.pad[1] - W, self.pad[0], extent[0] - self.pad[0] - H)
        xp = F.pad(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, pads, value=float("-inf"))
        values, index = F.max_pool2d(xp, kernel, self.stride, return_indices=True)
        # torch's index is into the padded plane and, like Caffe's strict '>', names the first
        # maximum in row-major order; shift it back to the unpadded plane.
        width = int(xp.shape[3])
        h = torch.div(index, width, rounding_mode="floor") - self.pad[0]
        w = torch.remainder(index, width) - self.pad[1]
        mask = (h * W + w).to(x.dtype)
        return torch.where(values > -_FLT_MAX, mask, torch.full_like(mask, -1))

    def caffe_settings(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "pad": self.pad,
            "round_mode": self.round_mode,
            "global_pooling": self.global_pooling,
        }

    def extra_repr(self) -> str:
        return (
            f"pool={self.pool}, kernel_size={self.kernel_size}, stride={self.stride}, pad={self.pad}, "
            f"round_mode={self.round_mode}, global_pooling={self.global_pooling}, top_mask={self.top_mask}"
        )


# ---------------------------------------------------------------------------------------------
# The PoolingParameter message
# ---------------------------------------------------------------------------------------------


def resolve_pooling_param(
    param: Any,
    input_hw: IntPair | None = None,
    *,
    layer_name: str | None = None,
) -> dict[str, Any]:
    """A ``caffe.PoolingParameter`` message as keyword arguments for :func:`~caffenorm.caffe.ops.pooling.caffe_pool2d`.

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
    * ``pool: STOCHASTIC`` is accepted here (Caffe accepts it at setup);
      :func:`~caffenorm.caffe.ops.pooling.caffe_pool2d` raises for it.

    ``engine`` is ignored. With ``input_hw`` given, an empty output is reported as
    :class:`~caffenorm.errors.InputShapeError`.
    """
    layer = where("Pooling", layer_name)
    method = enum_name(param, "pool")
    round_mode = enum_name(param, "round_mode")
    global_pooling = bool(param.global_pooling)

    has_ks, has_kh, has_kw = has(param, "kernel_size"), has(param, "kernel_h"), has(param, "kernel_w")
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
        has_one, has_h, has_w = has(param, base), has(param, f"{base}_h"), has(param, f"{base}_w")
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
            field = f"stride_{axis}" if has(param, f"stride_{axis}") else "stride"
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
                field = f"pad_{axis}" if has(param, f"pad_{axis}") else "pad"
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


@register_layer("Pooling")
def convert_pooling(layer: LayerSpec, ctx: BuildContext) -> Pooling:
    """Caffe's Pooling: one bottom, one top (two for MAX: the mask)."""
    ctx.require_bottoms(1)
    p = layer.param.pooling_param
    shape = ctx.bottom_shapes[0] if ctx.bottom_shapes else None
    input_hw = tuple(shape[2:]) if shape is not None and len(shape) == 4 else None
    try:
        r: dict[str, Any] = resolve_pooling_param(p, input_hw)  # type: ignore[arg-type]
    except CaffeNormError as err:
        raise err.at(layer.location) from None
    if r["method"] == "STOCHASTIC":
        raise ctx.error(
            "pool: STOCHASTIC is not supported; Caffe's CPU Pooling does not implement it (NOT_IMPLEMENTED) and "
            "its GPU code samples at random in TRAIN; use MAX or AVE",
            UnsupportedLayerError,
        )
    max_tops = 2 if r["method"] == "MAX" else 1
    if not 1 <= len(layer.tops) <= max_tops:
        raise ctx.error(
            f"has {len(layer.tops)} tops; Caffe's Pooling with pool: {r['method']} takes "
            + ("1, or 2 (the second is the MAX mask)" if max_tops == 2 else "exactly 1 (only MAX has a mask top)")
        )
    if ctx.budget is not None and input_hw is not None and not r["global_pooling"]:
        # The forward pads the bottom explicitly up to the last window (at most size + 2*pad +
        # kernel - 1 per axis): with a huge kernel and pad that copy dwarfs the blobs.
        padded = [n + 2 * q + k - 1 for n, q, k in zip(input_hw, r["pad_hw"], r["kernel_hw"])]
        ctx.budget.check_transient((*shape[:2], *padded), "its padded bottom", layer.location)  # type: ignore[index]
    return Pooling(
        r["method"],
        None if r["global_pooling"] else r["kernel_hw"],
        r["stride_hw"],
        r["pad_hw"],
        r["round_mode"],
        r["global_pooling"],
        top_mask=len(layer.tops) == 2,
    )


@register_writer(Pooling)
def write_pooling(module: Pooling, layer: Any) -> None:
    """``pooling_param``: pool, the kernel (none with ``global_pooling``), stride, pad (one value, or
    ``_h``/``_w`` when the axes differ), round_mode and global_pooling."""
    param = layer.pooling_param
    settings = module.caffe_settings()
    write_fields(param, {"pool": settings["pool"], "round_mode": settings["round_mode"],
                         "global_pooling": settings["global_pooling"]})
    if settings["global_pooling"]:
        for field in ("kernel_size", "kernel_h", "kernel_w"):
            param.ClearField(field)
    else:
        write_pair(param, "kernel_size", settings["kernel_size"], None, repeated=False)
    write_pair(param, "stride", settings["stride"], 1, repeated=False)
    write_pair(param, "pad", settings["pad"], 0, repeated=False)
