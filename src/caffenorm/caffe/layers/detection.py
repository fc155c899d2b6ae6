"""Converters of SSD's detection layers (weiliu89/caffe, branch ``ssd``): PriorBox and
DetectionOutput.  The math is in :mod:`caffenorm.caffe.ops.detection`."""

from __future__ import annotations

from caffenorm.caffe.ops.detection import DetectionOutput, PriorBox
from caffenorm.caffe.registry import BuildContext, register_layer
from caffenorm.caffe.spec import LayerSpec

__all__ = ["convert_detection_output", "convert_prior_box"]


@register_layer("PriorBox")
def convert_prior_box(layer: LayerSpec, ctx: BuildContext) -> PriorBox:
    """Bottoms (feature map, image); only their shapes are read, at every forward."""
    ctx.require_bottoms(2)
    return PriorBox.from_param(layer.param.prior_box_param)


@register_layer("DetectionOutput")
def convert_detection_output(layer: LayerSpec, ctx: BuildContext) -> DetectionOutput:
    """Bottoms (loc, conf, prior); a third-party ``save_output_param`` is ignored with a warning
    (it only writes files)."""
    ctx.require_bottoms(3)
    return DetectionOutput.from_param(layer.param.detection_output_param)
