"""Caffe's weight fillers (``include/caffe/filler.hpp``), for nets built without a caffemodel.

The distributions and fan computations are Caffe's; the random streams are torch's (seeded by
``caffenorm.load(..., seed=)``), so values are reproducible here but not equal to Caffe's draws.
"""

from __future__ import annotations

import math

import torch
from google.protobuf.message import Message
from torch import Tensor

from caffenorm.errors import LayerConfigError

__all__ = ["FILLER_TYPES", "check_filler", "fill"]

FILLER_TYPES = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear")


def check_filler(filler: Message) -> None:
    if filler.type not in FILLER_TYPES:
        raise LayerConfigError(f"filler type {filler.type!r} is not supported; use {', '.join(FILLER_TYPES)}")


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
    """Fill ``t`` in place as Caffe's filler of ``filler.type`` would."""
    kind = filler.type
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
        if t.dim() != 4 or t.shape[2] != t.shape[3]:
            raise LayerConfigError(f"bilinear filler needs a 4-D blob with square kernels, got {tuple(t.shape)}")
        if filler.sparse != -1:
            raise LayerConfigError("the bilinear filler does not support sparse (Caffe CHECKs sparse == -1)")
        f = math.ceil(t.shape[3] / 2.0)
        c = (t.shape[3] - 1) / (2.0 * f)
        x = torch.arange(t.shape[3], dtype=torch.float64)
        w = 1 - torch.abs(x / f - c)
        t.copy_((w.view(-1, 1) * w.view(1, -1)).expand_as(t))
    else:
        check_filler(filler)
