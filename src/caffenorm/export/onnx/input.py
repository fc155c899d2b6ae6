"""ONNX exporter of the layers whose tops the caller feeds: Input and the data layers."""

from __future__ import annotations

from caffenorm.caffe.graph import Node
from caffenorm.caffe.layers.input import InputLayer
from caffenorm.export.onnx._context import Batch, ExportContext
from caffenorm.export.onnx._registry import register_exporter

__all__ = ["export_input"]


@register_exporter(InputLayer)
def export_input(node: Node, ctx: ExportContext) -> None:
    """A graph input per top (float32, the declared shape, the batch axis named ``batch`` unless
    ``dynamic_batch=False``); data layers' tops are inputs too (their transform_param is not part
    of the graph: apply ``net.input_transform()`` before feeding it)."""
    for top, shape in zip(node.tops, node.top_shapes):
        if shape is None or None in shape or len(shape) == 0:
            raise ctx.error(
                f"input {top!r} has no declared shape; load the net with input_shapes={{{top!r}: (N, C, H, W)}}"
            )
        dims = [int(d) for d in shape]  # type: ignore[arg-type]
        template = (Batch(1), *dims[1:]) if ctx.dynamic_batch else tuple(dims)
        ctx.set_input(top, template)
