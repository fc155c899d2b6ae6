"""Tests for caffenorm.caffe.ops.detection: SSD's PriorBox and DetectionOutput.

Three independent witnesses:

* a deliberately simple float64 numpy reference below (plain loops, written from the formulas of
  weiliu89/caffe ``ssd``: prior_box_layer.cpp, detection_output_layer.cpp, bbox_util.cpp),
  itself pinned by hand-computed cases;
* hand-computed expectations for the edge rules (IoU just above / below the threshold, inverted
  boxes, adaptive ``eta``, ``top_k`` before NMS, the empty-result rows, the output order);
* OpenCV dnn 4.x (``cv2.dnn.readNetFromCaffe``) as a peer implementation of both layers.

Where OpenCV deliberately differs from Caffe, the OpenCV tests stay inside the common ground:

* PriorBox: OpenCV's ``clip`` defaults to *true* and ``variance`` is required, so both are always
  written out; OpenCV keeps a fractional ``min_size`` (Caffe truncates it to an int) and ignores
  ``img_size``/``img_h``/``img_w``, so only integer sizes and no image-size override are compared.
* DetectionOutput: OpenCV orders each image's rows by descending score over all classes, while
  Caffe groups them by label (ascending) and then by descending score -- rows are compared after
  sorting both by (image, -score); OpenCV's output has ``keep_top_k * N`` rows padded with zeros
  (padding dropped via score > 0, so every test sets ``confidence_threshold >= 0.01``); its
  ``confidence_threshold`` defaults to 0 (Caffe: -FLT_MAX), ``keep_top_k`` is required (Caffe: -1),
  ``eta`` is ignored and ``CORNER_SIZE`` is decoded as ``CORNER``; with no detection it outputs
  zeros where Caffe outputs one ``[i, -1, ..., -1]`` row per image.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys
import warnings

import numpy as np
import pytest
import torch
from google.protobuf import text_format

if importlib.util.find_spec("caffenorm") is None:  # not installed: use the src/ checkout
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "src"))

from caffenorm.caffe import schema  # noqa: E402
from caffenorm.caffe.layers.detection import (  # noqa: E402
    PriorBox,
    detection_output_from_param,
    prior_box_from_param,
    resolve_detection_output_param,
    resolve_prior_box_param,
)
from caffenorm.caffe.ops.detection import (  # noqa: E402
    decode_boxes,
    detection_output,
    jaccard_overlap,
    nms,
    prior_box,
)
from caffenorm.errors import CaffeNormError, InputShapeError, LayerConfigError  # noqa: E402

# ---------------------------------------------------------------------------------------
# The numpy reference (float64, loops, one formula per line)
# ---------------------------------------------------------------------------------------


def ref_aspect_ratios(aspect_ratios, flip):
    ars = [1.0]
    for ar in aspect_ratios:
        if any(abs(ar - known) < 1e-6 for known in ars):
            continue
        ars.append(ar)
        if flip:
            ars.append(1.0 / ar)
    return ars


def ref_prior_box(feature_hw, image_hw, min_sizes, max_sizes=(), aspect_ratios=(), flip=True, clip=False,
                  variances=(0.1,), step_h=0.0, step_w=0.0, offset=0.5):
    fh, fw = feature_hw
    ih, iw = image_hw
    if step_h == 0 or step_w == 0:
        step_h, step_w = ih / fh, iw / fw
    ars = ref_aspect_ratios(aspect_ratios, flip)
    boxes = []
    for h in range(fh):
        for w in range(fw):
            cx = (w + offset) * step_w
            cy = (h + offset) * step_h
            for s, min_size in enumerate(min_sizes):
                m = int(min_size)  # Caffe reads the sizes into int locals
                sizes = [(m, m)]
                if max_sizes:
                    side = math.sqrt(m * int(max_sizes[s]))
                    sizes.append((side, side))
                for ar in ars:
                    if abs(ar - 1) < 1e-6:
                        continue
                    sizes.append((m * math.sqrt(ar), m / math.sqrt(ar)))
                for bw, bh in sizes:
                    boxes += [(cx - bw / 2) / iw, (cy - bh / 2) / ih, (cx + bw / 2) / iw, (cy + bh / 2) / ih]
    boxes = np.array(boxes)
    if clip:
        boxes = np.minimum(np.maximum(boxes, 0), 1)
    var = np.tile(np.array(variances if len(variances) == 4 else list(variances) * 4), len(boxes) // 4)
    return np.stack([boxes, var])[None]


def ref_decode(prior, variance, loc, code_type, variance_encoded_in_target=False):
    v = [1.0] * 4 if variance_encoded_in_target else list(variance)
    px1, py1, px2, py2 = prior
    l0, l1, l2, l3 = loc
    if code_type == "CORNER":
        return [px1 + v[0] * l0, py1 + v[1] * l1, px2 + v[2] * l2, py2 + v[3] * l3]
    pw, ph = px2 - px1, py2 - py1
    if code_type == "CORNER_SIZE":
        return [px1 + v[0] * l0 * pw, py1 + v[1] * l1 * ph, px2 + v[2] * l2 * pw, py2 + v[3] * l3 * ph]
    assert code_type == "CENTER_SIZE"
    cx = v[0] * l0 * pw + (px1 + px2) / 2
    cy = v[1] * l1 * ph + (py1 + py2) / 2
    w = math.exp(v[2] * l2) * pw
    h = math.exp(v[3] * l3) * ph
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def ref_size(b):
    if b[2] < b[0] or b[3] < b[1]:
        return 0.0
    return (b[2] - b[0]) * (b[3] - b[1])


def ref_iou(a, b):
    # JaccardOverlap(bbox1=a, bbox2=b).  Python's max(p, q) / min(p, q) return p unless q compares
    # greater / less: std::max / std::min's rule, which decides what a NaN corner does.
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if not (iw > 0 and ih > 0):  # Caffe: if (w > 0 && h > 0) ... else 0 -- a NaN width gives 0
        return 0.0
    inter = iw * ih
    return inter / (ref_size(a) + ref_size(b) - inter)


def ref_nms(boxes, scores, threshold, top_k=-1, eta=1.0, score_threshold=-3.4028234663852886e38):
    order = [i for i in range(len(scores)) if scores[i] > score_threshold]
    order.sort(key=lambda i: -scores[i])  # Python's sort is stable, like std::stable_sort
    if top_k > -1:
        order = order[:top_k]
    kept = []
    for i in order:
        if all(ref_iou(boxes[i], boxes[k]) <= threshold for k in kept):
            kept.append(i)
            if eta < 1 and threshold > 0.5:
                threshold *= eta
    return kept


def ref_detection_output(loc, conf, prior, num_classes, share_location=True, background_label_id=0,
                         nms_threshold=0.3, top_k=-1, eta=1.0, keep_top_k=-1, confidence_threshold=None,
                         code_type="CENTER_SIZE", variance_encoded_in_target=False):
    loc, conf, prior = (np.asarray(a, dtype=np.float64) for a in (loc, conf, prior))
    n = loc.shape[0]
    num_priors = prior.shape[2] // 4
    num_loc = 1 if share_location else num_classes
    pboxes = prior[0, 0].reshape(-1, 4)
    pvars = prior[0, 1].reshape(-1, 4)
    thr = -3.4028234663852886e38 if confidence_threshold is None else confidence_threshold
    rows = []
    for i in range(n):
        lp = loc[i].reshape(num_priors, num_loc, 4)
        sc = conf[i].reshape(num_priors, num_classes)
        decoded = [[ref_decode(pboxes[p], pvars[p], lp[p, c], code_type, variance_encoded_in_target)
                    for p in range(num_priors)] for c in range(num_loc)]
        per_label = {}
        for c in range(num_classes):
            if c == background_label_id:
                continue
            boxes = decoded[0 if share_location else c]
            per_label[c] = ref_nms(boxes, sc[:, c], nms_threshold, top_k, eta, thr)
        found = [(sc[p, c], c, p) for c in sorted(per_label) for p in per_label[c]]
        if keep_top_k > -1 and len(found) > keep_top_k:
            best = sorted(found, key=lambda t: -t[0])[:keep_top_k]
            per_label = {}
            for _, c, p in best:
                per_label.setdefault(c, []).append(p)
        for c in sorted(per_label):
            for p in per_label[c]:
                rows.append([i, c, sc[p, c], *decoded[0 if share_location else c][p]])
    if not rows:
        return np.array([[i, -1, -1, -1, -1, -1, -1] for i in range(n)], dtype=np.float64)
    return np.array(rows)


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def random_inputs(rng, n, num_priors, num_classes, share_location, scale=1.0):
    num_loc = 1 if share_location else num_classes
    loc = rng.normal(size=(n, num_priors * num_loc * 4)) * scale
    logits = rng.normal(size=(n, num_priors, num_classes)) * 2.0
    conf = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return loc.astype(np.float32), conf.reshape(n, -1).astype(np.float32)


def rows_of(out: torch.Tensor) -> np.ndarray:
    assert out.dim() == 4 and out.shape[:2] == (1, 1) and out.shape[3] == 7
    return out[0, 0].double().numpy()


def by_image_and_score(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort((-rows[:, 2], rows[:, 0]))]


# ---------------------------------------------------------------------------------------
# The reference against hand-computed values
# ---------------------------------------------------------------------------------------


def test_reference_one_prior_on_a_1x1_map():
    p = ref_prior_box((1, 1), (300, 300), [30], [60], [2], flip=True)
    s = math.sqrt(1800) / 2  # half side of the sqrt(min*max) box
    r = 30 * math.sqrt(2) / 2, 30 / math.sqrt(2) / 2
    expected = np.array([
        [135, 135, 165, 165],
        [150 - s, 150 - s, 150 + s, 150 + s],
        [150 - r[0], 150 - r[1], 150 + r[0], 150 + r[1]],
        [150 - r[1], 150 - r[0], 150 + r[1], 150 + r[0]],
    ]) / 300
    np.testing.assert_allclose(p[0, 0].reshape(-1, 4), expected, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(p[0, 1], 0.1)


def test_reference_decode_by_hand():
    prior, var = [0.4, 0.4, 0.6, 0.6], [0.1, 0.1, 0.2, 0.2]
    loc = [1.0, -1.0, 0.0, math.log(2) / 0.2]
    np.testing.assert_allclose(ref_decode(prior, var, loc, "CENTER_SIZE"), [0.42, 0.28, 0.62, 0.68], atol=1e-15)
    np.testing.assert_allclose(ref_decode(prior, var, loc, "CORNER"), [0.5, 0.3, 0.6, 0.6 + math.log(2)], atol=1e-15)
    np.testing.assert_allclose(
        ref_decode(prior, var, loc, "CORNER_SIZE"), [0.42, 0.38, 0.6, 0.6 + 0.2 * math.log(2)], atol=1e-15
    )
    np.testing.assert_allclose(
        ref_decode(prior, var, [0.1, 0, 0, 0], "CENTER_SIZE", variance_encoded_in_target=True),
        [0.42, 0.4, 0.62, 0.6], atol=1e-15,
    )


def test_reference_iou_and_nms_by_hand():
    a = [0.0, 0.0, 1.0, 1.0]
    assert ref_iou(a, [0, 0, 1, 0.51]) == pytest.approx(0.51)
    assert ref_nms([a, [0, 0, 1, 0.51]], [0.9, 0.8], 0.5) == [0]
    assert ref_nms([a, [0, 0, 1, 0.49]], [0.9, 0.8], 0.5) == [0, 1]
    assert ref_iou(a, [0.5, 0, 0.2, 1]) == 0.0  # inverted box: size 0, no overlap


# ---------------------------------------------------------------------------------------
# PriorBox
# ---------------------------------------------------------------------------------------


def test_prior_box_one_prior_on_a_1x1_map_by_hand():
    out = prior_box((1, 1), (300, 300), min_sizes=[30])
    assert out.shape == (1, 2, 4) and out.dtype == torch.float32
    assert out[0, 0].tolist() == pytest.approx([0.45, 0.45, 0.55, 0.55], abs=1e-7)
    assert out[0, 1].tolist() == pytest.approx([0.1] * 4, abs=1e-8)


def test_prior_box_order_steps_and_offset_by_hand():
    # 2x3 map, explicit steps 40 (h) and 30 (w), offset 0.25: centres x = 7.5, 37.5, 67.5; y = 10, 50.
    out = prior_box((2, 3), (100, 120), min_sizes=[10, 20], max_sizes=[40, 80], step_h=40, step_w=30, offset=0.25)
    boxes = out[0, 0].view(2, 3, 4, 4).double()  # h, w, prior (min1, max1, min2, max2), coord
    cx, cy = 37.5, 50.0
    for p, side in enumerate([10, 20, 20, 40]):
        expected = [(cx - side / 2) / 120, (cy - side / 2) / 100, (cx + side / 2) / 120, (cy + side / 2) / 100]
        assert boxes[1, 1, p].tolist() == pytest.approx(expected, abs=1e-7)


def test_prior_box_truncates_fractional_sizes_like_caffe():
    # int min_size_ = min_sizes_[s]: 30.9 acts as 30, max 60.7 as 60 (validation uses the floats).
    a = prior_box((2, 2), (64, 64), min_sizes=[30.9], max_sizes=[60.7], aspect_ratios=[2])
    b = prior_box((2, 2), (64, 64), min_sizes=[30], max_sizes=[60], aspect_ratios=[2])
    assert torch.equal(a, b)


def test_prior_box_aspect_ratio_list():
    # 1 is always first; duplicates (|ar - known| < 1e-6, also against flipped ones) are skipped.
    one = prior_box((1, 1), (10, 10), min_sizes=[4], aspect_ratios=[2, 1, 2.0000001, 0.5, 3], flip=True)
    assert one.shape[2] // 4 == 5  # 1, 2, 1/2, 3, 1/3
    noflip = prior_box((1, 1), (10, 10), min_sizes=[4], aspect_ratios=[2, 1, 0.5], flip=False)
    assert noflip.shape[2] // 4 == 3  # 1, 2, 1/2


PRIOR_SETTINGS = [
    dict(min_sizes=[30]),
    dict(min_sizes=[30], max_sizes=[60], aspect_ratios=[2], flip=True),
    dict(min_sizes=[21, 45], max_sizes=[45, 99], aspect_ratios=[2, 3, 2, 0.5], flip=True, clip=True),
    dict(min_sizes=[60], max_sizes=[111], aspect_ratios=[2, 3], flip=False, clip=True, variances=[0.1, 0.1, 0.2, 0.2]),
    dict(min_sizes=[35.84, 17.2], aspect_ratios=[1, 1.5], flip=True, variances=[0.3]),
    dict(min_sizes=[16], max_sizes=[32], aspect_ratios=[2], step_h=8, step_w=8, offset=0.5, clip=True),
    dict(min_sizes=[16], aspect_ratios=[3], step_h=7, step_w=13, offset=0.0),
    dict(min_sizes=[100], max_sizes=[150], aspect_ratios=[0.25], offset=1.0, variances=[0.1, 0.2, 0.3, 0.4]),
]


@pytest.mark.parametrize("settings", PRIOR_SETTINGS)
@pytest.mark.parametrize("feature_hw, image_hw", [((1, 1), (300, 300)), ((3, 5), (37, 61)), ((10, 10), (300, 300))])
def test_prior_box_matches_reference(settings, feature_hw, image_hw):
    got = prior_box(feature_hw, image_hw, **settings)
    expected = ref_prior_box(feature_hw, image_hw, **settings)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=0, atol=2e-7)
    got64 = prior_box(feature_hw, image_hw, **settings, dtype=torch.float64)
    assert got64.dtype == torch.float64
    np.testing.assert_allclose(got64.numpy(), expected, rtol=0, atol=2e-6)  # float32 intermediates


def test_prior_box_module_uses_only_shapes():
    layer = PriorBox(min_sizes=[30], max_sizes=[60], aspect_ratios=[2], clip=True)
    feature, image = torch.randn(2, 8, 5, 7), torch.randn(2, 3, 50, 70)
    out = layer(feature, image)
    assert torch.equal(out, layer(torch.zeros_like(feature), torch.ones_like(image)))
    assert torch.equal(out, prior_box((5, 7), (50, 70), min_sizes=[30], max_sizes=[60], aspect_ratios=[2], clip=True))
    assert layer.num_priors == 4
    assert layer(feature.double(), image).dtype == torch.float64


def test_prior_box_param_resolution():
    def param(text):
        return text_format.Parse(text, schema.PriorBoxParameter())

    text = "min_size: 30 max_size: 60 aspect_ratio: 2 img_size: 320 step: 16"
    kw = resolve_prior_box_param(param(text), (4, 4), (300, 300))
    assert kw["image_hw"] == (320, 320) and (kw["step_h"], kw["step_w"]) == (16, 16)
    assert kw["variances"] == [pytest.approx(0.1)] and kw["flip"] and not kw["clip"] and kw["offset"] == 0.5
    assert torch.equal(prior_box(**kw), ref_like(kw))
    kw = resolve_prior_box_param(param("min_size: 30 img_h: 200 img_w: 100 step_h: 8 step_w: 4"), (4, 4), (300, 300))
    assert kw["image_hw"] == (200, 100) and (kw["step_h"], kw["step_w"]) == (8, 4)
    kw = resolve_prior_box_param(param("min_size: 30"), (4, 4), (300, 300))
    assert kw["image_hw"] == (300, 300) and kw["step_h"] == kw["step_w"] == 0

    layer = prior_box_from_param(param("min_size: 30 img_size: 320 clip: true"))
    out = layer(torch.zeros(1, 1, 4, 4), torch.zeros(1, 3, 300, 300))
    assert torch.equal(out, prior_box((4, 4), (320, 320), min_sizes=[30], clip=True))

    for bad in [
        "",  # no min_size
        "min_size: 0",
        "min_size: 30 max_size: 20",
        "min_size: 30 min_size: 40 max_size: 50",
        "min_size: 30 variance: 0.1 variance: 0.2",
        "min_size: 30 variance: 0",
        "min_size: 30 img_size: 300 img_h: 300 img_w: 300",
        "min_size: 30 img_h: 300",
        "min_size: 30 step: 8 step_h: 8 step_w: 8",
        "min_size: 30 step_w: 8",
        "min_size: 30 step: 0",
    ]:
        with pytest.raises(LayerConfigError):
            resolve_prior_box_param(param(bad), (4, 4), (300, 300))


def ref_like(kw):
    keys = ("min_sizes", "max_sizes", "aspect_ratios", "flip", "clip", "variances", "step_h", "step_w", "offset")
    return torch.from_numpy(ref_prior_box(kw["feature_hw"], kw["image_hw"], **{k: kw[k] for k in keys})).float()


def test_prior_box_rejects_bad_settings():
    with pytest.raises(LayerConfigError):
        prior_box((2, 2), (10, 10), min_sizes=[])
    with pytest.raises(LayerConfigError):
        prior_box((2, 2), (10, 10), min_sizes=[4], variances=[0.1, 0.1, 0.2])
    with pytest.raises(LayerConfigError):
        prior_box((2, 2), (10, 10), min_sizes=[4], aspect_ratios=[0])
    with pytest.raises(InputShapeError):
        prior_box((0, 2), (10, 10), min_sizes=[4])
    with pytest.raises(InputShapeError):
        PriorBox(min_sizes=[4])(torch.zeros(4, 4), torch.zeros(1, 3, 8, 8))


# ---------------------------------------------------------------------------------------
# IoU, NMS, decoding
# ---------------------------------------------------------------------------------------


def test_nms_threshold_just_above_and_below():
    a = [0.0, 0.0, 1.0, 1.0]
    boxes = torch.tensor([a, [0, 0, 1, 0.51], [0, 0, 1, 0.49]])
    assert jaccard_overlap(boxes[:1], boxes[1:]).tolist() == [[pytest.approx(0.51), pytest.approx(0.49)]]
    assert nms(boxes[:2], torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]  # 0.51 > 0.5: suppressed
    assert nms(boxes[[0, 2]], torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]  # 0.49 <= 0.5: kept


def test_nms_edge_rules():
    a = [0.0, 0.0, 1.0, 1.0]
    # An inverted box (xmax < xmin) has size 0 and overlaps nothing; touching boxes do not overlap.
    boxes = torch.tensor([a, [0.9, 0.0, 0.2, 1.0], [1.0, 0.0, 2.0, 1.0]])
    assert jaccard_overlap(boxes[:1], boxes[1:]).tolist() == [[0.0, 0.0]]
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.0).tolist() == [0, 1, 2]
    # Order by descending score, stable for ties; top_k cuts *before* NMS.
    far = torch.tensor([[0, 0, 0.1, 0.1], [0.2, 0.2, 0.3, 0.3], [0.4, 0.4, 0.5, 0.5], [0.6, 0.6, 0.7, 0.7]])
    assert nms(far, torch.tensor([0.5, 0.9, 0.5, 0.7]), 0.5).tolist() == [1, 3, 0, 2]
    assert nms(far, torch.tensor([0.5, 0.9, 0.5, 0.7]), 0.5, top_k=2).tolist() == [1, 3]
    # score_threshold is strict (score > threshold).
    assert nms(far, torch.tensor([0.5, 0.9, 0.5, 0.7]), 0.5, score_threshold=0.5).tolist() == [1, 3]
    # top_k counts candidates, not kept boxes: the 2nd candidate is suppressed, nothing replaces it.
    boxes = torch.tensor([a, [0, 0, 1, 0.9], [2, 2, 3, 3]])
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5, top_k=2).tolist() == [0]


def test_nan_corners_follow_std_max_and_min():
    """Caffe's IntersectBBox takes std::max / std::min of (bbox1, bbox2) corners, ApplyNMSFast calls
    JaccardOverlap(candidate, kept): a NaN corner of the kept box is passed over and its NaN size
    makes the overlap NaN (the candidate goes); a NaN corner of the candidate propagates into the
    intersection's width, which is then not > 0 (overlap 0)."""
    nan = float("nan")
    a = [0.0, 0.0, 0.5, 0.5]
    broken = [nan, 0.1, 0.6, 0.6]
    far = [0.8, 0.8, 0.9, 0.9]
    pair = jaccard_overlap(torch.tensor([a]), torch.tensor([broken]))
    assert math.isnan(pair.item())
    assert jaccard_overlap(torch.tensor([broken]), torch.tensor([a])).item() == 0.0
    assert ref_iou(broken, a) == 0.0 and math.isnan(ref_iou(a, broken))
    # Far from the broken box (apart in y: 0.8 > 0.6): 0 either way.
    assert jaccard_overlap(torch.tensor([far]), torch.tensor([broken])).item() == 0.0
    # Kept first, the broken box removes every later candidate it is not apart from ...
    boxes = torch.tensor([broken, a, [0.1, 0.1, 0.4, 0.4]])
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.45).tolist() == [0]
    # ... and as a candidate it overlaps nothing and is kept; the box after it meets its NaN size.
    boxes = torch.tensor([a, broken, [0.2, 0.55, 0.3, 0.58]])
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.45).tolist() == [0, 1]
    assert ref_nms([a, broken, [0.2, 0.55, 0.3, 0.58]], [0.9, 0.8, 0.7], 0.45) == [0, 1]


