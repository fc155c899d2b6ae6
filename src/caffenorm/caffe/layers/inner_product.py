"""Converter of Caffe's InnerProduct layer (``inner_product_layer.cpp``).

Caffe's facts: the bottom is viewed as a matrix ``M x K`` with ``M = count(0, axis)`` and
``K = count(axis)`` (``axis`` default 1, negative counts from the end, re-resolved against each
input's rank in ``Reshape``); the top has shape ``bottom.shape[:axis] + (num_output,)``.  The
weight blob is ``(num_output, K)``, or ``(K, num_output)`` with ``transpose: true``; the bias
blob is ``(num_output,)``.  Both fillers default to constant 0.  An input whose ``K`` differs
from the set-up one is refused ("Input size incompatible with inner product parameters").
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caffenorm.caffe.registry import BuildContext, register_layer, register_writer, write_fields
from caffenorm.caffe.spec import LayerSpec
from caffenorm.errors import InputShapeError, LayerConfigError
from caffenorm.nn._base import CaffeLayer

__all__ = ["InnerProduct", "convert_inner_product", "write_inner_product"]


class InnerProduct(CaffeLayer):
    """Caffe's InnerProduct: ``y = x.reshape(M, K) @ W^T + b`` (``@ W`` with ``transpose``),
    reshaped to ``x.shape[:axis] + (num_output,)``.

    Blobs (Caffe order): weight ``(num_output, K)`` (``(K, num_output)`` with ``transpose``), bias
    ``(num_output,)`` if ``bias_term``.
    """

    caffe_type = "InnerProduct"
    blob_attrs = ("weight", "bias")

    def __init__(
        self, num_output: int, in_features: int, axis: int = 1, bias_term: bool = True, transpose: bool = False
    ) -> None:
        super().__init__()
        if num_output < 1 or in_features < 0:
            raise LayerConfigError(
                f"InnerProduct: num_output={num_output} must be >= 1 and in_features={in_features} >= 0"
            )
        self.num_output, self.in_features, self.axis = int(num_output), int(in_features), int(axis)
        self.bias_term, self.transpose = bool(bias_term), bool(transpose)
        shape = (self.in_features, self.num_output) if self.transpose else (self.num_output, self.in_features)
        self.weight = nn.Parameter(torch.zeros(shape))
        self.bias = nn.Parameter(torch.zeros(self.num_output)) if self.bias_term else None

    def forward(self, x: Tensor) -> Tensor:
        ndim = x.dim()
        if not -ndim <= self.axis < ndim:
            raise InputShapeError(
                f"InnerProduct: axis={self.axis} is out of range for an input of shape {tuple(x.shape)}"
            )
        axis = self.axis % ndim
        lead = tuple(x.shape[:axis])
        k = math.prod(x.shape[axis:])
        if k != self.in_features:
            raise InputShapeError(
                f"InnerProduct: the input of shape {tuple(x.shape)} has {k} values from axis {self.axis} on; the "
                f"layer was set up for {self.in_features} (weight {tuple(self.weight.shape)})"
            )
        # Explicit M (not -1) so that an empty batch reshapes too.
        rows = x.reshape(math.prod(lead), k)
        weight = self.weight.t() if self.transpose else self.weight
        return F.linear(rows, weight, self.bias).reshape(*lead, self.num_output)

    def caffe_settings(self) -> dict[str, Any]:
        return {
            "num_output": self.num_output,
            "bias_term": self.bias_term,
            "axis": self.axis,
            "transpose": self.transpose,
        }

    def extra_repr(self) -> str:
        return (
            f"num_output={self.num_output}, in_features={self.in_features}, axis={self.axis}, "
            f"bias_term={self.bias_term}, transpose={self.transpose}"
        )


@register_layer("InnerProduct")
def convert_inner_product(layer: LayerSpec, ctx: BuildContext) -> InnerProduct:
    """Caffe's InnerProduct: ``axis``, ``transpose``, ``bias_term`` and the two fillers."""
    ctx.require_bottoms(1)
    if len(layer.tops) != 1:
        raise ctx.error(f"has {len(layer.tops)} tops; Caffe's InnerProduct takes exactly 1")
    p = layer.param.inner_product_param
    if p.num_output < 1:
        # The field has no default; Caffe would build an empty (0, K) weight and fail in its GEMM.
        raise ctx.error(f"num_output={p.num_output} is not allowed; set num_output > 0", LayerConfigError)
    shape = ctx.shape(0)
    if not -len(shape) <= p.axis < len(shape):
        raise ctx.error(
            f"axis={p.axis} is out of range for the {len(shape)}-D bottom {shape}; allowed "
            f"{-len(shape)}..{len(shape) - 1}",
            LayerConfigError,
        )
    k = math.prod(shape[p.axis % len(shape):])
    ctx.check_elements((p.num_output, k), "weight blob")
    module = InnerProduct(p.num_output, k, p.axis, p.bias_term, p.transpose)
    # Caffe always runs both fillers; an unset FillerParameter is constant 0.
    ctx.fill(module.weight, p.weight_filler)
    if module.bias is not None:
        ctx.fill(module.bias, p.bias_filler)
    return module


@register_writer(InnerProduct)
def write_inner_product(module: InnerProduct, layer: Any) -> None:
    """``inner_product_param``: num_output (required: always written), bias_term, axis, transpose
    (a folded layer gains ``bias_term: true``)."""
    param = layer.inner_product_param
    settings = module.caffe_settings()
    write_fields(param, {"num_output": settings.pop("num_output")}, keep_defaults=True)
    write_fields(param, settings)
