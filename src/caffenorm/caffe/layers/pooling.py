"""Converter of Caffe's Pooling layer (``pooling_layer.cpp``), computed by
:func:`~caffenorm.caffe.ops.pooling.caffe_pool2d`.

What the converter adds to the op:

* the field checks of ``LayerSetUp`` (:func:`resolve_pooling_param`), raised with the layer's
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

from caffenorm.caffe.ops.pooling import _FLT_MAX, caffe_pool2d, pooled_size, resolve_pooling_param
from caffenorm.caffe.registry import BuildContext, register_layer
from caffenorm.caffe.spec import LayerSpec
from caffenorm.errors import CaffeNormError, LayerConfigError, UnsupportedLayerError
from caffenorm.nn._base import CaffeLayer

__all__ = ["Pooling", "convert_pooling"]

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

    def extra_repr(self) -> str:
        return (
            f"pool={self.pool}, kernel_size={self.kernel_size}, stride={self.stride}, pad={self.pad}, "
            f"round_mode={self.round_mode}, global_pooling={self.global_pooling}, top_mask={self.top_mask}"
        )


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
        raise ctx.error(str(err).removeprefix("Pooling: "), type(err)) from None
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
    return Pooling(
        r["method"],
        None if r["global_pooling"] else r["kernel_hw"],
        r["stride_hw"],
        r["pad_hw"],
        r["round_mode"],
        r["global_pooling"],
        top_mask=len(layer.tops) == 2,
    )
