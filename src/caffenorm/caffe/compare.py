"""Layer-by-layer parity check against OpenCV dnn 4.x, the check every converter user ends up writing.

Both sides get the same input; every layer's first output is compared, and the first layer whose
output diverges is named, with the known reason when OpenCV is the one that is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from caffenorm.caffe.layers.input import InputLayer
from caffenorm.caffe.net import Net
from caffenorm.caffe.spec import LayerSpec
from caffenorm.errors import CaffeNormError

__all__ = ["LayerComparison", "compare_with_opencv", "opencv_known_difference"]


@dataclass(frozen=True)
class LayerComparison:
    """One layer's output on both sides: ``max_diff`` = max |ours - opencv|, ``scale`` = max |ours|."""

    name: str
    type: str
    shape: tuple[int, ...]
    max_diff: float | None
    scale: float
    note: str = ""

    def diverges(self, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
        return self.max_diff is not None and not self.max_diff <= atol + rtol * self.scale


def opencv_known_difference(spec: LayerSpec) -> str:
    """Why OpenCV dnn 4.x's Caffe importer computes this layer differently from Caffe, if known."""
    p = spec.param
    if spec.type == "LRN" and p.lrn_param.norm_region == p.lrn_param.ACROSS_CHANNELS and p.lrn_param.k != 1:
        return f"OpenCV's Caffe importer ignores LRN's k (uses 1, the prototxt says {p.lrn_param.k:g})"
    if spec.type == "BatchNorm" and p.batch_norm_param.HasField("use_global_stats") and not p.batch_norm_param.use_global_stats:
        return "OpenCV replaces BatchNorm with use_global_stats: false by per-sample MVN"
    if spec.type == "Pooling" and p.pooling_param.round_mode == p.pooling_param.FLOOR:
        return "OpenCV ignores Pooling's round_mode: FLOOR"
    return ""


def compare_with_opencv(
    net: Net, prototxt: str | os.PathLike[str], caffemodel: str | os.PathLike[str], inputs: Mapping[str, np.ndarray]
) -> list[LayerComparison]:
    """Run ``net`` and OpenCV's Caffe importer on ``inputs``; compare every layer's first output."""
    try:
        import cv2
    except ImportError:
        raise CaffeNormError("--compare opencv needs OpenCV: pip install 'opencv-python-headless<5'") from None
    specs = [s for s in net.layer_specs if not isinstance(net.layer(s.name), InputLayer) and s.tops]
    try:
        cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
        cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        cv_net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        cv_net.enableFusion(False)  # fused layers have no output of their own to compare
        if hasattr(cv_net, "enableWinograd"):
            cv_net.enableWinograd(False)  # its Winograd 3x3 convolutions lose ~5e-6 of the output range
        for name, value in inputs.items():
            cv_net.setInput(np.ascontiguousarray(value, dtype=np.float32), name)
        known = set(cv_net.getLayerNames())
        names = [s.name for s in specs if s.name in known]
        cv_out = dict(zip(names, cv_net.forward(names))) if names else {}
    except cv2.error as err:
        message = " ".join(str(err).split())
        raise CaffeNormError(f"OpenCV dnn {cv2.__version__} cannot run {prototxt}: {message}") from None

    net.record_layer_outputs = True
    try:
        with torch.no_grad():
            net(**{k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in inputs.items()})
    finally:
        net.record_layer_outputs = False
    rows = []
    for spec in specs:
        ours = net.layer_outputs[spec.name][0].detach().cpu().double().numpy()
        theirs = cv_out.get(spec.name)
        scale = float(np.max(np.abs(ours))) if ours.size else 0.0
        if theirs is None:
            rows.append(LayerComparison(spec.name, spec.type, ours.shape, None, scale, "no such layer in OpenCV"))
            continue
        theirs = np.asarray(theirs, dtype=np.float64)
        if theirs.size != ours.size:
            note = f"OpenCV's output has shape {theirs.shape}"
            rows.append(LayerComparison(spec.name, spec.type, ours.shape, float("inf"), scale, note))
            continue
        diff = float(np.max(np.abs(ours.ravel() - theirs.ravel()))) if ours.size else 0.0
        rows.append(LayerComparison(spec.name, spec.type, ours.shape, diff, scale, opencv_known_difference(spec)))
    return rows
