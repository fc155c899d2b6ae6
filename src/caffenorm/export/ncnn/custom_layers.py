"""ncnn layers that caffenorm writes where ncnn has no native layer computing Caffe's result.

One today: ``CaffeDetectionOutput``, SSD's ``DetectionOutput`` as Caffe computes it (ncnn's own
``DetectionOutput`` orders, cuts and pads its rows differently: see
:mod:`caffenorm.export.ncnn.detection`).  An ncnn net must know the layer before it reads a
``.param`` that uses it:

* Python: ``register_custom_layers(net)`` (this module) before ``net.load_param(...)``; the layer
  runs caffenorm's own :func:`~caffenorm.caffe.ops.detection.detection_output`.
* C++ apps: ``contrib/ncnn/caffe_detection_output.{h,cpp}`` in the caffenorm repository, and
  ``register_caffe_detection_output(net)`` before ``net.load_param(...)``.

``CaffeDetectionOutput`` contract (ncnn has no batch axis: one image per run):

* bottoms: ``loc`` (read flat: ``P * L * 4``, ``L = 1`` with ``share_location`` else
  ``num_classes``), ``conf`` (read flat: ``P * num_classes``, softmaxed), ``prior`` (``h = 2,
  w = P * 4``: boxes, then variances, as ncnn's ``PriorBox`` makes them);
* top: ``w = 6, h = K`` rows ``[label, score, xmin, ymin, xmax, ymax]`` in Caffe's order (labels
  ascending, each by descending score), i.e. Caffe's rows for a batch of one image without the
  image column; when nothing is kept, one row of six -1 (Caffe's ``[0, -1, ..., -1]`` row);
* params: see the ``DETOUT_*`` ids below (defaults those of Caffe's ``DetectionOutputParameter``;
  ``confidence_threshold`` unset is ``-FLT_MAX``).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import torch

from caffenorm.caffe.ops.detection import _FLT_MAX, CODE_TYPES, _check_detection_settings, detection_output
from caffenorm.errors import CaffeNormError, LayerConfigError

__all__ = [
    "CAFFE_DETECTION_OUTPUT",
    "CUSTOM_LAYER_TYPES",
    "check_settings",
    "register_custom_layers",
]

CAFFE_DETECTION_OUTPUT: Final = "CaffeDetectionOutput"
CUSTOM_LAYER_TYPES: Final = (CAFFE_DETECTION_OUTPUT,)

# CaffeDetectionOutput's param ids (ncnn .param ``id=value``).
DETOUT_NUM_CLASSES: Final = 0
DETOUT_SHARE_LOCATION: Final = 1  # default 1
DETOUT_BACKGROUND_LABEL_ID: Final = 2  # default 0
DETOUT_NMS_THRESHOLD: Final = 3  # default 0.3
DETOUT_TOP_K: Final = 4  # default -1: all
DETOUT_ETA: Final = 5  # default 1
DETOUT_KEEP_TOP_K: Final = 6  # default -1: all
DETOUT_CONFIDENCE_THRESHOLD: Final = 7  # default -FLT_MAX: keep a box iff score > threshold
DETOUT_CODE_TYPE: Final = 8  # Caffe's PriorBoxParameter.CodeType numbers (CODE_TYPES); default 2
DETOUT_VARIANCE_ENCODED_IN_TARGET: Final = 9  # default 0


# ncnn holds raw pointers to the Python layer objects it creates; they must stay referenced here
# until ncnn's destroyer releases them.
_ALIVE: dict[int, Any] = {}


def detection_settings(pd: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`~caffenorm.caffe.ops.detection.detection_output` from an
    ncnn ``ParamDict`` of a ``CaffeDetectionOutput`` layer."""
    threshold = float(pd.get(DETOUT_CONFIDENCE_THRESHOLD, -_FLT_MAX))
    return {
        "num_classes": int(pd.get(DETOUT_NUM_CLASSES, 0)),
        "share_location": bool(pd.get(DETOUT_SHARE_LOCATION, 1)),
        "background_label_id": int(pd.get(DETOUT_BACKGROUND_LABEL_ID, 0)),
        "nms_threshold": float(pd.get(DETOUT_NMS_THRESHOLD, 0.3)),
        "top_k": int(pd.get(DETOUT_TOP_K, -1)),
        "eta": float(pd.get(DETOUT_ETA, 1.0)),
        "keep_top_k": int(pd.get(DETOUT_KEEP_TOP_K, -1)),
        "confidence_threshold": None if threshold <= -_FLT_MAX else threshold,
        "code_type": int(pd.get(DETOUT_CODE_TYPE, CODE_TYPES["CENTER_SIZE"])),  # a number; bad ones are refused
        "variance_encoded_in_target": bool(pd.get(DETOUT_VARIANCE_ENCODED_IN_TARGET, 0)),
    }


