"""ONNX exporters of the loss family: refused (they measure a net against labels while training
or evaluating; a deployed model has none of them)."""

from __future__ import annotations

from caffenorm.caffe.graph import Node
from caffenorm.caffe.layers.loss import Accuracy, EuclideanLoss, SoftmaxWithLoss
from caffenorm.export.onnx._context import ExportContext
from caffenorm.export.onnx._registry import register_exporter

__all__ = ["export_loss"]


@register_exporter(SoftmaxWithLoss, EuclideanLoss, Accuracy, refuses=True)
def export_loss(node: Node, ctx: ExportContext) -> None:
    """Refused: a loss or accuracy layer compares the net with labels (training and evaluation,
    not inference); export the deploy net, or cut before it with ``load(..., outputs=[...])``."""
    raise ctx.error(
        f"{node.type} is a training/evaluation layer (it compares the net's output with labels) and is not "
        "exported; export the deploy prototxt, or cut the net before it: "
        f"caffenorm.load(prototxt, caffemodel, outputs=[{', '.join(repr(b) for b in node.bottoms[:1])}])"
    )
