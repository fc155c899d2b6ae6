"""ONNX exporters of SSD's detection layers: PriorBox (a constant) and DetectionOutput (refused)."""

from __future__ import annotations

import torch

from caffenorm.caffe.graph import Node
from caffenorm.caffe.layers.detection import DetectionOutput, PriorBox
from caffenorm.export.onnx._context import ExportContext, concrete
from caffenorm.export.onnx._registry import register_exporter

__all__ = ["export_detection_output", "export_prior_box"]


@register_exporter(PriorBox)
def export_prior_box(node: Node, ctx: ExportContext) -> None:
    """A ``Constant``: caffenorm's priors for the exported input's H x W (the model then fixes H and
    W; the batch stays dynamic, and the priors never depend on it).

    PriorBox reads only the shapes of its bottoms (the feature map's and the image's H x W), which
    are fixed in the exported graph, so its output is computed once, by caffenorm's own
    ``prior_box`` kernel, and stored.  Feeding the ONNX model another spatial size would not
    recompute it (nor fit the convolutions' shapes declared in the graph).
    """
    prior = node.module
    assert isinstance(prior, PriorBox)
    with torch.no_grad():
        feature = torch.zeros(concrete(ctx.in_shape(0), 1))
        image = torch.zeros(concrete(ctx.in_shape(1), 1))
        value = prior(feature, image).float().numpy()
    from onnx import numpy_helper

    ctx.op("Constant", top=0, value=numpy_helper.from_array(value, "priors"))
    shape = tuple(ctx.in_shape(1))
    ctx.notes.append(
        f"PriorBox {node.name!r}: a constant for the input size {'x'.join(map(str, shape[2:]))} "
        "(H and W are fixed; the batch is not)"
    )


@register_exporter(DetectionOutput, refuses=True)
def export_detection_output(node: Node, ctx: ExportContext) -> None:
    """Refused: ONNX's ``NonMaxSuppression`` is not Caffe's NMS; cut the net before it
    (``caffenorm.load(..., outputs=[<its bottoms>])``) and run DetectionOutput outside.

    Caffe's DetectionOutput keeps, per image and class, the boxes above ``confidence_threshold``,
    the ``top_k`` best, then greedy NMS with its own overlap (``JaccardOverlap`` of the decoded,
    *unclipped* boxes, no +1, 0 for non-overlapping) and the adaptive threshold (``eta``), then
    ``keep_top_k`` across classes, in Caffe's row order (image, label ascending, score
    descending), and one ``[i, -1, ...]`` row per image when nothing is kept.  ONNX's
    NonMaxSuppression selects per batch and class only, has no ``eta``, no cross-class
    ``keep_top_k`` ordering and leaves overlap details to the runtime, so a graph of standard ops
    would at best be a near-copy; no file is written rather than a slightly different one.
    """
    bottoms = ", ".join(repr(b) for b in node.bottoms)
    raise ctx.error(
        "DetectionOutput is not exported: ONNX's NonMaxSuppression differs from Caffe's NMS (selection per "
        "class only, no adaptive eta, no keep_top_k across classes in Caffe's row order), so the file would "
        "not compute what Caffe computes. Cut the net before it and run DetectionOutput outside the ONNX "
        f"model: caffenorm.load(prototxt, caffemodel, outputs=[{bottoms}]) keeps everything up to its "
        "bottoms, and caffenorm.caffe.ops.detection.detection_output (or the layer's module, "
        f"net.layer({node.name!r}) of the uncut net) computes Caffe's detections from them"
    )
