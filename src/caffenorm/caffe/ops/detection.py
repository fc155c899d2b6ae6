"""SSD's ``PriorBox`` and ``DetectionOutput`` layers, computed exactly as Caffe SSD computes them.

Reproduced sources (weiliu89/caffe, branch ``ssd``; the facts were read there, the code is our own):

* ``src/caffe/layers/prior_box_layer.cpp`` -- ``LayerSetUp`` (validation, aspect-ratio list) and
  ``Forward_cpu`` (box generation, clipping, variances);
* ``src/caffe/layers/detection_output_layer.cpp`` -- ``LayerSetUp`` / ``Forward_cpu`` (per-class
  NMS, ``keep_top_k``, output layout, the "no detection" rows);
* ``src/caffe/util/bbox_util.cpp`` -- ``DecodeBBox``, ``BBoxSize``, ``IntersectBBox``,
  ``JaccardOverlap``, ``GetMaxScoreIndex``, ``ApplyNMSFast``, ``GetLocPredictions``,
  ``GetConfidenceScores``, ``GetPriorBBoxes``.

Precision.  Caffe keeps boxes in ``NormalizedBBox`` protobuf messages, whose fields are *float*
whatever the net's ``Dtype``; scores are copied to ``vector<float>``; prior centres and box sizes
are ``float`` locals while the final coordinate arithmetic is done in ``double`` (C++ promotion of
``x / 2.``).  The code below rounds to float32 at exactly those points and keeps Caffe's order of
operations, so it is meant to match Caffe's CPU path bit for bit, except where ``exp``/``sqrt``
of the C library and of torch differ by an ulp before the final rounding to float.  (Checked
against an independent float64 reference and OpenCV's implementation, to ~1e-7; not against a
Caffe binary.)

Output layout of ``DetectionOutput`` (``[1, 1, num_kept, 7]``, rows ``[image_id, label, score,
xmin, ymin, xmax, ymax]``): images in batch order; within an image, rows are grouped by label in
ascending order (Caffe iterates a ``std::map<int, vector<int>>``); within a label, in the order
NMS kept them, i.e. by descending score.  When no image has any detection, Caffe (final ``ssd``
branch) outputs ``[1, 1, num, 7]`` filled with -1 except column 0, which holds the image index:
one fake row ``[i, -1, -1, -1, -1, -1, -1]`` per image.  (Older SSD revisions produced a single
all ``-1`` row; we follow the final code.)

Tracing and export.  :func:`prior_box` and :func:`detection_output` build their results with
numpy scalars, Python loops and data-dependent indexing, which tracers cannot record faithfully
(``torch.jit.trace`` would bake one input's number of detections into the graph).  So the layer
modules call them through two ``torch.library`` custom ops, :func:`prior_box_op`
(``caffenorm::prior_box``) and :func:`detection_output_op` (``caffenorm::detection_output``),
whose bodies are these functions (same results, bit for bit) and whose fake kernels give the
output shapes: ``(1, 2, H*W*P*4)`` from the input shapes for PriorBox, ``(1, 1, u, 7)`` with an
unbacked size ``u`` for DetectionOutput.  ``torch.export``, ``torch.jit.trace`` and
``torch.compile(fullgraph=True)`` record each as one node.  Neither has a gradient.

This module takes plain Python values only; the ``caffe.PriorBoxParameter`` /
``caffe.DetectionOutputParameter`` messages are read in :mod:`caffenorm.caffe.layers.detection`,
which also holds the ``PriorBox`` and ``DetectionOutput`` layer modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from caffenorm.errors import InputShapeError, LayerConfigError

__all__ = [
    "CODE_TYPES",
    "decode_boxes",
    "detection_output",
    "detection_output_op",
    "jaccard_overlap",
    "nms",
    "prior_box",
    "prior_box_op",
    "prior_box_sizes",
]

#: ``PriorBoxParameter.CodeType`` values (caffe.proto of the ssd branch).
CODE_TYPES: dict[str, int] = {"CORNER": 1, "CENTER_SIZE": 2, "CORNER_SIZE": 3}
_CODE_NAMES = {v: k for k, v in CODE_TYPES.items()}

# C's FLT_MAX: DetectionOutput's confidence threshold when the prototxt does not set one.
_FLT_MAX = float(np.finfo(np.float32).max)


def _f32(x: float) -> float:
    """Round a Python float to the nearest float32 (a C++ assignment to a ``float`` variable)."""
    return float(np.float32(x))


def _real(layer: str, name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise LayerConfigError(f"{layer}: {name}={value!r} is not a number") from None
    if not math.isfinite(v):
        raise LayerConfigError(f"{layer}: {name}={value!r} must be finite")
    return v


def _int(layer: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise LayerConfigError(f"{layer}: {name}={value!r} must be an integer")
    return int(value)


def _hw(layer: str, name: str, value: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value)
        ok = h > 0 and w > 0 and (h, w) == tuple(value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputShapeError(f"{layer}: {name}={value!r} must be a pair (height, width) of positive integers")
    return h, w


# ---------------------------------------------------------------------------------------
# PriorBox
# ---------------------------------------------------------------------------------------


def _aspect_ratio_list(aspect_ratios: Sequence[float], flip: bool) -> list[float]:
    """``PriorBoxLayer::LayerSetUp``'s list: starts with 1; a ratio within 1e-6 (float
    difference) of one already listed is skipped; ``flip`` appends ``1/ar`` right after ``ar``.
    The list is a ``vector<float>``, so every entry (also ``1./ar``) is rounded to float32."""
    ars = [np.float32(1.0)]
    for value in aspect_ratios:
        ar = np.float32(_real("PriorBox", "aspect_ratio", value))
        if not ar > 0:
            # Caffe accepts it and fills the blob with inf/NaN; we refuse such a prototxt.
            raise LayerConfigError(f"PriorBox: aspect_ratio={value!r} must be > 0")
        if any(abs(float(ar - known)) < 1e-6 for known in ars):
            continue
        ars.append(ar)
        if flip:
            ars.append(np.float32(1.0 / float(ar)))
    return [float(a) for a in ars]


def prior_box_sizes(
    min_sizes: Sequence[float],
    max_sizes: Sequence[float] = (),
    aspect_ratios: Sequence[float] = (),
    flip: bool = True,
) -> list[tuple[float, float]]:
    """The ``(width, height)`` in pixels of the priors at one location, in Caffe's order.

    For each ``min_size`` (``s``): the square ``min`` box, then (with ``max_sizes``) the square
    ``sqrt(min * max)`` box, then one box per aspect ratio other than 1 (list of
    :func:`_aspect_ratio_list`), of size ``min*sqrt(ar)`` by ``min/sqrt(ar)`` (``max_size``
    plays no part in these).

    Caffe quirk reproduced: ``Forward_cpu`` reads the sizes into ``int`` locals
    (``int min_size_ = min_sizes_[s]``), so fractional ``min_size`` / ``max_size`` are truncated
    toward zero (``min_size: 30.5`` gives 30-pixel boxes), and ``min*max`` is an int product.
    The validation (``min > 0``, ``max > min``) uses the float values, as in ``LayerSetUp``.
    """
    layer = "PriorBox"
    mins = [_real(layer, "min_size", v) for v in min_sizes]
    maxs = [_real(layer, "max_size", v) for v in max_sizes]
    if not mins:
        raise LayerConfigError("PriorBox: must provide min_size (at least one)")
    for m in mins:
        if not m > 0:
            raise LayerConfigError(f"PriorBox: min_size={m!r} must be positive")
    if maxs:
        if len(maxs) != len(mins):
            raise LayerConfigError(
                f"PriorBox: {len(maxs)} max_size values for {len(mins)} min_size values; give one max_size per "
                "min_size or none"
            )
        for m, mx in zip(mins, maxs):
            if not mx > m:
                raise LayerConfigError(f"PriorBox: max_size={mx!r} must be greater than min_size={m!r}")
    ars = _aspect_ratio_list(aspect_ratios, bool(flip))
    sizes: list[tuple[float, float]] = []
    for s, m_float in enumerate(mins):
        m = int(m_float)  # C++ float -> int conversion truncates toward zero
        sizes.append((float(m), float(m)))
        if maxs:
            mx = int(maxs[s])
            side = _f32(math.sqrt(m * mx))  # sqrt(int) -> double, stored in a float local
            sizes.append((side, side))
        for ar in ars:
            if abs(ar - 1.0) < 1e-6:
                continue
            # ::sqrt(double) of the float ratio; int * double in double, stored in float locals.
            r = math.sqrt(ar)
            sizes.append((_f32(m * r), _f32(m / r)))
    expected = len(ars) * len(mins) + len(maxs)  # Caffe's num_priors_
    if len(sizes) != expected:  # only for ratios within ~1e-6 of 1 after flipping: refuse
        raise LayerConfigError(
            f"PriorBox: aspect_ratio={list(aspect_ratios)!r} gives {len(sizes)} boxes per location but Caffe "
            f"allocates {expected}; Caffe's output would be corrupt"
        )
    return sizes


def _variances(variances: Sequence[float]) -> list[float]:
    """Caffe's variance rules: none -> [0.1]; otherwise exactly 1 or exactly 4 values, each > 0."""
    var = [_real("PriorBox", "variance", v) for v in variances] or [0.1]
    if len(var) not in (1, 4):
        raise LayerConfigError(f"PriorBox: {len(var)} variance values given; give exactly 1 or exactly 4")
    for v in var:
        if not v > 0:
            raise LayerConfigError(f"PriorBox: variance={v!r} must be > 0")
    return var


