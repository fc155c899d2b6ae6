"""ONNX exporter of Caffe's Eltwise (``eltwise_layer.cpp``)."""

from __future__ import annotations

from caffenorm.caffe.graph import Node
from caffenorm.caffe.layers.eltwise import Eltwise
from caffenorm.export.onnx._context import ExportContext
from caffenorm.export.onnx._registry import register_exporter

__all__ = ["export_eltwise"]


@register_exporter(Eltwise)
def export_eltwise(node: Node, ctx: ExportContext) -> None:
    """SUM: ``Add`` chain in bottom order, each bottom multiplied (``Mul``) by its coefficient (when not 1);
    PROD: ``Mul`` chain; MAX: ``Greater`` + ``Where`` chain with Caffe's tie rule.

    MAX is Caffe's running comparison, not ONNX's ``Max``: ``x0 > x1 ? x0 : x1`` (a tie between
    the first two, or a NaN, takes ``x1``), then each later input replaces the running maximum
    only if strictly greater (a later tie keeps the earlier one).
    """
    elt = node.module
    assert isinstance(elt, Eltwise)
    xs = [ctx.input(j) for j in range(len(node.bottoms))]
    last = len(xs) - 1
    if elt.operation == "SUM":
        coeff = elt.coeff or (1.0,) * len(xs)
        out = xs[0] if coeff[0] == 1 else ctx.op("Mul", xs[0], ctx.const(coeff[0]))
        for i, (c, x) in enumerate(zip(coeff[1:], xs[1:]), start=1):
            term = x if c == 1 else ctx.op("Mul", x, ctx.const(c))
            out = ctx.op("Add", out, term, top=0 if i == last else None)
        return
    if elt.operation == "PROD":
        out = xs[0]
        for i, x in enumerate(xs[1:], start=1):
            out = ctx.op("Mul", out, x, top=0 if i == last else None)
        return
    out = ctx.op("Where", ctx.op("Greater", xs[0], xs[1]), xs[0], xs[1], top=0 if last == 1 else None)
    for i, x in enumerate(xs[2:], start=2):
        out = ctx.op("Where", ctx.op("Greater", x, out), x, out, top=0 if i == last else None)
