"""ncnn emitters of SSD's detection layers: PriorBox (mapped) and DetectionOutput (refused).

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
:func:`emit_detection_output`), so it is refused with the way to an exact export: the net cut
before it, ``caffenorm.load(..., outputs=[loc, conf, prior])``, and the detection step run outside
ncnn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np

from caffenorm.caffe.layers.detection import DetectionOutput, PriorBox
from caffenorm.export.ncnn._model import Blob, EmitContext, ParamValue
from caffenorm.export.ncnn._registry import register_emitter

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
    """Refused (ncnn's DetectionOutput differs from Caffe's); the error names the cut caffenorm.load(..., outputs=[loc, conf, prior])."""
    reasons = [
        (
            "it outputs nothing when no box passes the threshold (and extracting that empty blob crashed ncnn "
            "1.0.20261020), where Caffe outputs one [image, -1, -1, -1, -1, -1, -1] row per image"
        ),
        "its rows are [label, score, xmin, ymin, xmax, ymax], without Caffe's image index column",
        (
            "it orders the rows of all classes together by score with an unstable quicksort, where Caffe groups "
            "them by label (ascending) and orders each group by score with a stable sort (ties, and every net "
            "with more than one foreground class, come out in another order)"
        ),
        (
            "it skips decoding a prior whose background score is >= 1 - confidence_threshold, which assumes the "
            "scores of a prior sum to 1"
        ),
    ]
    if not module.share_location:
        reasons.append("it reads shared locations only (share_location: false here)")
    if module.code_type != "CENTER_SIZE":
        reasons.append(f"it decodes CENTER_SIZE only (code_type {module.code_type} here)")
    if module.variance_encoded_in_target:
        reasons.append("it takes the variances from the priors (variance_encoded_in_target here)")
    if module.background_label_id != 0:
        reasons.append(f"class 0 is always its background (background_label_id {module.background_label_id} here)")
    if module.eta < 1:
        reasons.append(f"it has no adaptive NMS (eta {module.eta} here)")
    cut = list(ctx.node.bottoms)
    raise ctx.refuse(
        "ncnn's DetectionOutput is not Caffe SSD's: " + "; ".join(reasons)
        + f". For an exact export, cut the net before it: caffenorm.load(prototxt, caffemodel, outputs={cut!r}), "
        "and run the detection step on those outputs outside ncnn"
    )