def prior_box(
    feature_hw: tuple[int, int],
    image_hw: tuple[int, int],
    *,
    min_sizes: Sequence[float],
    max_sizes: Sequence[float] = (),
    aspect_ratios: Sequence[float] = (),
    flip: bool = True,
    clip: bool = False,
    variances: Sequence[float] = (0.1,),
    step_h: float = 0.0,
    step_w: float = 0.0,
    offset: float = 0.5,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""SSD's ``PriorBox`` top blob (``PriorBoxLayer::Forward_cpu``), shape ``(1, 2, H*W*P*4)``.

    Channel 0 holds the boxes ``xmin, ymin, xmax, ymax`` ordered by row ``h``, column ``w``,
    prior ``p`` (:func:`prior_box_sizes` order), normalised by the image size::

        step_w, step_h = (img_w / W, img_h / H)  if step_w == 0 or step_h == 0  (float32)
        cx = (w + offset) * step_w,  cy = (h + offset) * step_h                  (float32)
        xmin = (cx - bw / 2) / img_w,  ymin = (cy - bh / 2) / img_h              (double)
        xmax = (cx + bw / 2) / img_w,  ymax = (cy + bh / 2) / img_h

    With ``clip`` every coordinate is clamped to ``[0, 1]``.  Channel 1 holds the variances:
    one value repeated, or 4 values repeated per box.  No value depends on the input data.

    Args:
        feature_hw: ``(H, W)`` of the feature map (bottom 0).
        image_hw: ``(img_h, img_w)``: the image (bottom 1) size, or the ``img_size`` /
            ``img_h`` / ``img_w`` override already resolved (by the PriorBox converter in
            :mod:`caffenorm.caffe.layers.detection`).
        min_sizes, max_sizes, aspect_ratios, flip: the boxes, see :func:`prior_box_sizes`.
        clip: clamp the coordinates to ``[0, 1]``.  Default: False
        variances: 1 value or exactly 4, all > 0; empty means Caffe's default ``0.1``.
        step_h, step_w: the resolved ``step`` / ``step_h`` / ``step_w``; 0 (either one) means
            ``img / feature`` for both axes, as in Caffe.
        offset: centre offset within a cell.  Default: 0.5
        dtype, device: of the result (Caffe's ``Dtype``; float64 only changes the final
            rounding, the intermediate floats are float32 as in Caffe).
    """
    layer = "PriorBox"
    fh, fw = _hw(layer, "feature_hw", feature_hw)
    ih, iw = _hw(layer, "image_hw", image_hw)
    sizes = prior_box_sizes(min_sizes, max_sizes, aspect_ratios, flip)
    var = _variances(variances)
    sh, sw = _real(layer, "step_h", step_h), _real(layer, "step_w", step_w)
    if sh < 0 or sw < 0:
        raise LayerConfigError(f"PriorBox: step_h={step_h!r}, step_w={step_w!r} must be >= 0 (0 = image/feature)")
    off = np.float32(_real(layer, "offset", offset))
    if sw == 0 or sh == 0:
        # static_cast<float>(img_width) / layer_width: a float division.
        step_x, step_y = np.float32(iw) / np.float32(fw), np.float32(ih) / np.float32(fh)
    else:
        step_x, step_y = np.float32(sw), np.float32(sh)

    f32, f64 = torch.float32, torch.float64
    # Centres are float locals: (w + offset_) and the product are float operations.
    cx = (torch.arange(fw, dtype=f32) + torch.tensor(off, dtype=f32)) * torch.tensor(step_x, dtype=f32)
    cy = (torch.arange(fh, dtype=f32) + torch.tensor(off, dtype=f32)) * torch.tensor(step_y, dtype=f32)
    cx = cx.to(f64).view(1, fw, 1)
    cy = cy.to(f64).view(fh, 1, 1)
    bw = torch.tensor([s[0] for s in sizes], dtype=f64).view(1, 1, -1) / 2.0
    bh = torch.tensor([s[1] for s in sizes], dtype=f64).view(1, 1, -1) / 2.0
    shape = (fh, fw, len(sizes))
    # (center - size / 2.) / img: double arithmetic, then stored as Dtype.
    boxes = torch.stack(
        [
            ((cx - bw) / iw).expand(shape),
            ((cy - bh) / ih).expand(shape),
            ((cx + bw) / iw).expand(shape),
            ((cy + bh) / ih).expand(shape),
        ],
        dim=-1,
    ).reshape(-1)
    boxes = boxes.to(dtype)
    if clip:
        boxes = boxes.clamp(0.0, 1.0)
    variance = torch.tensor(var, dtype=f32).to(dtype)  # vector<float> -> Dtype
    variance = variance.repeat(boxes.numel() // len(var)) if len(var) == 4 else variance.expand(boxes.numel())
    return torch.stack([boxes, variance]).unsqueeze(0).to(device)


def _check_nchw(layer: str, **tensors: Tensor) -> None:
    """Raise :class:`~caffenorm.errors.InputShapeError` unless every tensor has 4 axes (N, C, H, W)."""
    for name, t in tensors.items():
        if t.dim() != 4:
            raise InputShapeError(f"{layer}: {name} has shape {tuple(t.shape)}, expected NCHW (4 dimensions)")


def _no_gradient(op: Any, num_args: int) -> None:
    """Declare ``op``'s output non-differentiable: it never requires grad, whatever the inputs.

    Without an autograd registration a custom op's output would require grad whenever an input
    does, and fail only at ``backward``; Caffe's layers have no gradient here (PriorBox's output
    does not depend on data, DetectionOutput's Backward_cpu is NOT_IMPLEMENTED)."""

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.mark_non_differentiable(output)

    def backward(ctx: Any, grad: Tensor) -> tuple[None, ...]:
        return (None,) * num_args

    op.register_autograd(backward, setup_context=setup_context)


# A torch.library custom op, so that tracers record one opaque node whose output shape the fake
# kernel below gives from the input *shapes*: torch.export / torch.compile keep H and W symbolic
# where they are, and nothing of the numpy / Python-loop body is traced into the graph.
@torch.library.custom_op("caffenorm::prior_box", mutates_args=())
def prior_box_op(
    feature: Tensor,
    image: Tensor,
    min_sizes: list[float],
    max_sizes: list[float],
    aspect_ratios: list[float],
    flip: bool,
    clip: bool,
    variances: list[float],
    step_h: float,
    step_w: float,
    offset: float,
    img_h: int,
    img_w: int,
) -> Tensor:
    """``caffenorm::prior_box``: :func:`prior_box` for NCHW ``feature`` and ``image`` tensors, of
    which only the shapes are read; ``(1, 2, H*W*P*4)`` with ``(H, W)`` the feature map's size and
    ``P`` the number of priors per location (:func:`prior_box_sizes`).

    ``img_h``, ``img_w``: the image size override (``img_size`` / ``img_h`` + ``img_w``); 0 takes
    the image tensor's H, W, as Caffe's ``img_h_ == 0 || img_w_ == 0`` does. The result has the
    feature map's dtype (float32 for a non-float one) and device, and no gradient.
    """
    _check_nchw("PriorBox", feature=feature, image=image)
    image_hw = (img_h, img_w) if img_h > 0 and img_w > 0 else (int(image.shape[2]), int(image.shape[3]))
    return prior_box(
        (int(feature.shape[2]), int(feature.shape[3])),
        image_hw,
        min_sizes=min_sizes,
        max_sizes=max_sizes,
        aspect_ratios=aspect_ratios,
        flip=flip,
        clip=clip,
        variances=variances,
        step_h=step_h,
        step_w=step_w,
        offset=offset,
        dtype=feature.dtype if feature.is_floating_point() else torch.float32,
        device=feature.device,
    )


@prior_box_op.register_fake
def _prior_box_fake(
    feature: Tensor,
    image: Tensor,
    min_sizes: list[float],
    max_sizes: list[float],
    aspect_ratios: list[float],
    flip: bool,
    clip: bool,
    variances: list[float],
    step_h: float,
    step_w: float,
    offset: float,
    img_h: int,
    img_w: int,
) -> Tensor:
    """The output's shape from the input shapes and the settings (also the meta-device kernel,
    which the net's shape inference runs): ``(1, 2, H * W * num_priors * 4)``."""
    _check_nchw("PriorBox", feature=feature, image=image)
    num_priors = len(prior_box_sizes(min_sizes, max_sizes, aspect_ratios, flip))  # validates them too
    _variances(variances)
    dtype = feature.dtype if feature.is_floating_point() else torch.float32
    return feature.new_empty((1, 2, feature.shape[2] * feature.shape[3] * num_priors * 4), dtype=dtype)


_no_gradient(prior_box_op, 13)  # 13 arguments: feature, image and 11 settings


# ---------------------------------------------------------------------------------------
# Box utilities (bbox_util.cpp)
# ---------------------------------------------------------------------------------------


def _bbox_size(boxes: Tensor) -> Tensor:
    """``BBoxSize`` (normalized): 0 if ``xmax < xmin`` or ``ymax < ymin``, else ``w*h`` (float)."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    invalid = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    return torch.where(invalid, torch.zeros_like(w), w * h)


def _pairwise_overlap(a: Tensor, size_a: Tensor, b: Tensor, size_b: Tensor) -> Tensor:
    """``JaccardOverlap(bbox1=a[..., i], bbox2=b[..., j])`` for all pairs: ``(..., len(a), len(b))``
    over any leading (batch) dims, float32 as in Caffe.

    ``IntersectBBox`` gives ``[0, 0, 0, 0]`` when the boxes are apart (so overlap 0); otherwise
    the intersection's corners are ``std::max`` / ``std::min`` of the two boxes' corners, and the
    overlap is ``inter / (size_a + size_b - inter)`` if its width and height are both ``> 0``,
    else 0.  ``std::max(p, q)`` is ``p < q ? q : p`` (``std::min(p, q)``: ``q < p ? q : p``): the
    first argument unless the second compares greater (less), so a NaN corner of ``bbox2`` is
    passed over while one of ``bbox1`` propagates.  The overlap is symmetric except for NaN
    corners; ``ApplyNMSFast`` calls it as ``(candidate, kept box)``, so a kept box with a NaN
    corner overlaps every later candidate by NaN (its size is NaN) and removes it.
    """
    x1, y1, x2, y2 = (t.unsqueeze(-1) for t in a.unbind(-1))
    bx1, by1, bx2, by2 = (t.unsqueeze(-2) for t in b.unbind(-1))
    if not a.is_cuda and not (torch.isnan(a).any() or torch.isnan(b).any()):
        # Without NaN, std::max/min are torch.maximum/minimum up to the sign of a zero, which
        # cannot reach the result (a zero width fails > 0), and boxes apart always have iw <= 0
        # or ih <= 0 (iw > 0 means bx1 < x2 and x1 < bx2): half the passes over the matrix.
        # (On a GPU the check would be a host sync, and the passes cost little there.)
        iw = torch.minimum(x2, bx2) - torch.maximum(x1, bx1)
        ih = torch.minimum(y2, by2) - torch.maximum(y1, by1)
        inter = iw * ih
        iou = inter / ((size_a.unsqueeze(-1) + size_b.unsqueeze(-2)) - inter)
        return torch.where((iw > 0) & (ih > 0), iou, 0.0)
    apart = (bx1 > x2) | (bx2 < x1) | (by1 > y2) | (by2 < y1)
    iw = torch.where(bx2 < x2, bx2, x2) - torch.where(x1 < bx1, bx1, x1)
    ih = torch.where(by2 < y2, by2, y2) - torch.where(y1 < by1, by1, y1)
    inter = iw * ih
    iou = inter / ((size_a.unsqueeze(-1) + size_b.unsqueeze(-2)) - inter)
    return torch.where(~apart & (iw > 0) & (ih > 0), iou, 0.0)


def jaccard_overlap(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise ``JaccardOverlap`` (normalized boxes, no ``+1``) in float32: ``(K1, K2)``.

    ``inter / (size1 + size2 - inter)`` where ``inter`` is the intersection's ``w*h`` if both
    its width and height are > 0 (else the overlap is 0), and ``size`` is ``BBoxSize``: 0 for a
    box with ``xmax < xmin`` or ``ymax < ymin``.  ``[i, j]`` is ``JaccardOverlap(boxes1[i],
    boxes2[j])`` with Caffe's ``std::max``/``std::min``, which differ from a symmetric overlap only
    for NaN corners (see ``_pairwise_overlap``): in NMS, ``boxes1`` are the candidates and
    ``boxes2`` the kept boxes.
    """
    a = boxes1.detach().to(torch.float32).reshape(-1, 4)
    b = boxes2.detach().to(device=a.device, dtype=torch.float32).reshape(-1, 4)
    return _pairwise_overlap(a, _bbox_size(a), b, _bbox_size(b))


def _code_name(code_type: str | int) -> str:
    if isinstance(code_type, str) and code_type.upper() in CODE_TYPES:
        return code_type.upper()
    if isinstance(code_type, (int, np.integer)) and not isinstance(code_type, bool) and int(code_type) in _CODE_NAMES:
        return _CODE_NAMES[int(code_type)]
    raise LayerConfigError(
        f"DetectionOutput: code_type={code_type!r} is not one of {', '.join(CODE_TYPES)} (or their numbers 1-3)"
    )


def decode_boxes(
    loc: Tensor,
    prior_boxes: Tensor,
    prior_variances: Tensor,
    code_type: str | int = "CENTER_SIZE",
    variance_encoded_in_target: bool = False,
) -> Tensor:
    r"""``DecodeBBox`` (clip off) for ``loc[..., P, 4]`` against ``P`` priors; float32 result.

    With ``v`` the prior's variances (all 1 when ``variance_encoded_in_target``), ``p`` the
    prior box, ``pw = p.xmax - p.xmin``, ``ph = p.ymax - p.ymin``:

    * CORNER: ``xmin = p.xmin + v0*l0``, ``ymin = p.ymin + v1*l1``, ``xmax = p.xmax + v2*l2``,
      ``ymax = p.ymax + v3*l3``;
    * CENTER_SIZE: ``cx = v0*l0*pw + (p.xmin+p.xmax)/2``, ``cy`` likewise,
      ``w = exp(v2*l2)*pw``, ``h = exp(v3*l3)*ph``; box ``cx -+ w/2, cy -+ h/2``;
    * CORNER_SIZE: ``xmin = p.xmin + v0*l0*pw``, ``ymin = p.ymin + v1*l1*ph``,
      ``xmax = p.xmax + v2*l2*pw``, ``ymax = p.ymax + v3*l3*ph``.

    Caffe's CPU code ``CHECK``\ s ``pw > 0`` and ``ph > 0`` for CENTER_SIZE / CORNER_SIZE (it aborts);
    we raise :class:`~caffenorm.errors.LayerConfigError`.
    """
    code = _code_name(code_type)
    f32, f64 = torch.float32, torch.float64
    lx = loc.to(f32)
    p = prior_boxes.to(f32).reshape(-1, 4)
    var = prior_variances.to(f32).reshape(-1, 4)
    if lx.shape[-2:] != p.shape:
        raise InputShapeError(f"DetectionOutput: loc {tuple(loc.shape)} does not match {p.shape[0]} priors")
    # Broadcast the priors over any leading dims of loc (..., P, 4): a class axis sits at -2 in callers.
    pxmin, pymin, pxmax, pymax = p.unbind(-1)
    l0, l1, l2, l3 = lx.unbind(-1)
    enc = bool(variance_encoded_in_target)
    v0, v1, v2, v3 = var.unbind(-1)
    if code == "CORNER":
        if enc:
            out = (pxmin + l0, pymin + l1, pxmax + l2, pymax + l3)
        else:
            out = (pxmin + v0 * l0, pymin + v1 * l1, pxmax + v2 * l2, pymax + v3 * l3)
        return torch.stack(out, dim=-1)
    pw = pxmax - pxmin
    ph = pymax - pymin
    if not (bool((pw > 0).all()) and bool((ph > 0).all())):
        bad = int(torch.nonzero(~((pw > 0) & (ph > 0)))[0, 0])
        raise LayerConfigError(
            f"DetectionOutput: prior box {bad} = {p[bad].tolist()} has no positive width/height; Caffe aborts "
            f"(CHECK_GT(prior_width, 0)) when decoding with code_type {code}"
        )
    if code == "CORNER_SIZE":
        if enc:
            out = (pxmin + l0 * pw, pymin + l1 * ph, pxmax + l2 * pw, pymax + l3 * ph)
        else:
            out = (pxmin + v0 * l0 * pw, pymin + v1 * l1 * ph, pxmax + v2 * l2 * pw, pymax + v3 * l3 * ph)
        return torch.stack(out, dim=-1)
    # CENTER_SIZE.  (xmin + xmax) / 2. is a float sum halved (exact), stored in a float.
    pcx = (pxmin + pxmax) * 0.5
    pcy = (pymin + pymax) * 0.5
    if enc:
        cx, cy, ex, ey = l0 * pw + pcx, l1 * ph + pcy, l2, l3
    else:
        cx, cy, ex, ey = v0 * l0 * pw + pcx, v1 * l1 * ph + pcy, v2 * l2, v3 * l3
    # exp(float) is ::exp(double); times the float width in double; stored in a float local.
    w = (torch.exp(ex.to(f64)) * pw.to(f64)).to(f32).to(f64) / 2.0
    h = (torch.exp(ey.to(f64)) * ph.to(f64)).to(f32).to(f64) / 2.0
    cx, cy = cx.to(f64), cy.to(f64)
    # center -/+ size / 2. is double arithmetic, stored into the float NormalizedBBox.
    return torch.stack((cx - w, cy - h, cx + w, cy + h), dim=-1).to(f32)


# Candidates are processed in blocks: a block's overlaps with the boxes kept so far and within
# the block are computed at once (float32, vectorised), then the sequential greedy pass runs on
# the block's small overlap matrix.  Memory stays O(block * K).
_NMS_BLOCK = 1024


def _nms_sorted(boxes: Tensor, sizes: Tensor, nms_threshold: float, eta: float) -> list[int]:
    """Greedy NMS over boxes already in processing order; returns the kept positions.

    ``ApplyNMSFast`` keeps a candidate iff its overlap with every box kept so far is
    ``<= adaptive_threshold`` (a NaN overlap rejects), and after each keep, if ``eta < 1`` and
    the threshold is ``> 0.5``, multiplies the threshold by ``eta`` (float32).  Comparing the
    running maximum overlap with the kept boxes against the current threshold gives the same
    decisions (NaN propagates through the maximum and compares False).
    """
    k = boxes.shape[0]
    kept: list[int] = []
    threshold = _f32(nms_threshold)
    eta32 = _f32(eta)
    for start in range(0, k, _NMS_BLOCK):
        stop = min(start + _NMS_BLOCK, k)
        bb, bs = boxes[start:stop], sizes[start:stop]
        if kept:
            idx = torch.tensor(kept, dtype=torch.long, device=boxes.device)
            worst_t = _pairwise_overlap(bb, bs, boxes[idx], sizes[idx]).amax(dim=1)  # amax propagates NaN
        else:
            worst_t = torch.full((stop - start,), -math.inf, dtype=torch.float32, device=boxes.device)
        worst = worst_t.cpu().numpy().copy()
        # within[i, m]: JaccardOverlap(candidate m, kept i), the order ApplyNMSFast calls it in.
        within = _pairwise_overlap(bb, bs, bb, bs).transpose(0, 1).cpu().numpy()
        for i in range(stop - start):
            if worst[i] <= threshold:
                kept.append(start + i)
                np.maximum(worst[i + 1 :], within[i, i + 1 :], out=worst[i + 1 :])
                if eta32 < 1 and threshold > 0.5:
                    threshold = _f32(threshold * eta32)
    return kept


def _select(scores: Tensor, score_threshold: float | None, top_k: int) -> Tensor:
    """``GetMaxScoreIndex``: indices with ``score > threshold``, stable-sorted by descending
    score (ties keep index order), cut to ``top_k`` if ``top_k > -1``."""
    threshold = -_FLT_MAX if score_threshold is None else _f32(score_threshold)
    idx = torch.nonzero(scores > threshold).flatten()
    order = torch.sort(scores[idx], descending=True, stable=True).indices
    idx = idx[order]
    if top_k > -1:
        idx = idx[:top_k]
    return idx


def _select_rows(scores: Tensor, score_threshold: float | None, top_k: int) -> tuple[Tensor, Tensor]:
    """:func:`_select` for every row of ``scores`` ``(R, P)`` at once: ``(order, valid)``, both
    ``(R, K)`` with ``K`` the largest row's candidate count; ``order`` holds prior indices by
    descending score (ties in index order), ``valid`` marks each row's candidates (a prefix).
    One host synchronisation (``K``)."""
    threshold = -_FLT_MAX if score_threshold is None else _f32(score_threshold)
    above = scores > threshold  # NaN and -inf never pass
    count = above.sum(dim=-1)
    if top_k > -1:
        count = count.clamp(max=top_k)
    k = int(count.max()) if count.numel() else 0
    # The k best of a unique integer key, (score, -index): the stable order without sorting every
    # prior.  A float32's bits, sign-folded, order like the float; +0.0 replaces -0.0 (equal scores).
    bits = (scores.to(torch.float32) + 0.0).view(torch.int32).to(torch.int64)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    positions = scores.shape[-1]
    key = (ordered << 32) + (positions - 1 - torch.arange(positions, device=scores.device))
    key = torch.where(above, key, torch.full_like(key, torch.iinfo(torch.int64).min))
    order = torch.topk(key, k, dim=-1, largest=True, sorted=True).indices
    valid = torch.arange(k, device=scores.device) < count.unsqueeze(-1)
    return order, valid


# The overlap matrices of a chunk of rows stay under this many values: 4 MB per temporary keeps
# a CPU's work in cache (res10 at batch 64: 98 ms against 330 ms with 32 MB chunks); on a GPU,
# 128 MB chunks keep the number of chunks (each a few host synchronisations) small.  A row whose
# own matrix is larger is scanned in blocks by _nms_sorted instead.
_NMS_MATRIX_ELEMENTS = 1 << 20
_NMS_MATRIX_ELEMENTS_CUDA = 1 << 25
# Constant-threshold NMS: rounds of the fixed-point iteration before the sequential scan.
_NMS_ROUNDS = 8


def _greedy_matrix(
    overlap: Tensor, valid: Tensor, threshold: float, eta: float, *, fixed_point: bool | None = None
) -> Tensor:
    """``ApplyNMSFast``'s greedy pass for ``R`` rows at once, from their overlap matrices
    ``(R, K, K)`` (``overlap[r, j, i]``: ``JaccardOverlap(candidate i, kept j)``): the kept
    candidates ``(R, K)``.

    With a constant threshold (``eta == 1``, or a threshold that never exceeds 0.5), candidate
    ``i`` is kept iff it is valid and no kept ``j < i`` has ``overlap[j, i] > threshold`` (or NaN).
    That rule's only solution is the greedy one.  On CUDA, iterating it from "all valid" fixes one
    more leading candidate per round at least and often settles in a few rounds (one host
    synchronisation each); after :data:`_NMS_ROUNDS` a sequential scan on the device finishes the
    job.  On the CPU the scan runs directly (:func:`_scan`).  With adaptive ``eta`` the threshold
    changes after each keep, so the scan is sequential.  ``fixed_point`` forces the CUDA way
    (True) or the CPU scan (False) on any device."""
    r, k = valid.shape
    if eta < 1 and threshold > 0.5:
        kept = torch.zeros_like(valid)
        worst = torch.full((r, k), -math.inf, dtype=overlap.dtype, device=overlap.device)
        thr = torch.full((r,), threshold, dtype=overlap.dtype, device=overlap.device)
        for i in range(k):
            keep = valid[:, i] & (worst[:, i] <= thr)  # a NaN overlap so far rejects
            kept[:, i] = keep
            worst = torch.where(keep.unsqueeze(1), torch.maximum(worst, overlap[:, i]), worst)  # NaN propagates
            thr = torch.where(keep & (thr > 0.5), thr * eta, thr)  # float32 product, as Caffe's float
        return kept
    later = torch.ones(k, k, dtype=torch.bool, device=overlap.device).triu(1)
    removes = ~(overlap <= threshold) & later  # [j, i]: a kept j removes a later i
    if not (overlap.is_cuda if fixed_point is None else fixed_point):
        return _scan(removes.cpu(), valid.cpu()).to(valid.device)
    weights = removes.to(overlap.dtype)
    kept = valid
    for _ in range(_NMS_ROUNDS):
        hit = torch.bmm(kept.to(weights.dtype).unsqueeze(1), weights).squeeze(1) > 0  # 0/1 sums: exact
        new = valid & ~hit
        if torch.equal(new, kept):
            return kept
        kept = new
    kept = valid.clone()
    for j in range(k):
        kept &= ~(kept[:, j : j + 1] & removes[:, j])
    return kept


def _scan(removes: Tensor, valid: Tensor) -> Tensor:
    """The greedy pass in order on the CPU, in numpy (a step costs a microsecond, not a kernel
    launch): when candidate ``j`` is kept, every later one it removes goes.  A few rows go row by
    row, jumping from kept to kept; more go column by column, all rows at once (res10, 400
    candidates: 0.35 against 0.96 ms for one row, 2.4 against 19 ms for 64)."""
    kept = valid.numpy().copy()
    remove = removes.numpy()
    rows, k = kept.shape
    if rows <= 2:
        for alive, row in zip(kept, remove):
            j = 0
            while j < k:
                j += int(alive[j:].argmax())  # the next kept candidate (argmax: first True)
                if not alive[j]:
                    break
                alive[j + 1 :] &= ~row[j, j + 1 :]
                j += 1
    else:
        for j in range(k - 1):
            kept[:, j + 1 :] &= ~(remove[:, j, j + 1 :] & kept[:, j : j + 1])
    return torch.from_numpy(kept)


def _greedy_rows(boxes: Tensor, sizes: Tensor, valid: Tensor, nms_threshold: float, eta: float) -> Tensor:
    """``ApplyNMSFast``'s greedy pass on ``R`` rows of candidates already in processing order
    (``boxes`` ``(R, K, 4)``, their ``sizes`` ``(R, K)``, ``valid`` ``(R, K)`` a prefix per row):
    the kept candidates ``(R, K)``.  Rows go through :func:`_greedy_matrix` in chunks whose
    overlap matrices fit :data:`_NMS_MATRIX_ELEMENTS` (on CUDA: ``_NMS_MATRIX_ELEMENTS_CUDA``)."""
    r, k = valid.shape
    threshold, eta32 = _f32(nms_threshold), _f32(eta)
    if r == 0 or k == 0:
        return torch.zeros_like(valid)
    budget = _NMS_MATRIX_ELEMENTS_CUDA if valid.is_cuda else _NMS_MATRIX_ELEMENTS
    if k * k > budget:
        kept = torch.zeros_like(valid)
        for row in range(r):
            count = int(valid[row].sum())
            picked = _nms_sorted(boxes[row, :count], sizes[row, :count], threshold, eta32)
            kept[row, torch.tensor(picked, dtype=torch.long, device=valid.device)] = True
        return kept
    step = max(1, budget // (k * k))
    parts = []
    for start in range(0, r, step):
        b, z = boxes[start : start + step], sizes[start : start + step]
        overlap = _pairwise_overlap(b, z, b, z).transpose(-1, -2)  # [j, i]: candidate i against kept j
        parts.append(_greedy_matrix(overlap, valid[start : start + step], threshold, eta32))
    return torch.cat(parts)


def nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    top_k: int = -1,
    eta: float = 1.0,
    *,
    score_threshold: float | None = None,
) -> Tensor:
    """Caffe SSD's ``ApplyNMSFast``: indices (int64) of the kept boxes, by descending score.

    1. ``GetMaxScoreIndex``: candidates with ``score > score_threshold`` (None: ``-FLT_MAX``,
       DetectionOutput's default, which drops only ``-inf``/NaN scores), ``std::stable_sort``
       by descending score, the first ``top_k`` if ``top_k > -1`` (before NMS).
    2. Greedy: a candidate is kept iff :func:`jaccard_overlap` with every kept box is
       ``<= threshold``; after each keep, ``threshold *= eta`` while ``eta < 1`` and
       ``threshold > 0.5`` (adaptive NMS).  Boxes of zero size are *not* dropped (unlike
       Caffe's older ``ApplyNMS``); they overlap nothing.

    Everything is computed in float32 (Caffe's ``NormalizedBBox`` / ``vector<float>``).
    ``boxes``: ``(K, 4)`` as ``xmin, ymin, xmax, ymax``; ``scores``: ``(K,)``.
    """
    with torch.no_grad():
        b = boxes.detach().to(torch.float32).reshape(-1, 4)
        s = scores.detach().to(torch.float32).reshape(-1)
        if b.shape[0] != s.shape[0]:
            raise InputShapeError(f"nms: {b.shape[0]} boxes but {s.shape[0]} scores")
        thr = _real("nms", "iou_threshold", iou_threshold)
        eta = _real("nms", "eta", eta)
        if not 0 < eta <= 1:
            raise LayerConfigError(f"nms: eta={eta!r} must be in (0, 1]")
        top_k = _int("nms", "top_k", top_k)
        idx = _select(s, score_threshold, top_k)
        cand = b[idx]
        kept = _nms_sorted(cand, _bbox_size(cand), thr, eta)
        return idx[torch.tensor(kept, dtype=torch.long, device=idx.device)]


# ---------------------------------------------------------------------------------------
# DetectionOutput
# ---------------------------------------------------------------------------------------


def _check_detection_settings(
    num_classes: int,
    share_location: bool,
    background_label_id: int,
    nms_threshold: float,
    top_k: int,
    eta: float,
    keep_top_k: int,
    confidence_threshold: float | None,
    code_type: str | int,
) -> tuple[int, int, float, int, float, int, float | None, str]:
    layer = "DetectionOutput"
    num_classes = _int(layer, "num_classes", num_classes)
    if num_classes < 1:
        raise LayerConfigError(f"DetectionOutput: num_classes={num_classes} must be >= 1")
    background_label_id = _int(layer, "background_label_id", background_label_id)
    if share_location and background_label_id == -1:
        # DecodeBBoxesAll skips the loc "class" whose label equals background_label_id, and the
        # shared loc predictions carry label -1: nothing is decoded and Forward_cpu dies with
        # LOG(FATAL) "Could not find location predictions for label -1".
        raise LayerConfigError(
            "DetectionOutput: share_location with background_label_id -1 is rejected by Caffe SSD (the shared "
            "locations carry label -1 and are skipped as background; Caffe aborts with 'Could not find location "
            "predictions for label -1'); use a background_label_id outside [0, num_classes) such as num_classes"
        )
    nms_threshold = _real(layer, "nms_threshold", nms_threshold)
    if nms_threshold < 0:
        raise LayerConfigError(f"DetectionOutput: nms_threshold={nms_threshold} must be non negative")
    eta = _real(layer, "eta", eta)
    if not 0 < eta <= 1:
        raise LayerConfigError(f"DetectionOutput: eta={eta} must be in (0, 1]")
    top_k = _int(layer, "top_k", top_k)
    keep_top_k = _int(layer, "keep_top_k", keep_top_k)
    if confidence_threshold is not None:
        confidence_threshold = _real(layer, "confidence_threshold", confidence_threshold)
    return (
        num_classes,
        background_label_id,
        nms_threshold,
        top_k,
        eta,
        keep_top_k,
        confidence_threshold,
        _code_name(code_type),
    )


def _blob_2d(name: str, t: Tensor, n: int | None, channels: int) -> Tensor:
    """Caffe reads ``channels()`` (= shape[1]) and then the data linearly per image."""
    bad_n = n is not None and t.shape[0] != n
    if t.dim() < 2 or bad_n or t.shape[1] != channels or math.prod(t.shape[1:]) != channels:
        raise InputShapeError(
            f"DetectionOutput: {name} has shape {tuple(t.shape)}, expected (N, {channels})"
            + ("" if n is None else f" with N = {n}")
        )
    return t.reshape(t.shape[0], channels)


def _detection_shapes(
    loc: Tensor, conf: Tensor, prior: Tensor, num_classes: int, share_location: bool
) -> tuple[int, int, int]:
    """Check DetectionOutput's bottoms: ``(num_priors, num_loc_classes, batch)``.

    Reads only shapes, so the fake kernel runs it too (an ill-shaped net then fails at export)."""
    if prior.dim() != 3 or prior.shape[0] != 1 or prior.shape[1] != 2 or prior.shape[2] % 4:
        raise InputShapeError(
            f"DetectionOutput: prior has shape {tuple(prior.shape)}, expected (1, 2, num_priors*4) from PriorBox"
        )
    num_priors = prior.shape[2] // 4
    num_loc = 1 if share_location else num_classes
    n = loc.shape[0] if loc.dim() else 0
    _blob_2d("loc", loc, None, num_priors * num_loc * 4)
    _blob_2d("conf", conf, n, num_priors * num_classes)
    return num_priors, num_loc, n


def detection_output(
    loc: Tensor,
    conf: Tensor,
    prior: Tensor,
    *,
    num_classes: int,
    share_location: bool = True,
    background_label_id: int = 0,
    nms_threshold: float = 0.3,
    top_k: int = -1,
    eta: float = 1.0,
    keep_top_k: int = -1,
    confidence_threshold: float | None = None,
    code_type: str | int = "CENTER_SIZE",
    variance_encoded_in_target: bool = False,
) -> Tensor:
    """SSD's ``DetectionOutput`` (``DetectionOutputLayer::Forward_cpu``): ``(1, 1, num_kept, 7)``.

    Inputs: ``loc`` ``(N, P*L*4)`` with ``L = 1`` if ``share_location`` else ``num_classes``
    (per prior, per loc class, 4 values); ``conf`` ``(N, P*num_classes)`` (softmaxed, per
    prior then class); ``prior`` ``(1, 2, P*4)`` from :func:`prior_box` (boxes, variances).

    Per image: decode every prior with :func:`decode_boxes` (no clipping); for every class
    ``c != background_label_id`` (ascending), :func:`nms` of that class's boxes (the shared
    ones, or class ``c``'s) with ``score > confidence_threshold`` (None: ``-FLT_MAX``),
    ``top_k`` (-1: all), ``nms_threshold`` and ``eta``.  If ``keep_top_k > -1`` and the
    image has more than ``keep_top_k`` detections, keep the ``keep_top_k`` best-scoring ones
    over all classes.  Rows ``[image_id, label, score, xmin, ymin, xmax, ymax]``: images in
    order, then labels ascending, then descending score (see the module docstring).  If no
    image has a detection: ``(1, 1, N, 7)`` of -1 with column 0 = the image index.

    Ties: Caffe cuts ``keep_top_k`` with ``std::sort`` (not stable), so which of several
    *equal* scores survive at the cut is unspecified there; we keep the first in (label, NMS)
    order.  Boxes and scores are float32 internally (as Caffe's); the result has the dtype of
    ``loc`` (float32 for non-float input).  Not differentiable: runs without autograd.
    """
    (num_classes, background_label_id, nms_threshold, top_k, eta, keep_top_k, confidence_threshold, code) = (
        _check_detection_settings(
            num_classes,
            share_location,
            background_label_id,
            nms_threshold,
            top_k,
            eta,
            keep_top_k,
            confidence_threshold,
            code_type,
        )
    )
    with torch.no_grad():
        num_priors, num_loc, n = _detection_shapes(loc, conf, prior, num_classes, share_location)
        loc2 = _blob_2d("loc", loc, None, num_priors * num_loc * 4)
        conf2 = _blob_2d("conf", conf, n, num_priors * num_classes)
        out_dtype = loc.dtype if loc.is_floating_point() else torch.float32
        device = loc.device

        pri = prior.detach().to(device=device, dtype=torch.float32).reshape(2, num_priors, 4)
        # (N, L, P, 4): one set of boxes per loc class, decoded against the same priors.
        loc4 = loc2.detach().to(torch.float32).reshape(n, num_priors, num_loc, 4).transpose(1, 2)
        boxes = decode_boxes(loc4, pri[0], pri[1], code, variance_encoded_in_target)
        sizes = _bbox_size(boxes)
        scores = conf2.detach().to(device=device, dtype=torch.float32).reshape(n, num_priors, num_classes)

        # One row per (image, processed class), images first, classes ascending: Caffe's order.
        classes = torch.tensor([c for c in range(num_classes) if c != background_label_id], dtype=torch.long,
                               device=device)
        per_image = classes.numel()
        rows_scores = scores.transpose(1, 2).index_select(1, classes).reshape(n * per_image, num_priors)
        order, valid = _select_rows(rows_scores, confidence_threshold, top_k)
        image_of = torch.arange(n, device=device).repeat_interleave(per_image)
        loc_class = (torch.zeros_like(classes) if share_location else classes).repeat(n)
        cand_boxes = boxes[image_of.unsqueeze(1), loc_class.unsqueeze(1), order]
        cand_sizes = sizes[image_of.unsqueeze(1), loc_class.unsqueeze(1), order]
        cand_scores = rows_scores.gather(1, order)
        kept = _greedy_rows(cand_boxes, cand_sizes, valid, nms_threshold, eta)
        if keep_top_k > -1:
            # The keep_top_k best over an image's classes: stable by score over (label, NMS) order,
            # so ties keep the first; within a label that order is the score order already.
            k = order.shape[1]
            flat = torch.where(kept, cand_scores, torch.full_like(cand_scores, -math.inf)).reshape(n, per_image * k)
            by_score = torch.sort(flat, dim=1, descending=True, stable=True).indices
            rank = torch.empty_like(by_score).scatter_(
                1, by_score, torch.arange(per_image * k, device=device).expand(n, -1).contiguous()
            )
            kept = kept & (rank.reshape(n * per_image, k) < keep_top_k)
        row, pos = kept.nonzero().unbind(1)  # row-major: image, label, NMS order
        out = torch.cat(
            [
                image_of[row].to(torch.float32).unsqueeze(1),
                classes.repeat(n)[row].to(torch.float32).unsqueeze(1),
                cand_scores[row, pos].unsqueeze(1),
                cand_boxes[row, pos],
            ],
            dim=1,
        )
        if out.shape[0] == 0:
            out = torch.full((n, 7), -1.0, dtype=torch.float32, device=device)
            out[:, 0] = torch.arange(n, dtype=torch.float32, device=device)
        return out.to(out_dtype).view(1, 1, out.shape[0], 7)


# Data-dependent output (the number of kept rows): a custom op whose fake kernel gives the rows
# as an unbacked symbolic size, so torch.export / torch.compile(fullgraph=True) keep it dynamic
# and torch.jit.trace records the op instead of baking one input's row count into the graph.
@torch.library.custom_op("caffenorm::detection_output", mutates_args=())
def detection_output_op(
    loc: Tensor,
    conf: Tensor,
    prior: Tensor,
    num_classes: int,
    share_location: bool,
    background_label_id: int,
    nms_threshold: float,
    top_k: int,
    eta: float,
    keep_top_k: int,
    confidence_threshold: float | None,
    code_type: str,
    variance_encoded_in_target: bool,
) -> Tensor:
    """``caffenorm::detection_output``: :func:`detection_output` as one op, ``(1, 1, num_kept, 7)``.

    ``num_kept`` depends on the data (an unbacked size under ``torch.export``). ``code_type`` is a
    name (CORNER, CENTER_SIZE, CORNER_SIZE); ``confidence_threshold`` None means ``-FLT_MAX``.
    No gradient (Caffe's ``Backward_cpu`` is NOT_IMPLEMENTED).
    """
    return detection_output(
        loc,
        conf,
        prior,
        num_classes=num_classes,
        share_location=share_location,
        background_label_id=background_label_id,
        nms_threshold=nms_threshold,
        top_k=top_k,
        eta=eta,
        keep_top_k=keep_top_k,
        confidence_threshold=confidence_threshold,
        code_type=code_type,
        variance_encoded_in_target=variance_encoded_in_target,
    )


@detection_output_op.register_fake
def _detection_output_fake(
    loc: Tensor,
    conf: Tensor,
    prior: Tensor,
    num_classes: int,
    share_location: bool,
    background_label_id: int,
    nms_threshold: float,
    top_k: int,
    eta: float,
    keep_top_k: int,
    confidence_threshold: float | None,
    code_type: str,
    variance_encoded_in_target: bool,
) -> Tensor:
    """``(1, 1, u, 7)`` with ``u`` a new unbacked size (``u >= 0``), in ``loc``'s float dtype."""
    num_classes = _check_detection_settings(
        num_classes, share_location, background_label_id, nms_threshold, top_k, eta, keep_top_k,
        confidence_threshold, code_type,
    )[0]
    _detection_shapes(loc, conf, prior, num_classes, share_location)
    rows = torch.library.get_ctx().new_dynamic_size()
    dtype = loc.dtype if loc.is_floating_point() else torch.float32
    return loc.new_empty((1, 1, rows, 7), dtype=dtype)


_no_gradient(detection_output_op, 13)  # 13 arguments: loc, conf, prior and 10 settings
