"""ONNX exporter of Caffe's InnerProduct (``inner_product_layer.cpp``)."""

from __future__ import annotations

from caffenorm.caffe.graph import Node
from caffenorm.caffe.layers.inner_product import InnerProduct
from caffenorm.export.onnx._context import ExportContext
from caffenorm.export.onnx._registry import register_exporter

__all__ = ["export_inner_product"]


@register_exporter(InnerProduct)
def export_inner_product(node: Node, ctx: ExportContext) -> None:
    """``Flatten(axis)`` to ``M x K``, ``Gemm`` (``transB=1``, or 0 with ``transpose: true``) with
    the bias, then ``Reshape`` to ``shape[:axis] + (num_output,)`` when that is not 2-D.

    Caffe views the bottom as ``count(0, axis) x count(axis)`` (ONNX's Flatten with the same axis)
    and multiplies by the weight ``(num_output, K)`` transposed, or by ``(K, num_output)`` as is
    with ``transpose``.
    """
    ip = node.module
    assert isinstance(ip, InnerProduct)
    x = ctx.input(0)
    source = ctx.in_shape(0)
    axis = ip.axis % len(source)
    rows = ctx.op("Flatten", x, axis=axis) if not (axis == 1 and len(source) == 2) else x
    inputs = [rows, ctx.tensor(ip.weight, "weight")]
    if ip.bias is not None:
        inputs.append(ctx.tensor(ip.bias, "bias"))
    target = ctx.out_shape(0)
    if axis == 1:
        ctx.op("Gemm", *inputs, top=0, transB=0 if ip.transpose else 1)
        return
    product = ctx.op("Gemm", *inputs, transB=0 if ip.transpose else 1)
    ctx.reshape(product, (None, ip.num_output), target, top=0)