def check_settings(settings: dict[str, Any]) -> None:
    """Caffe's ``LayerSetUp`` checks on the settings read from a ``.param``: a
    :class:`~caffenorm.LayerConfigError` naming the layer type and the bad value."""
    keys = ("num_classes", "share_location", "background_label_id", "nms_threshold", "top_k", "eta", "keep_top_k",
            "confidence_threshold", "code_type")
    try:
        _check_detection_settings(*(settings[k] for k in keys))
    except CaffeNormError as err:
        raise LayerConfigError(f"ncnn layer {CAFFE_DETECTION_OUTPUT} (its .param values): {err.message}") from None


def detection_rows(settings: dict[str, Any], loc: np.ndarray, conf: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """``CaffeDetectionOutput`` on one image's flat bottoms: ``(K, 6)`` float32 rows (see the
    module docstring), computed by caffenorm's DetectionOutput."""

    def row(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32).reshape(1, -1))

    rows = detection_output(row(loc), row(conf), row(prior).reshape(1, 2, -1), **settings)
    return np.ascontiguousarray(rows.reshape(-1, 7)[:, 1:].numpy(), dtype=np.float32)


def _detection_output_class(ncnn: Any) -> type:
    class CaffeDetectionOutput(ncnn.Layer):  # type: ignore[misc, name-defined]
        """SSD's DetectionOutput with Caffe's rule (caffenorm's implementation), as an ncnn layer."""

        def __init__(self) -> None:
            ncnn.Layer.__init__(self)
            self.one_blob_only = False
            self.support_inplace = False
            self.settings: dict[str, Any] = {}

        def load_param(self, pd: Any) -> int:
            self.settings = detection_settings(pd)
            check_settings(self.settings)  # a bad .param fails at load_param, as Caffe's LayerSetUp
            return 0

        def forward(self, bottom_blobs: Any, top_blobs: Any, opt: Any) -> int:
            loc, conf, prior = (np.array(m, dtype=np.float32, copy=False) for m in bottom_blobs)
            rows = detection_rows(self.settings, loc, conf, prior)
            top_blobs[0].clone_from(ncnn.Mat(rows), opt.blob_allocator)
            return 0 if not top_blobs[0].empty() else -100

    return CaffeDetectionOutput


def register_custom_layers(net: Any) -> Any:
    """Teach the ncnn Python ``net`` (an ``ncnn.Net``) every layer type caffenorm's ncnn export can
    write (:data:`CUSTOM_LAYER_TYPES`); call it before ``net.load_param``.  Returns ``net``.

    The layers run in Python with caffenorm's own implementations (torch on the CPU)."""
    import ncnn

    cls = _detection_output_class(ncnn)

    def create() -> Any:
        layer = cls()
        _ALIVE[id(layer)] = layer
        return layer

    def destroy(layer: Any) -> None:
        _ALIVE.pop(id(layer), None)

    net.register_custom_layer(CAFFE_DETECTION_OUTPUT, create, destroy)
    return net
