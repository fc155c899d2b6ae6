"""ncnn emitters of SSD's detection layers: PriorBox (native) and DetectionOutput (caffenorm's custom layer).

PriorBox, against ncnn's ``src/layer/priorbox.cpp``: the same boxes in the same order (per
location: per ``min_size`` the min box, the ``sqrt(min*max)`` box, then each aspect ratio and,
with ``flip``, its reciprocal right after it), the same step rule (``image / feature`` unless a
step is given), offset, clip and variances.  What needs care: Caffe truncates ``min_size`` /
``max_size`` to ints (written truncated); Caffe drops repeated ratios (and ratios whose
reciprocal is already listed) where ncnn would not (written deduplicated, as Caffe's list has
them); ncnn's default offset is 0 and its default image size 0 (both always written); ncnn adds
the step to the centre column by column where Caffe multiplies, so centres differ by float
rounding (~1e-6 of the image).

DetectionOutput, against ncnn's ``src/layer/detectionoutput.cpp``: not the same computation (see
:func:`_native_differences`), so it is written as the custom layer ``CaffeDetectionOutput``
(:mod:`caffenorm.export.ncnn.custom_layers`: Caffe's rule, in Python with caffenorm and in C++ in
``contrib/ncnn``).  A deployment that cannot register a custom layer cuts the net before it,
``caffenorm.load(..., outputs=[loc, conf, prior])``, and runs the detection step outside ncnn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np

from caffenorm.caffe.layers.detection import DetectionOutput, PriorBox
from caffenorm.caffe.ops.detection import CODE_TYPES
from caffenorm.export.ncnn._model import Blob, EmitContext, ParamValue
from caffenorm.export.ncnn._registry import register_emitter
from caffenorm.export.ncnn.custom_layers import (
    CAFFE_DETECTION_OUTPUT,
    DETOUT_BACKGROUND_LABEL_ID,
    DETOUT_CODE_TYPE,
    DETOUT_CONFIDENCE_THRESHOLD,
    DETOUT_ETA,
    DETOUT_KEEP_TOP_K,
    DETOUT_NMS_THRESHOLD,
    DETOUT_NUM_CLASSES,
    DETOUT_SHARE_LOCATION,
    DETOUT_TOP_K,
    DETOUT_VARIANCE_ENCODED_IN_TARGET,
)

__all__ = ["emit_detection_output", "emit_prior_box"]

PRIORBOX_MIN_SIZES: Final = 0  # arrays
PRIORBOX_MAX_SIZES: Final = 1
PRIORBOX_ASPECT_RATIOS: Final = 2  # without 1 and without the flipped ratios (flip adds them)
PRIORBOX_VARIANCE_0: Final = 3  # 3..6: the four variances
PRIORBOX_FLIP: Final = 7
PRIORBOX_CLIP: Final = 8
PRIORBOX_IMAGE_WIDTH: Final = 9  # -233: bottom 1's width
PRIORBOX_IMAGE_HEIGHT: Final = 10
PRIORBOX_STEP_W: Final = 11  # -233: image width / feature width
PRIORBOX_STEP_H: Final = 12
PRIORBOX_OFFSET: Final = 13
FROM_BLOB: Final = -233


def _primary_ratios(aspect_ratios: Sequence[float], flip: bool) -> list[float]:
    """The ratios ncnn should list so that it makes Caffe's boxes: Caffe's list (``PriorBoxLayer::
    LayerSetUp``) starts at 1 and skips a ratio within 1e-6 of one already listed, flipped ones
    included; ncnn adds each listed ratio's reciprocal itself when ``flip``."""
    known = [np.float32(1.0)]
    primary = []
    for value in aspect_ratios:
        ar = np.float32(value)
        if any(abs(float(ar - k)) < 1e-6 for k in known):
            continue
        known.append(ar)
        primary.append(float(ar))
        if flip:
            known.append(np.float32(1.0 / float(ar)))
    return primary


