"""Caffe's weight fillers (``include/caffe/filler.hpp``), for nets built without a caffemodel.

The distributions and fan computations are Caffe's; the random streams are torch's (seeded by
``caffenorm.load(..., seed=)``), so values are reproducible here but not equal to Caffe's draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from google.protobuf.message import Message
from torch import Tensor

from caffenorm.errors import LayerConfigError, format_shape

__all__ = ["FILLER_TYPES", "check_filler", "fill"]

FILLER_TYPES = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear")

_FLT_MAX = 3.4028234663852886e38


def check_filler(filler: Message, shape: Sequence[int] | None = None) -> None:
    """Caffe's checks of a ``FillerParameter`` (``filler.hpp`` and the ``caffe_rng_*`` it calls),
    for a blob of ``shape``, made when the layer is built -- whether or not the filler will run
    (Caffe runs every filler at set-up, before a caffemodel overwrites the blobs):

    * ``type`` is one of :data:`FILLER_TYPES`;
    * ``sparse`` is -1 except for ``gaussian``, where it is >= -1 and, when >= 0, at most the
      blob's first dimension (it is the mean number of non-zero weights per output:
      ``sparse / num_outputs`` is a probability);
    * ``uniform``: ``min <= max``, both finite, ``max - min`` within float32 (``CHECK_LE(a, b)``);
    * ``gaussian``: ``std > 0`` (``CHECK_GT(sigma, 0)``; NaN fails it too);
    * ``xavier``, ``msra``, ``positive_unitball``: a non-empty blob (they divide by its fans);
    * ``bilinear``: a 4-D blob with square kernels.

    ``value`` (constant) and ``mean`` (gaussian) may be anything, NaN included, as in Caffe.  An
    empty blob is accepted by the fillers that have nothing to compute on it (Caffe CHECKs
    ``count > 0`` for every filler).

    Raises:
        LayerConfigError: naming the filler, the field, its value and what is allowed.
    """
    kind = filler.type
    if kind not in FILLER_TYPES:
        raise LayerConfigError(f"filler type {kind!r} is not supported; use {', '.join(FILLER_TYPES)}")
    dims = tuple(int(d) for d in shape) if shape is not None else None
    count = math.prod(dims) if dims is not None else None
    if kind == "gaussian":
        if filler.sparse < -1:
            raise LayerConfigError(
                f"gaussian filler: sparse={filler.sparse} is not allowed; use -1 (dense) or the mean number of "
                "non-zero weights per output (>= 0)"
            )
        if filler.sparse >= 0 and dims is not None and count:
            if not dims:
                raise LayerConfigError("gaussian filler: sparse needs a blob with at least one axis (Caffe CHECKs it)")
            if filler.sparse > dims[0]:
                raise LayerConfigError(
                    f"gaussian filler: sparse={filler.sparse} is more than the blob's {dims[0]} outputs (shape "
                    f"{format_shape(dims)}); sparse / num_outputs is a probability, so use at most {dims[0]}"
                )
        if not filler.std > 0:  # NaN too
            raise LayerConfigError(
                f"gaussian filler: std={filler.std} is not allowed; Caffe requires std > 0 (CHECK_GT(sigma, 0))"
            )
    elif filler.sparse != -1:
        raise LayerConfigError(
            f"{kind} filler: sparse={filler.sparse} is not supported (Caffe CHECKs sparse == -1; only the gaussian "
            "filler is sparse); remove sparse"
        )
    if kind == "uniform":
        lo, hi = filler.min, filler.max
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise LayerConfigError(f"uniform filler: min={lo} and max={hi} must be finite numbers")
        if lo > hi:
            raise LayerConfigError(
                f"uniform filler: min={lo} is greater than max={hi}; Caffe requires min <= max (swap them?)"
            )
        if hi - lo > _FLT_MAX:
            raise LayerConfigError(
                f"uniform filler: max - min = {hi - lo:g} is beyond the float32 range; use a narrower [min, max]"
            )
    elif kind in ("xavier", "msra", "positive_unitball") and count == 0:
        raise LayerConfigError(
            f"{kind} filler: the blob of shape {format_shape(dims)} is empty, and the filler divides by its size "
            "(Caffe CHECKs count > 0); check the sizes that give it (num_output, the bottom's channels)"
        )
    elif kind == "bilinear" and dims is not None and (len(dims) != 4 or dims[2] != dims[3]):
        raise LayerConfigError(
            f"bilinear filler: needs a 4-D blob with square kernels, got {format_shape(dims)} (Caffe CHECKs "
            "num_axes == 4 and width == height); use it on a Deconvolution weight with kernel_h == kernel_w"
        )


def _fans(t: Tensor) -> tuple[float, float]:
    count = t.numel()
    fan_in = count / t.shape[0] if t.dim() >= 1 and t.shape[0] else count
    fan_out = count / t.shape[1] if t.dim() >= 2 and t.shape[1] else count
    return fan_in, fan_out


def _variance_n(t: Tensor, filler: Message) -> float:
    fan_in, fan_out = _fans(t)
    mode = filler.DESCRIPTOR.fields_by_name["variance_norm"].enum_type.values_by_number[filler.variance_norm].name
    return {"FAN_IN": fan_in, "FAN_OUT": fan_out, "AVERAGE": (fan_in + fan_out) / 2}[mode]


@torch.no_grad()
def fill(t: Tensor, filler: Message, generator: torch.Generator) -> None:
    """Fill ``t`` in place as Caffe's filler of ``filler.type`` would (after :func:`check_filler`,
    which refuses what Caffe refuses)."""
    check_filler(filler, tuple(t.shape))
    kind = filler.type
    if t.numel() == 0:
        return  # nothing to fill (and no fan to divide by)
    if kind == "constant":
        t.fill_(filler.value)
    elif kind == "uniform":
        t.uniform_(filler.min, filler.max, generator=generator)
    elif kind == "gaussian":
        t.normal_(filler.mean, filler.std, generator=generator)
        if filler.sparse >= 0 and t.dim() >= 1 and t.shape[0]:
            # Caffe keeps each weight with probability sparse / num_outputs.
            keep = torch.rand(t.shape, generator=generator) < filler.sparse / t.shape[0]
            t.mul_(keep.to(t.dtype))
    elif kind == "positive_unitball":
        t.uniform_(0.0, 1.0, generator=generator)
        rows = t.view(t.shape[0], -1) if t.dim() >= 1 and t.numel() else t.view(1, -1)
        rows.div_(rows.sum(dim=1, keepdim=True))
    elif kind == "xavier":
        scale = math.sqrt(3.0 / _variance_n(t, filler))
        t.uniform_(-scale, scale, generator=generator)
    elif kind == "msra":
        t.normal_(0.0, math.sqrt(2.0 / _variance_n(t, filler)), generator=generator)
    elif kind == "bilinear":
        f = math.ceil(t.shape[3] / 2.0)
        c = (t.shape[3] - 1) / (2.0 * f)
        x = torch.arange(t.shape[3], dtype=torch.float64)
        w = 1 - torch.abs(x / f - c)
        t.copy_((w.view(-1, 1) * w.view(1, -1)).expand_as(t))