def test_nms_adaptive_eta():
    # IoU(A, B) = 0.4, C is far away.  threshold 0.6, eta 0.5: after keeping A the threshold drops
    # to 0.3 (0.6 > 0.5), so B (0.4 > 0.3) is suppressed; with eta = 1 it is kept.
    boxes = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0.4], [3, 3, 4, 4]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.6).tolist() == [0, 1, 2]
    assert nms(boxes, scores, 0.6, eta=0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.45, eta=0.5).tolist() == [0, 1, 2]  # 0.45 is not > 0.5: never shrinks
    # Shrinking stops once the threshold is <= 0.5: 0.6 -> 0.54 (keep A) -> 0.486 (keep C), and
    # keeping D leaves 0.486, so B (IoU 0.45 with A) is kept; one more shrink would give 0.437.
    boxes = torch.tensor([[0, 0, 1, 1], [3, 3, 4, 4], [6, 6, 7, 7], [0, 0, 1, 0.45]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert nms(boxes, scores, 0.6, eta=0.9).tolist() == [0, 1, 2, 3]
    # ... and continues while above 0.5: 0.8 -> 0.56 (keep A) -> 0.392 (keep C): B (0.45) suppressed.
    assert nms(boxes, scores, 0.8, eta=0.7).tolist() == [0, 1, 2]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("top_k, eta", [(-1, 1.0), (20, 1.0), (-1, 0.8)])
@pytest.mark.parametrize("block", [None, 7])
def test_nms_matches_reference(seed, top_k, eta, block, monkeypatch):
    if block:  # candidates are processed in blocks; check that block boundaries change nothing
        monkeypatch.setattr("caffenorm.caffe.ops.detection._NMS_BLOCK", block)
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 0.8, size=(60, 2))
    wh = rng.uniform(0.05, 0.4, size=(60, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    boxes[:3, [0, 2]] = boxes[:3, [2, 0]]  # a few inverted boxes
    scores = rng.uniform(size=60).astype(np.float32)
    got = nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.45, top_k=top_k, eta=eta)
    assert got.dtype == torch.long
    assert got.tolist() == ref_nms(boxes.astype(np.float64), scores.astype(np.float64), 0.45, top_k, eta)


@pytest.mark.parametrize("code_type", ["CORNER", "CENTER_SIZE", "CORNER_SIZE"])
@pytest.mark.parametrize("encoded", [False, True])
def test_decode_matches_reference(code_type, encoded):
    rng = np.random.default_rng(1)
    prior = ref_prior_box((3, 3), (90, 90), [20], [40], [2], clip=True, variances=[0.1, 0.1, 0.2, 0.2])
    pboxes, pvars = prior[0, 0].reshape(-1, 4), prior[0, 1].reshape(-1, 4)
    loc = rng.normal(size=(len(pboxes), 4))
    got = decode_boxes(torch.from_numpy(loc), torch.from_numpy(pboxes), torch.from_numpy(pvars), code_type, encoded)
    assert got.dtype == torch.float32
    expected = [ref_decode(pboxes[p], pvars[p], loc[p], code_type, encoded) for p in range(len(pboxes))]
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-6, atol=1e-6)


def test_decode_by_hand_and_prior_check():
    prior = torch.tensor([[0.4, 0.4, 0.6, 0.6]])
    var = torch.tensor([[0.1, 0.1, 0.2, 0.2]])
    loc = torch.tensor([[1.0, -1.0, 0.0, math.log(2) / 0.2]])
    assert decode_boxes(loc, prior, var, "CENTER_SIZE").tolist()[0] == pytest.approx([0.42, 0.28, 0.62, 0.68], abs=1e-6)
    with pytest.raises(LayerConfigError, match="CHECK_GT"):
        decode_boxes(loc, torch.tensor([[0.5, 0.4, 0.5, 0.6]]), var, "CENTER_SIZE")
    decode_boxes(loc, torch.tensor([[0.5, 0.4, 0.5, 0.6]]), var, "CORNER")  # CORNER does not check


# ---------------------------------------------------------------------------------------
# DetectionOutput
# ---------------------------------------------------------------------------------------

DETECTION_SETTINGS = [
    dict(),
    dict(confidence_threshold=0.3, nms_threshold=0.45, top_k=50, keep_top_k=20),
    dict(share_location=False, confidence_threshold=0.2, keep_top_k=7),
    dict(share_location=False, background_label_id=-1, confidence_threshold=0.25, code_type="CORNER",
         nms_threshold=0.5),
    dict(background_label_id=4, confidence_threshold=0.3, code_type="CORNER"),  # no background class
    dict(background_label_id=2, confidence_threshold=0.1, top_k=5, code_type="CORNER_SIZE"),
    dict(confidence_threshold=0.2, eta=0.9, nms_threshold=0.7, variance_encoded_in_target=True),
    dict(share_location=False, background_label_id=1, confidence_threshold=0.4, keep_top_k=0),
    dict(confidence_threshold=0.05, keep_top_k=3, top_k=10, nms_threshold=0.0),
]


@pytest.mark.parametrize("settings", DETECTION_SETTINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_detection_output_matches_reference(settings, seed):
    rng = np.random.default_rng(seed)
    num_classes = 4
    prior = ref_prior_box((3, 4), (60, 80), [16], [32], [2], clip=True, variances=[0.1, 0.1, 0.2, 0.2])
    num_priors = prior.shape[2] // 4
    scale = 0.05 if settings.get("variance_encoded_in_target") else 1.0
    loc, conf = random_inputs(rng, 3, num_priors, num_classes, settings.get("share_location", True), scale)
    prior32 = prior.astype(np.float32)
    got = detection_output(torch.from_numpy(loc), torch.from_numpy(conf), torch.from_numpy(prior32),
                           num_classes=num_classes, **settings)
    expected = ref_detection_output(loc, conf, prior32, num_classes, **settings)
    rows = rows_of(got)
    assert rows.shape == expected.shape
    np.testing.assert_array_equal(rows[:, :2], expected[:, :2])  # same image, label, order
    np.testing.assert_allclose(rows[:, 2:], expected[:, 2:], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("settings", DETECTION_SETTINGS[:4])
def test_detection_output_with_nan_boxes_matches_reference(settings):
    rng = np.random.default_rng(11)
    prior = ref_prior_box((3, 4), (60, 80), [16], [32], [2], clip=True, variances=[0.1, 0.1, 0.2, 0.2])
    num_priors = prior.shape[2] // 4
    loc, conf = random_inputs(rng, 2, num_priors, 4, settings.get("share_location", True), 0.5)
    loc.reshape(-1)[rng.choice(loc.size, 9, replace=False)] = [np.nan, np.inf, -np.inf] * 3
    prior32 = prior.astype(np.float32)
    got = rows_of(detection_output(torch.from_numpy(loc), torch.from_numpy(conf), torch.from_numpy(prior32),
                                   num_classes=4, **settings))
    expected = ref_detection_output(loc, conf, prior32, 4, **settings)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got[:, :2], expected[:, :2])
    np.testing.assert_allclose(got[:, 2:], expected[:, 2:], rtol=1e-6, atol=1e-6)  # NaN == NaN here


def test_detection_output_row_order_and_keep_top_k_by_hand():
    # Two priors far apart, three classes (0 = background).  Caffe emits, per image, label 1's
    # rows before label 2's even when label 2 scores higher; within a label, by score.
    prior = torch.tensor([[[0.0, 0.0, 0.2, 0.2, 0.6, 0.6, 0.9, 0.9], [0.1] * 8]])
    loc = torch.zeros(1, 8)
    conf = torch.tensor([[0.1, 0.3, 0.6, 0.2, 0.35, 0.45]])  # prior 0: (bg, c1, c2), prior 1: ...
    out = detection_output(loc, conf, prior, num_classes=3)
    assert out.shape == (1, 1, 4, 7)
    assert out[0, 0, :, :3].tolist() == [
        [0, 1, pytest.approx(0.35)],
        [0, 1, pytest.approx(0.3)],
        [0, 2, pytest.approx(0.6)],
        [0, 2, pytest.approx(0.45)],
    ]
    assert out[0, 0, 0, 3:].tolist() == pytest.approx([0.6, 0.6, 0.9, 0.9])
    # keep_top_k = 2 keeps the two best over all classes (0.6 and 0.45, both label 2).
    out = detection_output(loc, conf, prior, num_classes=3, keep_top_k=2)
    assert out[0, 0, :, :3].tolist() == [[0, 2, pytest.approx(0.6)], [0, 2, pytest.approx(0.45)]]
    out = detection_output(loc, conf, prior, num_classes=3, keep_top_k=3)
    assert out[0, 0, :, 1].tolist() == [1, 2, 2]


def test_detection_output_empty_layout():
    prior = torch.tensor([[[0.0, 0.0, 0.2, 0.2], [0.1] * 4]])
    conf = torch.tensor([[0.9, 0.1]])
    # Nothing above the threshold: one fake row [i, -1, -1, -1, -1, -1, -1] per image.
    out = detection_output(torch.zeros(1, 4), conf, prior, num_classes=2, confidence_threshold=0.5)
    assert out.tolist() == [[[[0, -1, -1, -1, -1, -1, -1]]]]
    out = detection_output(torch.zeros(3, 4), conf.repeat(3, 1), prior, num_classes=2, confidence_threshold=0.5)
    assert out.shape == (1, 1, 3, 7)
    assert out[0, 0, :, 0].tolist() == [0, 1, 2] and (out[0, 0, :, 1:] == -1).all()
    # keep_top_k = 0 keeps nothing either.
    out = detection_output(torch.zeros(2, 4), conf.repeat(2, 1), prior, num_classes=2, keep_top_k=0)
    assert out[0, 0, :, 0].tolist() == [0, 1] and (out[0, 0, :, 1:] == -1).all()
    # As soon as one image has a detection, images without any contribute no row.
    conf2 = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.9, 0.1]])
    out = detection_output(torch.zeros(3, 4), conf2, prior, num_classes=2, confidence_threshold=0.5)
    assert out.shape == (1, 1, 1, 7) and out[0, 0, 0, :3].tolist() == [1, 1, pytest.approx(0.8)]