@register_emitter(PriorBox)
def emit_prior_box(ctx: EmitContext, module: PriorBox, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn PriorBox: 0/1=min/max sizes (truncated to ints, as Caffe does), 2=aspect ratios (deduplicated, without 1), 3-6=variances, 7=flip, 8=clip, 9/10=image w/h (-233: bottom 1's), 11/12=step w/h (-233: image/feature), 13=offset."""
    variances = list(module.variances) or [0.1]
    if len(variances) == 1:
        variances *= 4
    steps_given = module.step_h > 0 and module.step_w > 0  # Caffe: either 0 means image / feature
    params: dict[int, ParamValue] = {
        PRIORBOX_MIN_SIZES: [float(int(v)) for v in module.min_sizes],
        PRIORBOX_MAX_SIZES: [float(int(v)) for v in module.max_sizes],
        PRIORBOX_ASPECT_RATIOS: _primary_ratios(module.aspect_ratios, module.flip),
        PRIORBOX_FLIP: int(module.flip),
        PRIORBOX_CLIP: int(module.clip),
        PRIORBOX_IMAGE_WIDTH: module.img_hw[1] if module.img_hw else FROM_BLOB,
        PRIORBOX_IMAGE_HEIGHT: module.img_hw[0] if module.img_hw else FROM_BLOB,
        PRIORBOX_STEP_W: float(module.step_w) if steps_given else float(FROM_BLOB),
        PRIORBOX_STEP_H: float(module.step_h) if steps_given else float(FROM_BLOB),
        PRIORBOX_OFFSET: float(module.offset),
    }
    for k, v in enumerate(variances):
        params[PRIORBOX_VARIANCE_0 + k] = float(v)
    params = {key: value for key, value in sorted(params.items()) if not (isinstance(value, list) and not value)}
    return [ctx.layer("PriorBox", bottoms, params)]


@register_emitter(DetectionOutput)
def emit_detection_output(ctx: EmitContext, module: DetectionOutput, bottoms: Sequence[Blob]) -> list[Blob]:
    """CaffeDetectionOutput (caffenorm's custom layer: Caffe's rule; ncnn's own DetectionOutput differs); rows [label, score, xmin, ymin, xmax, ymax]."""
    params: dict[int, ParamValue] = {
        DETOUT_NUM_CLASSES: module.num_classes,
        DETOUT_SHARE_LOCATION: int(module.share_location),
        DETOUT_BACKGROUND_LABEL_ID: module.background_label_id,
        DETOUT_NMS_THRESHOLD: float(module.nms_threshold),
        DETOUT_TOP_K: module.top_k,
        DETOUT_ETA: float(module.eta),
        DETOUT_KEEP_TOP_K: module.keep_top_k,
        DETOUT_CODE_TYPE: CODE_TYPES[module.code_type],
        DETOUT_VARIANCE_ENCODED_IN_TARGET: int(module.variance_encoded_in_target),
    }
    if module.confidence_threshold is not None:
        params[DETOUT_CONFIDENCE_THRESHOLD] = float(module.confidence_threshold)
    ctx.note(
        f"the custom layer {CAFFE_DETECTION_OUTPUT} (ncnn's own DetectionOutput is not Caffe's: "
        + "; ".join(_native_differences(module))
        + "); register it before load_param: caffenorm.export.ncnn.register_custom_layers(net) in Python, "
        "contrib/ncnn/caffe_detection_output.cpp in a C++ app; rows [label, score, xmin, ymin, xmax, ymax] per image, "
        "one row of -1 when nothing is kept"
    )
    return [ctx.rows_layer(CAFFE_DETECTION_OUTPUT, bottoms, params, columns=6)]


def _native_differences(module: DetectionOutput) -> list[str]:
    """Why ncnn's native DetectionOutput (``src/layer/detectionoutput.cpp``) would not give Caffe's
    rows for ``module``'s settings."""
    reasons = [
        "it outputs nothing when no box passes the threshold (extracting that empty blob crashed ncnn 1.0.20261020)",
        "it orders the rows of all classes together by score with an unstable sort (Caffe: by label, then score, stable)",
        "it skips a prior whose background score is >= 1 - confidence_threshold",
    ]
    if not module.share_location:
        reasons.append("it reads shared locations only")
    if module.code_type != "CENTER_SIZE":
        reasons.append(f"it decodes CENTER_SIZE only (code_type {module.code_type} here)")
    if module.variance_encoded_in_target:
        reasons.append("it takes the variances from the priors")
    if module.background_label_id != 0:
        reasons.append(f"its background is class 0 (background_label_id {module.background_label_id} here)")
    if module.eta < 1:
        reasons.append(f"it has no adaptive NMS (eta {module.eta} here)")
    return reasons
