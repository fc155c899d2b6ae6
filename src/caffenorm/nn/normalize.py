"""The ``Normalize`` module (ParseNet / SSD L2 normalisation)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from caffenorm.errors import LayerConfigError
from caffenorm.functional._checks import check_real
from caffenorm.functional.normalize import normalize
from caffenorm.nn._base import CaffeLayer, setting_repr

__all__ = ["Normalize"]

torch.fx.wrap("normalize")  # one node under torch.fx tracing


class Normalize(CaffeLayer):
    r"""SSD's ``Normalize`` layer (weiliu89/caffe ``normalize_layer.cpp``).

    .. math:: y_{c} = s_{c}\, \frac{x_{c}}{\sqrt{\sum x^2 + \epsilon}}

    The sum runs over :math:`C \times H \times W` per sample when ``across_spatial``, over
    :math:`C` per position otherwise.  ``eps`` is *inside* the sqrt, unlike
    :func:`torch.nn.functional.normalize` (``x / max(||x||, eps)``) and mmdetection's ``L2Norm``
    (``x / (||x|| + eps)``): a zero vector gives 0, and near-zero vectors are amplified by at
    most :math:`1/\sqrt{\epsilon}`.

    Backward: the default is the true gradient.  Caffe's own backward,
    :math:`dx = s_c (g - x \langle x, g\rangle / n^2) / n`, is only right when all channel
    scales are equal, and its scale gradient :math:`\sum(y g)/s` is NaN at :math:`s = 0`;
    ``caffe_backward=True`` uses Caffe's formula (equal to Caffe's to rounding), for parity
    with Caffe training.

    Args:
        channels: number of channels ``C``.
        across_spatial: normalise each sample over C*H*W jointly.  Default: True (caffe.proto;
            SSD prototxts set False)
        channel_shared: one scale for all channels (blob shape ``()``), else one per channel
            (``(C,)``).  Default: True
        eps: added inside the sqrt, must be >= 0.  Default: 1e-10
        scale: initial value of the scale blob (Caffe's ``scale_filler`` value, 1.0 without a
            filler; SSD uses 20).  Default: 1.0
        caffe_backward: use Caffe's approximate backward.  Default: False

    Shape:
        - Input: :math:`(N, C)`, :math:`(N, C, H)` or :math:`(N, C, H, W)` (Caffe reads at most 4 axes)
        - Output: same shape as the input

    A channel-shared layer has a scalar blob and, like Caffe's, fits any channel count.
    """

    caffe_type = "Normalize"
    blob_attrs = ("weight",)
    same_shape = True

    def __init__(
        self,
        channels: int,
        across_spatial: bool = True,
        channel_shared: bool = True,
        eps: float = 1e-10,
        scale: float = 1.0,
        caffe_backward: bool = False,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise LayerConfigError(f"Normalize: channels={channels!r} must be a positive integer")
        self.channels = channels
        self.across_spatial = bool(across_spatial)
        self.channel_shared = bool(channel_shared)
        self.eps = check_real("Normalize", "eps", eps, minimum=0.0)
        self.caffe_backward = bool(caffe_backward)
        init = check_real("Normalize", "scale", scale)
        shape = () if self.channel_shared else (channels,)
        self.weight = nn.Parameter(torch.full(shape, init, device=device, dtype=dtype))

    def forward(self, input: Tensor) -> Tensor:
        return normalize(input, self.weight, self.across_spatial, self.eps, self.caffe_backward)

    def caffe_settings(self) -> dict[str, Any]:
        return {"across_spatial": self.across_spatial, "channel_shared": self.channel_shared, "eps": self.eps}

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, across_spatial={self.across_spatial}, channel_shared={self.channel_shared}, "
            f"eps={setting_repr(self.eps)}, caffe_backward={self.caffe_backward}"
        )