def test_detection_output_batch_is_per_image():
    rng = np.random.default_rng(5)
    prior = prior_box((4, 4), (64, 64), min_sizes=[16], max_sizes=[30], aspect_ratios=[2, 3], clip=True)
    num_priors = prior.shape[2] // 4
    loc, conf = random_inputs(rng, 4, num_priors, 5, True)
    kw = dict(num_classes=5, confidence_threshold=0.25, nms_threshold=0.45, keep_top_k=9, top_k=40)
    batch = rows_of(detection_output(torch.from_numpy(loc), torch.from_numpy(conf), prior, **kw))
    singles = []
    for i in range(4):
        r = rows_of(detection_output(torch.from_numpy(loc[i:i + 1]), torch.from_numpy(conf[i:i + 1]), prior, **kw))
        r[:, 0] = i
        singles.append(r)
    np.testing.assert_array_equal(batch, np.concatenate(singles))
    assert sorted(set(batch[:, 0])) == [0, 1, 2, 3] and (np.diff(batch[:, 0]) >= 0).all()


def test_detection_output_dtype_device_and_no_grad():
    rng = np.random.default_rng(2)
    prior = prior_box((2, 2), (32, 32), min_sizes=[8], aspect_ratios=[2], dtype=torch.float64)
    loc, conf = random_inputs(rng, 2, prior.shape[2] // 4, 3, True)
    loc_t = torch.from_numpy(loc).double().requires_grad_()
    out = detection_output(loc_t, torch.from_numpy(conf).double(), prior, num_classes=3, confidence_threshold=0.2)
    assert out.dtype == torch.float64 and not out.requires_grad
    out32 = detection_output(
        loc_t.float(), torch.from_numpy(conf), prior.float(), num_classes=3, confidence_threshold=0.2
    )
    # Caffe computes in float whatever the Dtype: only the container differs.
    assert torch.equal(out.float(), out32)


def test_detection_output_module_and_param():
    text = """
      num_classes: 21 share_location: true background_label_id: 0
      nms_param { nms_threshold: 0.45 top_k: 400 }
      save_output_param { output_directory: "/nonexistent/ssd_out" output_name_prefix: "comp4_det_test_"
                          output_format: "VOC" label_map_file: "labelmap.prototxt" }
      code_type: CENTER_SIZE keep_top_k: 200 confidence_threshold: 0.01
    """
    param = text_format.Parse(text, schema.DetectionOutputParameter())
    with pytest.warns(UserWarning, match="save_output_param is ignored"):
        kw = resolve_detection_output_param(param)
    assert kw == dict(num_classes=21, share_location=True, background_label_id=0, nms_threshold=pytest.approx(0.45),
                      top_k=400, eta=1.0, keep_top_k=200, confidence_threshold=pytest.approx(0.01),
                      code_type="CENTER_SIZE", variance_encoded_in_target=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kw = resolve_detection_output_param(text_format.Parse("num_classes: 3", schema.DetectionOutputParameter()))
    # caffe.proto defaults: CORNER, no confidence threshold (-FLT_MAX), top_k -1, nms 0.3.
    assert kw["code_type"] == "CORNER" and kw["confidence_threshold"] is None and kw["top_k"] == -1
    assert kw["nms_threshold"] == pytest.approx(0.3) and kw["keep_top_k"] == -1
    param = text_format.Parse("num_classes: 3 keep_top_k: 5", schema.DetectionOutputParameter())
    layer = detection_output_from_param(param)
    rng = np.random.default_rng(3)
    prior = prior_box((3, 3), (30, 30), min_sizes=[10])
    loc, conf = random_inputs(rng, 2, 9, 3, True)
    loc_t, conf_t = torch.from_numpy(loc), torch.from_numpy(conf)
    assert torch.equal(layer(loc_t, conf_t, prior), detection_output(loc_t, conf_t, prior, **kw | {"keep_top_k": 5}))

    for bad in ["share_location: true", "num_classes: 3 nms_param { nms_threshold: -0.1 }",
                "num_classes: 3 nms_param { eta: 1.5 }", "num_classes: 3 nms_param { eta: 0 }"]:
        with pytest.raises(LayerConfigError):
            resolve_detection_output_param(text_format.Parse(bad, schema.DetectionOutputParameter()))


def test_detection_output_shape_errors():
    prior = prior_box((2, 2), (32, 32), min_sizes=[8])  # 4 priors
    with pytest.raises(InputShapeError):
        detection_output(torch.zeros(1, 15), torch.zeros(1, 8), prior, num_classes=2)
    with pytest.raises(InputShapeError):
        detection_output(torch.zeros(1, 16), torch.zeros(2, 8), prior, num_classes=2)
    with pytest.raises(InputShapeError):
        detection_output(torch.zeros(1, 16), torch.zeros(1, 8), prior[:, :1], num_classes=2)
    with pytest.raises(CaffeNormError):
        detection_output(torch.zeros(1, 16), torch.zeros(1, 8), prior, num_classes=2, code_type="CENTRE")
    # Caffe aborts for shared locations with background_label_id -1 (the shared boxes carry label -1).
    with pytest.raises(LayerConfigError, match="label -1"):
        detection_output(torch.zeros(1, 16), torch.zeros(1, 8), prior, num_classes=2, background_label_id=-1)
    detection_output(torch.zeros(1, 32), torch.zeros(1, 8), prior, num_classes=2, background_label_id=-1,
                     share_location=False)


# ---------------------------------------------------------------------------------------
# OpenCV dnn as a peer
# ---------------------------------------------------------------------------------------


def _opencv_net(tmp_path, layers: str):
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "net.prototxt"
    path.write_text('name: "t"\n' + layers)
    return cv2.dnn.readNetFromCaffe(str(path))


def _input_layer(name, shape):
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


OPENCV_PRIORS = [
    # (prior_box_param text, settings for prior_box); clip and variance always explicit.
    ("min_size: 10 variance: 0.1 clip: false", dict(min_sizes=[10])),
    ("min_size: 30 max_size: 60 aspect_ratio: 2 flip: true clip: false variance: 0.1 variance: 0.1 variance: 0.2 "
     "variance: 0.2", dict(min_sizes=[30], max_sizes=[60], aspect_ratios=[2], variances=[0.1, 0.1, 0.2, 0.2])),
    ("min_size: 10 min_size: 20 max_size: 15 max_size: 33 aspect_ratio: 2 aspect_ratio: 3 aspect_ratio: 2 "
     "clip: true variance: 0.1",
     dict(min_sizes=[10, 20], max_sizes=[15, 33], aspect_ratios=[2, 3, 2], clip=True)),
    ("min_size: 12 aspect_ratio: 2 aspect_ratio: 0.5 aspect_ratio: 1 flip: false clip: true variance: 0.2",
     dict(min_sizes=[12], aspect_ratios=[2, 0.5, 1], flip=False, clip=True, variances=[0.2])),
    ("min_size: 16 max_size: 40 aspect_ratio: 3 clip: true step: 8 offset: 0.3 variance: 0.1",
     dict(min_sizes=[16], max_sizes=[40], aspect_ratios=[3], clip=True, step_h=8, step_w=8, offset=0.3)),
    ("min_size: 16 clip: false step_h: 8 step_w: 5 offset: 0 variance: 0.1",
     dict(min_sizes=[16], step_h=8, step_w=5, offset=0)),
]


@pytest.mark.parametrize("text, settings", OPENCV_PRIORS)
@pytest.mark.parametrize("feature_hw, image_hw", [((1, 1), (300, 300)), ((5, 7), (37, 53)), ((19, 19), (300, 300))])
def test_prior_box_matches_opencv(tmp_path, text, settings, feature_hw, image_hw):
    fshape, ishape = (1, 4, *feature_hw), (1, 3, *image_hw)
    net = _opencv_net(
        tmp_path,
        _input_layer("f", fshape) + _input_layer("d", ishape)
        + f'layer {{ name: "p" type: "PriorBox" bottom: "f" bottom: "d" top: "p" prior_box_param {{ {text} }} }}\n',
    )
    net.setInput(np.zeros(fshape, np.float32), "f")
    net.setInput(np.zeros(ishape, np.float32), "d")
    theirs = net.forward("p")
    ours = prior_box(feature_hw, image_hw, **settings).numpy()
    assert theirs.shape == ours.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    # The same through our protobuf path.
    param = text_format.Parse(text, schema.PriorBoxParameter())
    assert torch.equal(prior_box(**resolve_prior_box_param(param, feature_hw, image_hw)), torch.from_numpy(ours))


OPENCV_DETECTIONS = [
    "share_location: true background_label_id: 0 nms_param { nms_threshold: 0.45 } code_type: CENTER_SIZE "
    "keep_top_k: 1000 confidence_threshold: 0.01",
    "share_location: true background_label_id: 0 nms_param { nms_threshold: 0.45 top_k: 30 } code_type: CENTER_SIZE "
    "keep_top_k: 12 confidence_threshold: 0.2",
    "share_location: false background_label_id: 0 nms_param { nms_threshold: 0.5 top_k: 20 } code_type: CENTER_SIZE "
    "keep_top_k: 25 confidence_threshold: 0.15",
    "share_location: false background_label_id: -1 nms_param { nms_threshold: 0.3 } code_type: CORNER "
    "keep_top_k: 1000 confidence_threshold: 0.3",
    "share_location: true background_label_id: 4 nms_param { nms_threshold: 0.3 } code_type: CORNER "
    "keep_top_k: 1000 confidence_threshold: 0.3",
    "share_location: false background_label_id: 2 nms_param { nms_threshold: 0.6 top_k: 8 } code_type: CORNER "
    "keep_top_k: 10 confidence_threshold: 0.05",
    "share_location: true background_label_id: 0 nms_param { nms_threshold: 0.7 top_k: 6 } code_type: CENTER_SIZE "
    "keep_top_k: 1000 confidence_threshold: 0.05",  # top_k (per class, before NMS) is what limits here
    "share_location: true background_label_id: 1 nms_param { nms_threshold: 0.4 } code_type: CENTER_SIZE "
    "keep_top_k: 1000 confidence_threshold: 0.25 variance_encoded_in_target: true",
]


@pytest.mark.parametrize("text", OPENCV_DETECTIONS)
@pytest.mark.parametrize("seed, batch", [(0, 1), (1, 3)])
def test_detection_output_matches_opencv(tmp_path, text, seed, batch):
    num_classes = 4
    param = text_format.Parse(f"num_classes: {num_classes} {text}", schema.DetectionOutputParameter())
    kw = resolve_detection_output_param(param)
    rng = np.random.default_rng(seed)
    prior = prior_box((4, 5), (64, 80), min_sizes=[16], max_sizes=[32], aspect_ratios=[2], clip=True,
                      variances=[0.1, 0.1, 0.2, 0.2]).numpy()
    scale = 0.05 if kw["variance_encoded_in_target"] else 1.0
    loc, conf = random_inputs(rng, batch, prior.shape[2] // 4, num_classes, kw["share_location"], scale)
    # OpenCV insists on a variance-less (1-channel) prior when variance_encoded_in_target; Caffe
    # reads (and ignores) the variances of the usual 2-channel blob.
    cv_prior = np.ascontiguousarray(prior[:, :1]) if kw["variance_encoded_in_target"] else prior
    net = _opencv_net(
        tmp_path,
        _input_layer("loc", loc.shape) + _input_layer("conf", conf.shape) + _input_layer("prior", cv_prior.shape)
        + 'layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det" '
        f"detection_output_param {{ num_classes: {num_classes} {text} }} }}\n",
    )
    net.setInput(loc, "loc")
    net.setInput(conf, "conf")
    net.setInput(cv_prior, "prior")
    theirs = net.forward("det")[0, 0].astype(np.float64)
    theirs = theirs[theirs[:, 2] > 0]  # drop OpenCV's zero padding
    ours = rows_of(detection_output(torch.from_numpy(loc), torch.from_numpy(conf), torch.from_numpy(prior), **kw))
    assert len(ours) > 0 and len(ours) == len(theirs)
    ours, theirs = by_image_and_score(ours), by_image_and_score(theirs)
    np.testing.assert_array_equal(ours[:, :2], theirs[:, :2])
    np.testing.assert_allclose(ours[:, 2:], theirs[:, 2:], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------
# The batched DetectionOutput against the per-image one it replaced (bit for bit)
# ---------------------------------------------------------------------------------------

from detection_per_image import detection_output_per_image  # noqa: E402

import caffenorm.caffe.ops.detection as detection_ops  # noqa: E402

BATCHED_SETTINGS = [
    *DETECTION_SETTINGS,
    dict(confidence_threshold=0.01, nms_threshold=0.45, top_k=400, keep_top_k=200),  # res10's
    dict(nms_threshold=0.3),  # no threshold, no top_k: every prior is a candidate
    dict(confidence_threshold=0.1, eta=0.7, nms_threshold=0.95, keep_top_k=5),
    dict(share_location=False, confidence_threshold=0.05, eta=0.8, nms_threshold=0.9, top_k=7),
    dict(confidence_threshold=0.2, nms_threshold=0.0, keep_top_k=4),
]


def _batched_case(seed: int, n: int, num_classes: int, ties: bool, nonfinite: bool, share: bool):
    rng = np.random.default_rng(seed)
    prior = ref_prior_box((5, 6), (60, 80), [16], [32], [2, 3], clip=True, variances=[0.1, 0.1, 0.2, 0.2])
    num_priors = prior.shape[2] // 4
    loc, conf = random_inputs(rng, n, num_priors, num_classes, share, 0.5)
    if ties:
        conf = np.round(conf * 8) / 8  # many equal scores: order and keep_top_k cuts by index
    if nonfinite:
        loc.reshape(-1)[rng.choice(loc.size, 12, replace=False)] = [np.nan, np.inf, -np.inf] * 4
        conf.reshape(-1)[rng.choice(conf.size, 6, replace=False)] = [np.nan, np.inf, -np.inf] * 2
    return torch.from_numpy(loc), torch.from_numpy(conf), torch.from_numpy(prior.astype(np.float32))


@pytest.mark.parametrize("settings", BATCHED_SETTINGS)
@pytest.mark.parametrize(("seed", "n", "num_classes", "ties", "nonfinite"),
                         [(0, 1, 2, False, False), (1, 3, 4, False, False), (2, 4, 5, True, False),
                          (3, 2, 4, False, True)])
def test_batched_detection_output_equals_the_per_image_one(settings, seed, n, num_classes, ties, nonfinite):
    loc, conf, prior = _batched_case(seed, n, num_classes, ties, nonfinite, settings.get("share_location", True))
    got = detection_output(loc, conf, prior, num_classes=num_classes, **settings)
    want = detection_output_per_image(loc, conf, prior, num_classes=num_classes, **settings)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.parametrize("rounds", [0, 1, 8])
@pytest.mark.parametrize("matrix", [1 << 20, 64, 1])
def test_batched_nms_paths_agree(monkeypatch, rounds, matrix):
    """The fixed-point rounds (cut short to force the sequential scan), row chunks and the
    blocked per-row scan for rows too large for a matrix all give the same rows."""
    monkeypatch.setattr(detection_ops, "_NMS_ROUNDS", rounds)
    monkeypatch.setattr(detection_ops, "_NMS_MATRIX_ELEMENTS", matrix)
    loc, conf, prior = _batched_case(7, 3, 4, True, False, True)
    for settings in (dict(nms_threshold=0.3, keep_top_k=30), dict(confidence_threshold=0.1, eta=0.8,
                                                                   nms_threshold=0.9)):
        got = detection_output(loc, conf, prior, num_classes=4, **settings)
        want = detection_output_per_image(loc, conf, prior, num_classes=4, **settings)
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def _chain(k: int = 60):
    """Boxes sliding right one step at a time: each overlaps the next above 0.4 (and the one after
    below), so the greedy answer (every other box) is a dependency chain as long as the row."""
    x = np.arange(k, dtype=np.float32) * 0.01
    return torch.from_numpy(np.stack([x, np.zeros(k), x + 0.03, np.full(k, 0.1)], axis=1).astype(np.float32))


def test_batched_nms_on_a_suppression_chain():
    k = 60
    prior = torch.cat([_chain(k).reshape(1, 1, -1), torch.full((1, 1, k * 4), 0.1)], dim=1)
    conf = torch.from_numpy(np.stack([np.zeros(k), np.linspace(0.9, 0.5, k)], axis=1).reshape(1, -1)
                            .astype(np.float32))
    loc = torch.zeros(1, k * 4)
    got = detection_output(loc, conf, prior, num_classes=2, nms_threshold=0.4, code_type="CORNER")
    want = detection_output_per_image(loc, conf, prior, num_classes=2, nms_threshold=0.4, code_type="CORNER")
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert got.shape[2] == k // 2


@pytest.mark.parametrize("rows", [1, 2, 3, 9])
def test_the_gpu_greedy_pass_equals_the_cpu_scan(monkeypatch, rows):
    """The fixed-point rounds (CUDA's way, forced here on the CPU), cut short so the device scan
    finishes, and the CPU scan (row by row for few rows, column by column for more) agree, on
    random clusters and on the chain that no number of rounds below its length settles."""
    rng = np.random.default_rng(rows)
    rounds = []
    monkeypatch.setattr(torch, "equal", lambda a, b, _eq=torch.equal: rounds.append(1) or _eq(a, b))
    for case in range(4):
        if case == 3:
            boxes = _chain(40).expand(rows, -1, -1)
        else:
            centre = np.round(rng.uniform(0, 1, (rows, 40, 2)) * 4) / 4 + rng.normal(0, 0.02, (rows, 40, 2))
            half = rng.uniform(0.05, 0.15, (rows, 40, 1))
            boxes = torch.from_numpy(np.concatenate([centre - half, centre + half], -1).astype(np.float32))
        sizes = detection_ops._bbox_size(boxes)
        overlap = detection_ops._pairwise_overlap(boxes, sizes, boxes, sizes)
        valid = torch.from_numpy(np.arange(40) < rng.integers(20, 41, (rows, 1)))
        for threshold in (0.3, 0.45, 0.0):
            scan = detection_ops._greedy_matrix(overlap, valid, threshold, 1.0, fixed_point=False)
            for cap in (0, 2, 8, 64):
                monkeypatch.setattr(detection_ops, "_NMS_ROUNDS", cap)
                rounds.clear()
                fixed = detection_ops._greedy_matrix(overlap, valid, threshold, 1.0, fixed_point=True)
                assert bool((fixed == scan).all()), (case, threshold, cap)
                if case == 3 and threshold == 0.3:  # the chain: 8 rounds never settle, 64 do
                    assert (len(rounds) == 8) if cap == 8 else (cap != 64 or len(rounds) < 64)


def test_overlap_fast_path_without_nan_equals_caffes_rule():
    """Without NaN the CPU takes torch.minimum/maximum and no 'apart' test; with a NaN box anywhere
    it takes std::max/min and the apart test: bit-identical on every NaN-free pair, over inverted,
    touching, nested, infinite, zero-signed and far-apart boxes."""
    rng = np.random.default_rng(3)
    pieces = [rng.uniform(-0.2, 1.2, (300, 4)), rng.choice([0.0, -0.0, 0.5, 1.0, np.inf, -np.inf], (60, 4))]
    boxes = torch.from_numpy(np.concatenate(pieces).astype(np.float32))
    boxes[:40, 2] = boxes[:40, 0]  # touching / zero-width
    sizes = detection_ops._bbox_size(boxes)
    fast = detection_ops._pairwise_overlap(boxes, sizes, boxes, sizes)
    nan_box = torch.tensor([[float("nan"), 0.1, 0.5, 0.6]])
    with_nan = torch.cat([boxes, nan_box])
    general = detection_ops._pairwise_overlap(with_nan, detection_ops._bbox_size(with_nan), with_nan,
                                              detection_ops._bbox_size(with_nan))[:-1, :-1]
    bits = [torch.nan_to_num(t, nan=7.0).view(torch.int32) for t in (fast, general)]  # NaN payloads aside
    assert torch.equal(*bits)
    ref = np.array([[ref_iou(a, b) for b in boxes.double().tolist()] for a in boxes.double().tolist()])
    np.testing.assert_allclose(fast.double().numpy(), ref, rtol=1e-6, atol=1e-7, equal_nan=True)
