"""The ``Scale`` and ``Bias`` modules: learned (or second-input) per-span multipliers and offsets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from caffenorm.errors import InputShapeError, LayerConfigError
from caffenorm.functional._checks import canonical_axis
from caffenorm.functional.batch_norm import bias as bias_fn
from caffenorm.functional.batch_norm import scale as scale_fn
from caffenorm.nn._base import CaffeLayer, as_shape

__all__ = ["Bias", "Scale"]


def _check_axes(layer: str, shape: tuple[int, ...] | None, axis: int, num_axes: int, from_input: bool) -> None:
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise LayerConfigError(f"{layer}: axis={axis!r} must be an integer")
    if isinstance(num_axes, bool) or not isinstance(num_axes, int) or num_axes < -1:
        raise LayerConfigError(f"{layer}: num_axes={num_axes!r} is not allowed; it must be -1 (to the end) or >= 0")
    # With a second input Caffe ignores num_axes: the blob's shape is the input's.
    if not from_input and shape is not None and num_axes != -1 and len(shape) != num_axes:
        raise LayerConfigError(
            f"{layer}: shape={shape} has {len(shape)} axes but num_axes={num_axes}; "
            f"pass num_axes={len(shape)} (or -1 when the blob runs to the last axis)"
        )


def _check_learned_span(layer: str, x: Tensor, blob: Tensor, axis: int, num_axes: int) -> None:
    """Caffe's one-bottom checks: ``axis`` must index the input even for a scalar blob, and with
    ``num_axes: -1`` the blob must cover every axis from ``axis`` on."""
    start = canonical_axis(layer, "axis", axis, x.dim())
    if num_axes == -1 and start + blob.dim() != x.dim():
        raise InputShapeError(
            f"{layer}: num_axes=-1 means the blob covers input axes {start}..{x.dim() - 1}, but it has "
            f"shape {tuple(blob.shape)} and the input has shape {tuple(x.shape)}"
        )


class Scale(CaffeLayer):
    r"""Caffe's Scale (``scale_layer.cpp``): :math:`y = x \odot \gamma\ (+\ \beta)`.

    :math:`\gamma` (and :math:`\beta`) span input axes ``axis .. axis+num_axes-1`` and broadcast
    over the others: ``num_axes=1`` is per channel, ``0`` a scalar (blob shape ``()``), ``-1``
    every axis from ``axis`` on.  Negative ``axis`` counts from the end, as in Caffe.

    Caffe's two-bottom form, where :math:`\gamma` is a second input (e.g. the gates of an SE
    block) and only :math:`\beta` is learned, is ``Scale(shape, scale_from_input=True,
    bias_term=...)`` called as ``scale(x, gamma)``; ``shape`` is then the shape of ``gamma`` (and
    of the bias blob) and ``num_axes`` is ignored, as Caffe ignores it.

    Args:
        shape: shape of the learned blob(s), e.g. ``(C,)``; may be ``None`` only with
            ``scale_from_input=True`` and no bias.
        axis: first input axis the blob spans.  Default: 1
        num_axes: number of axes spanned (``-1``: to the end).  Default: 1
        bias_term: also learn :math:`\beta` (Caffe's fused Bias).  Default: False
        scale_from_input: take :math:`\gamma` from the second forward argument.  Default: False

    Blobs (Caffe order): ``[weight, bias]``, ``[weight]``, or ``[bias]`` / ``[]`` with
    ``scale_from_input``.  ``weight`` starts at 1 and ``bias`` at 0 (Caffe's defaults when no
    filler is given).
    """

    caffe_type = "Scale"
    blob_attrs = ("weight", "bias")
    same_shape = True

    def __init__(
        self,
        shape: int | Sequence[int] | None,
        axis: int = 1,
        num_axes: int = 1,
        bias_term: bool = False,
        *,
        scale_from_input: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dims = None if shape is None else as_shape("Scale", "shape", shape)
        if dims is None and not (scale_from_input and not bias_term):
            raise LayerConfigError(
                "Scale: shape=None is only allowed with scale_from_input=True and bias_term=False; "
                "give the learned blob's shape, e.g. shape=(C,)"
            )
        _check_axes("Scale", dims, axis, num_axes, scale_from_input)
        self.shape, self.axis, self.num_axes = dims, axis, num_axes
        self.bias_term, self.scale_from_input = bool(bias_term), bool(scale_from_input)
        kw = {"device": device, "dtype": dtype}
        self.weight = None if scale_from_input else nn.Parameter(torch.ones(dims, **kw))
        self.bias = nn.Parameter(torch.zeros(dims, **kw)) if bias_term else None

    def forward(self, input: Tensor, scale: Tensor | None = None) -> Tensor:
        if self.scale_from_input:
            if scale is None:
                raise InputShapeError("Scale: built with scale_from_input=True, so call it as scale_layer(x, gamma)")
            if self.bias is not None and tuple(scale.shape) != tuple(self.bias.shape):
                raise InputShapeError(
                    f"Scale: the scale input has shape {tuple(scale.shape)} but the learned bias has "
                    f"{tuple(self.bias.shape)}; Caffe sizes the bias from the scale input"
                )
            gamma = scale
        else:
            if scale is not None:
                raise InputShapeError(
                    "Scale: got a second input but the scale is learned; build with scale_from_input=True"
                )
            gamma = self.weight
            _check_learned_span("Scale", input, gamma, self.axis, self.num_axes)
        return scale_fn(input, gamma, self.bias, self.axis)

    def caffe_settings(self) -> dict[str, Any]:
        return {"axis": self.axis, "num_axes": self.num_axes, "bias_term": self.bias_term}

    def extra_repr(self) -> str:
        return (
            f"shape={self.shape}, axis={self.axis}, num_axes={self.num_axes}, bias_term={self.bias_term}, "
            f"scale_from_input={self.scale_from_input}"
        )


class Bias(CaffeLayer):
    r"""Caffe's Bias (``bias_layer.cpp``): :math:`y = x + \beta`, with Scale's axis rules.

    Caffe's two-bottom form (the bias is a second input) is ``Bias(None, bias_from_input=True)``
    called as ``bias(x, beta)``.

    Args:
        shape: shape of the learned blob, e.g. ``(C,)``; ``None`` with ``bias_from_input``.
        axis: first input axis the blob spans.  Default: 1
        num_axes: number of axes spanned (``-1``: to the end).  Default: 1
        bias_from_input: take :math:`\beta` from the second forward argument.  Default: False

    Blobs (Caffe order): ``[bias]`` (zero-initialised), or ``[]`` with ``bias_from_input``.
    """

    caffe_type = "Bias"
    blob_attrs = ("bias",)
    same_shape = True

    def __init__(
        self,
        shape: int | Sequence[int] | None,
        axis: int = 1,
        num_axes: int = 1,
        *,
        bias_from_input: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dims = None if shape is None else as_shape("Bias", "shape", shape)
        if dims is None and not bias_from_input:
            raise LayerConfigError("Bias: shape=None is only allowed with bias_from_input=True; give e.g. shape=(C,)")
        _check_axes("Bias", dims, axis, num_axes, bias_from_input)
        self.shape, self.axis, self.num_axes = dims, axis, num_axes
        self.bias_from_input = bool(bias_from_input)
        kw = {"device": device, "dtype": dtype}
        self.bias = None if bias_from_input else nn.Parameter(torch.zeros(dims, **kw))

    def forward(self, input: Tensor, bias: Tensor | None = None) -> Tensor:
        if self.bias_from_input:
            if bias is None:
                raise InputShapeError("Bias: built with bias_from_input=True, so call it as bias_layer(x, beta)")
            beta = bias
        else:
            if bias is not None:
                raise InputShapeError("Bias: got a second input but the bias is learned; build with bias_from_input=True")
            beta = self.bias
            _check_learned_span("Bias", input, beta, self.axis, self.num_axes)
        return bias_fn(input, beta, self.axis)

    def caffe_settings(self) -> dict[str, Any]:
        return {"axis": self.axis, "num_axes": self.num_axes}

    def extra_repr(self) -> str:
        return f"shape={self.shape}, axis={self.axis}, num_axes={self.num_axes}, bias_from_input={self.bias_from_input}"
