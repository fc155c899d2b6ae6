"""The ``LRN`` module: configuration only; the math is :func:`caffenorm.functional.lrn`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from caffenorm.functional._checks import check_real
from caffenorm.functional.lrn import NormRegion, check_local_size, lrn, parse_norm_region
from caffenorm.nn._base import CaffeLayer, setting_repr

__all__ = ["LRN"]

# Keep the functional a single node under torch.fx tracing (its input checks need real tensors).
torch.fx.wrap("lrn")


class LRN(CaffeLayer):
    r"""Caffe's local response normalization (``lrn_layer.cpp``), both regions.

    ACROSS_CHANNELS, with :math:`p = (n-1)/2` and the window clipped to the existing channels:

    .. math:: y_{c} = x_{c}\Big(k + \frac{\alpha}{n}\sum_{c'=c-p}^{c+p} x_{c'}^2\Big)^{-\beta}

    WITHIN_CHANNEL, over the :math:`n\times n` spatial window, zero padded:

    .. math:: y_{h,w} = x_{h,w}\Big(1 + \frac{\alpha}{n^2}\sum_{|i|,|j|\le p} x_{h+i,w+j}^2\Big)^{-\beta}

    Caffe builds WITHIN_CHANNEL from Power, AVE Pooling and Power(shift=1) layers, so ``k`` is
    ignored there and the divisor is always :math:`n^2`, padding included.  Differs from
    :class:`torch.nn.LocalResponseNorm` (ACROSS only, and even sizes accepted with an asymmetric
    window) and from converters that drop ``k`` or turn WITHIN into ACROSS.

    For non-finite inputs ACROSS_CHANNELS reproduces Caffe's running window sum: a NaN or inf at
    channel ``r`` makes every channel after ``r + p`` NaN at that position.

    Args:
        local_size: window size ``n``, a positive odd integer.  Default: 5
        alpha: scaling parameter.  Default: 1.0 (Caffe's default, unlike torch's 1e-4)
        beta: exponent.  Default: 0.75
        k: additive constant, ACROSS_CHANNELS only.  Default: 1.0
        norm_region: ``"ACROSS_CHANNELS"`` (0) or ``"WITHIN_CHANNEL"`` (1).  Default: ACROSS_CHANNELS

    Shape:
        - Input: :math:`(N, C, H, W)` (Caffe requires 4-D)
        - Output: same shape as the input

    Example::

        >>> lrn = caffenorm.LRN(local_size=5, alpha=1e-4, beta=0.75, k=2.0)
        >>> y = lrn(torch.randn(2, 96, 27, 27))
    """

    caffe_type = "LRN"
    same_shape = True

    def __init__(
        self,
        local_size: int = 5,
        alpha: float = 1.0,
        beta: float = 0.75,
        k: float = 1.0,
        norm_region: str | int | NormRegion = NormRegion.ACROSS_CHANNELS,
    ) -> None:
        super().__init__()
        self.local_size = check_local_size(local_size)
        self.alpha = check_real("LRN", "alpha", alpha)
        self.beta = check_real("LRN", "beta", beta)
        self.k = check_real("LRN", "k", k)
        self.norm_region = parse_norm_region(norm_region)

    def forward(self, input: Tensor) -> Tensor:
        return lrn(input, self.local_size, self.alpha, self.beta, self.k, self.norm_region)

    def caffe_settings(self) -> dict[str, Any]:
        return {
            "local_size": self.local_size,
            "alpha": self.alpha,
            "beta": self.beta,
            "k": self.k,
            "norm_region": NormRegion(self.norm_region).name,
        }

    def extra_repr(self) -> str:
        return (
            f"local_size={self.local_size}, alpha={setting_repr(self.alpha)}, beta={setting_repr(self.beta)}, "
            f"k={setting_repr(self.k)}, "
            f"norm_region={self.norm_region.name}"
        )
