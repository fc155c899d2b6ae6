"""ONNX exporters of SSD's detection layers: PriorBox (a constant) and DetectionOutput (standard ops).

DetectionOutput is written with elementwise ops, ``TopK``, ``NonZero`` and one ``Loop``, not with
ONNX's ``NonMaxSuppression``: the ONNX specification leaves that operator's overlap arithmetic to
the runtime, and what onnxruntime's CPU kernel computes (``non_max_suppression.cc``,
``non_max_suppression_helper.h``) is not Caffe SSD's ``ApplyNMSFast``: it reorders each box's
corners before the overlap (Caffe gives an inverted box no overlap), an overlap that is NaN (an
intersection area overflowing float32) never suppresses there while it always does in Caffe, an
earlier version of the kernel popped equal scores in heap order rather than index order, it has
no adaptive ``eta`` and no ``top_k`` cut before NMS, and it rejects an ``iou_threshold`` above 1,
which Caffe accepts.  Here Caffe's overlap is computed pair by pair with the float32 operations of
``JaccardOverlap`` (those of caffenorm's ``_pairwise_overlap``), and the greedy pass is the fixed
point of a ``Loop`` (:func:`_greedy_nms`), so any runtime with IEEE float arithmetic gives Caffe's
rows; ``TopK``'s tie rule (the lower index first) is in the ONNX specification.
"""

from __future__ import annotations

import numpy as np
import torch

from caffenorm.caffe.graph import Node
from caffenorm.caffe.layers.detection import DetectionOutput, PriorBox
from caffenorm.export.onnx._context import ExportContext, concrete
from caffenorm.export.onnx._registry import register_exporter

__all__ = ["export_detection_output", "export_prior_box"]

# onnx.TensorProto element types (kept here so that importing the module needs no onnx).
_FLOAT, _INT64, _DOUBLE = 1, 7, 11
# C's FLT_MAX: Caffe's confidence threshold when the prototxt sets none.
_FLT_MAX = float(np.finfo(np.float32).max)


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


def _f32(x: float) -> float:
    return float(np.float32(x))


def _nms_thresholds(nms_threshold: float, eta: float, count: int) -> list[float] | None:
    """``ApplyNMSFast``'s threshold after 0, 1, ..., ``count`` kept boxes (float32, as caffenorm's
    ``_nms_sorted`` computes it), or None when it never changes."""
    threshold, eta32 = _f32(nms_threshold), _f32(eta)
    if not (eta32 < 1 and threshold > 0.5):
        return None
    table = [threshold]
    for _ in range(count):
        if eta32 < 1 and threshold > 0.5:
            threshold = _f32(threshold * eta32)
        table.append(threshold)
    return table


class _Ops:
    """Small shorthands over :class:`ExportContext` for the DetectionOutput graph."""

    def __init__(self, ctx: ExportContext) -> None:
        self.ctx = ctx
        self._scalars: dict[tuple[str, object], str] = {}

    def __call__(self, op_type: str, *inputs: str, **attrs: object) -> str:
        return self.ctx.op(op_type, *inputs, **attrs)  # type: ignore[no-any-return]

    def f32(self, value: object) -> str:
        return self.ctx.const(value, np.float32)

    def i64(self, value: object) -> str:
        return self.ctx.const(value, np.int64)

    def scalar(self, value: object, dtype: type = np.int64) -> str:
        """A rank-0 constant (``ExportContext.const`` makes 1-D ones), as a ``Constant`` node."""
        from onnx import numpy_helper

        array = np.array(value, dtype=dtype)
        key = (array.dtype.str, array.item())
        if key not in self._scalars:
            self._scalars[key] = self("Constant", value=numpy_helper.from_array(array))
        return self._scalars[key]

    def column(self, x: str, i: int) -> str:
        """``x[..., i]`` (the last axis dropped)."""
        return self("Gather", x, self.scalar(i), axis=-1)

    def slot(self, x: str, i: int) -> str:
        """``x[..., i:i+1]`` (the last axis kept)."""
        return self("Slice", x, self.i64([i]), self.i64([i + 1]), self.i64([-1]))

    def stack(self, parts: list[str]) -> str:
        """``stack(parts, axis=-1)``."""
        return self("Concat", *(self("Unsqueeze", p, self.i64([-1])) for p in parts), axis=-1)

    def to(self, x: str, dtype: int) -> str:
        return self("Cast", x, to=dtype)


def _decode(ops: _Ops, loc: str, prior: str, num_priors: int, num_loc: int, code: str, encoded: bool) -> str:
    """caffenorm's ``decode_boxes``: ``(N, L, P, 4)`` float32 boxes, with its float32 and float64
    operations in its order (CENTER_SIZE's ``exp`` and the final ``centre -/+ size/2`` in double)."""
    pri = ops("Reshape", prior, ops.i64([2, num_priors, 4]))
    boxes = ops("Gather", pri, ops.scalar(0), axis=0)
    var = ops("Gather", pri, ops.scalar(1), axis=0)
    pxmin, pymin, pxmax, pymax = (ops.column(boxes, i) for i in range(4))
    v = [ops.column(var, i) for i in range(4)]
    loc4 = ops("Transpose", ops("Reshape", loc, ops.i64([0, num_priors, num_loc, 4])), perm=[0, 2, 1, 3])
    lx = [ops.column(loc4, i) for i in range(4)]  # (N, L, P) each

    def scaled(i: int) -> str:  # v_i * l_i, or l_i when the variance is encoded in the target
        return lx[i] if encoded else ops("Mul", v[i], lx[i])

    if code == "CORNER":
        corners = [ops("Add", p, scaled(i)) for i, p in enumerate((pxmin, pymin, pxmax, pymax))]
        return ops.stack(corners)
    pw = ops("Sub", pxmax, pxmin)
    ph = ops("Sub", pymax, pymin)
    if code == "CORNER_SIZE":
        sides = (pw, ph, pw, ph)
        corners = [ops("Add", p, ops("Mul", scaled(i), sides[i])) for i, p in enumerate((pxmin, pymin, pxmax, pymax))]
        return ops.stack(corners)
    # CENTER_SIZE: centres in float32, sizes exp(double) * double rounded to float, then double.
    half = ops.f32(0.5)
    pcx = ops("Mul", ops("Add", pxmin, pxmax), half)
    pcy = ops("Mul", ops("Add", pymin, pymax), half)
    cx = ops("Add", ops("Mul", scaled(0), pw), pcx)
    cy = ops("Add", ops("Mul", scaled(1), ph), pcy)
    two = ops.ctx.const(2.0, np.float64)

    def half_size(e: str, side: str) -> str:
        size = ops("Mul", ops("Exp", ops.to(e, _DOUBLE)), ops.to(side, _DOUBLE))
        return ops("Div", ops.to(ops.to(size, _FLOAT), _DOUBLE), two)

    w, h = half_size(scaled(2), pw), half_size(scaled(3), ph)
    cxd, cyd = ops.to(cx, _DOUBLE), ops.to(cy, _DOUBLE)
    corners = [ops.to(ops(op, c, s), _FLOAT) for op, c, s in (("Sub", cxd, w), ("Sub", cyd, h), ("Add", cxd, w),
                                                            ("Add", cyd, h))]
    return ops.stack(corners)


def _overlaps(ops: _Ops, cand: str) -> str:
    """``JaccardOverlap`` of every pair of candidates: ``(N, C', K, K)`` float32, ``[j, k]`` the
    overlap of candidate ``j`` (``bbox1``) with candidate ``k`` (``bbox2``, the kept box in NMS) --
    caffenorm's ``_pairwise_overlap``, operation for operation.  The intersection's corners are
    Caffe's ``std::max`` / ``std::min`` written as ``Where(Less(p, q), q, p)`` /
    ``Where(Less(q, p), q, p)``: ONNX leaves ``Max``/``Min``'s NaN rule unspecified, and Caffe's
    decides what a NaN corner does (a kept box with one removes the later candidates)."""
    x1, y1, x2, y2 = (ops.slot(cand, i) for i in range(4))  # (N, C', K, 1): candidate j
    bx1, by1, bx2, by2 = (ops("Transpose", c, perm=[0, 1, 3, 2]) for c in (x1, y1, x2, y2))  # (N, C', 1, K)
    apart = ops("Or", ops("Or", ops("Greater", bx1, x2), ops("Less", bx2, x1)),
                ops("Or", ops("Greater", by1, y2), ops("Less", by2, y1)))

    def std_max(p: str, q: str) -> str:
        return ops("Where", ops("Less", p, q), q, p)

    def std_min(p: str, q: str) -> str:
        return ops("Where", ops("Less", q, p), q, p)

    iw = ops("Sub", std_min(x2, bx2), std_max(x1, bx1))
    ih = ops("Sub", std_min(y2, by2), std_max(y1, by1))
    inter = ops("Mul", iw, ih)
    zero = ops.f32(0.0)
    invalid = ops("Or", ops("Less", x2, x1), ops("Less", y2, y1))
    size = ops("Where", invalid, zero, ops("Mul", ops("Sub", x2, x1), ops("Sub", y2, y1)))  # BBoxSize
    size_t = ops("Transpose", size, perm=[0, 1, 3, 2])
    iou = ops("Div", inter, ops("Sub", ops("Add", size, size_t), inter))
    overlapping = ops("And", ops("Not", apart), ops("And", ops("Greater", iw, zero), ops("Greater", ih, zero)))
    return ops("Where", overlapping, iou, zero)


def _greedy_nms(ops: _Ops, overlap: str, valid: str, k: str, thresholds: list[float] | None,
                nms_threshold: float) -> str:
    """``ApplyNMSFast``'s greedy pass over candidates in processing order: ``(N, C', K, 1)`` bool.

    Candidate ``j`` is kept iff it is valid and, for every kept ``k < j``, its overlap with ``k``
    is ``<= t`` (a NaN overlap fails), ``t`` being the threshold after the boxes kept before ``j``
    (adaptive ``eta``; constant otherwise).  Keep ``j`` depends only on the decisions before ``j``,
    so the greedy result is the one fixed point of ``kept <- valid and not suppressed(kept)``:
    starting anywhere, after ``i`` rounds the first ``i`` decisions are final.  The ``Loop``
    iterates until nothing changes (at most ``K + 1`` rounds, usually a few: as many as the longest
    chain of suppressions); each round counts the suppressing kept boxes with a ``MatMul`` of 0/1
    values, which is exact in float32.
    """
    from onnx import TensorProto, helper

    ctx = ops.ctx
    rng = ops("Range", ops.scalar(0), k, ops.scalar(1))
    before = ops("Less", ops("Unsqueeze", rng, ops.i64([0])), ops("Unsqueeze", rng, ops.i64([1])))  # [j, k]: k < j
    adaptive = thresholds is not None
    if adaptive:
        table = ctx.tensor(np.asarray(thresholds, dtype=np.float32), "nms_thresholds")
        before_f = ops("Where", before, ops.f32(1.0), ops.f32(0.0))  # (a Cast here makes onnxruntime warn)
        exceeds = None
    else:
        exceeds = ops.to(ops("And", ops("Not", ops("LessOrEqual", overlap, ops.f32(_f32(nms_threshold)))), before),
                         _FLOAT)

    # The body: kept_in -> (changed, kept_out).  Built with onnx.helper; it reads the outer values.
    name = ctx.fresh
    it, cond_in, kept_in = name("nms/iter"), name("nms/cond"), name("nms/kept_in")
    body: list[object] = []

    def node(op_type: str, *inputs: str, **attrs: object) -> str:
        out = name(f"nms/{op_type}")
        body.append(helper.make_node(op_type, list(inputs), [out], name=name(f"nms/{op_type}#"), **attrs))
        return out

    kept_f = node("Cast", kept_in, to=_FLOAT)
    if adaptive:
        count = node("Cast", node("MatMul", before_f, kept_f), to=_INT64)  # kept boxes before j: (N, C', K, 1)
        threshold = node("Gather", table, count, axis=0)
        exceeds = node("Cast", node("And", node("Not", node("LessOrEqual", overlap, threshold)), before), to=_FLOAT)
    assert exceeds is not None
    hits = node("MatMul", exceeds, kept_f)
    kept_out = node("And", valid, node("Equal", hits, ops.f32(0.0)))
    diff = node("ReduceSum", node("Cast", node("Xor", kept_out, kept_in), to=_FLOAT), keepdims=0)
    changed = node("Greater", diff, ops.scalar(0.0, np.float32))
    graph = helper.make_graph(
        body,
        name("nms_body"),
        [helper.make_tensor_value_info(it, TensorProto.INT64, []),
         helper.make_tensor_value_info(cond_in, TensorProto.BOOL, []),
         helper.make_tensor_value_info(kept_in, TensorProto.BOOL, None)],
        [helper.make_tensor_value_info(changed, TensorProto.BOOL, []),
         helper.make_tensor_value_info(kept_out, TensorProto.BOOL, None)],
    )
    trips = ops("Add", k, ops.scalar(1))
    return ops("Loop", trips, ops.scalar(True, np.bool_), valid, body=graph)


@register_exporter(DetectionOutput)
def export_detection_output(node: Node, ctx: ExportContext) -> None:
    """Standard ops reproducing Caffe SSD's rule: decode (Caffe's float32/float64 steps), per image
    and class the scores above ``confidence_threshold`` and their ``top_k`` (``TopK``), greedy NMS
    with Caffe's overlap and (adaptive) threshold (elementwise ops and a ``Loop``), ``keep_top_k``
    across classes (``TopK``), rows by image, label, score (``NonZero``), and one ``[i, -1, ...]``
    row per image when nothing is kept.

    Per image ``n`` and class ``c`` (``C'`` classes, background skipped): the scores ``> threshold``
    (others -inf), ``TopK`` of ``K = min(top_k, P)`` (all ``P`` priors when ``top_k`` is -1), cut
    at run time to the most candidates any class has, so equal scores keep the lower prior first as
    Caffe's ``std::stable_sort``; the candidates' boxes (``GatherND``); their pairwise overlaps
    ``(N, C', K, K)`` and the greedy pass (:func:`_greedy_nms`).  ``keep_top_k``: ``TopK`` over each
    image's ``C' * K`` kept scores in (label, rank) order, so ties keep the first in that order, as
    caffenorm does.  ``NonZero`` of the final ``(N, C', K)`` mask lists the rows in row-major order:
    images, labels ascending, descending score.  Memory: the overlaps take ``4 * N * C' * K^2``
    bytes.

    Not reproduced: Caffe's abort (``CHECK_GT(prior_width, 0)``) on a prior box without positive
    width or height under CENTER_SIZE / CORNER_SIZE; the graph decodes such a box like any other
    (caffenorm raises there, so the export's own check reports it).  Equal rows are not the only
    possible outcome of a whole net: the float noise of the layers before (~1e-6) can swap two
    scores a few ulps apart, and then the rows' order, as it would between any two runtimes.
    """
    det = node.module
    assert isinstance(det, DetectionOutput)
    s = det.settings()
    num_classes, share = int(s["num_classes"]), bool(s["share_location"])
    background, top_k, keep_top_k = int(s["background_label_id"]), int(s["top_k"]), int(s["keep_top_k"])
    prior_shape = ctx.in_shape(2)
    if len(prior_shape) != 3 or not all(type(d) is int for d in prior_shape[1:]) or prior_shape[2] % 4:  # type: ignore[operator]
        raise ctx.error(
            f"needs a prior bottom of static shape (1, 2, num_priors*4) from PriorBox, got {prior_shape}; "
            f"cut the net before it: caffenorm.load(prototxt, caffemodel, outputs=[{', '.join(map(repr, node.bottoms))}])"
        )
    num_priors = int(prior_shape[2]) // 4  # type: ignore[arg-type]
    num_loc = 1 if share else num_classes
    classes = [c for c in range(num_classes) if c != background]
    ops = _Ops(ctx)
    loc, conf, prior = ctx.input(0), ctx.input(1), ctx.input(2)

    # Caffe's rows when nothing is detected: [i, -1, -1, -1, -1, -1, -1] for each image i.
    batch = ops("Shape", loc, start=0, end=1)  # (1,)
    image_ids = ops.to(ops("Range", ops.scalar(0), ops("Squeeze", batch, ops.i64([0])), ops.scalar(1)), _FLOAT)
    minus = ops("Expand", ops.f32([[-1.0] * 6]), ops("Concat", batch, ops.i64([6]), axis=0))
    empty_rows = ops("Concat", ops("Unsqueeze", image_ids, ops.i64([1])), minus, axis=1)  # (N, 7)
    k_static = num_priors if top_k < 0 else min(top_k, num_priors)
    if not classes or k_static == 0 or keep_top_k == 0:
        rows = empty_rows  # nothing can ever be kept
        ctx.op("Reshape", rows, ops("Concat", ops.i64([1, 1]), batch, ops.i64([7]), axis=0), top=0)
        ctx.notes.append(f"DetectionOutput {node.name!r}: keeps nothing with these settings (rows [i, -1, ...])")
        return

    boxes = _decode(ops, loc, prior, num_priors, num_loc, str(s["code_type"]), bool(s["variance_encoded_in_target"]))
    confidence = s["confidence_threshold"]
    thr = ops.f32(-_FLT_MAX if confidence is None else _f32(float(confidence)))  # Caffe's float threshold
    scores = ops("Transpose", ops("Reshape", conf, ops.i64([0, num_priors, num_classes])), perm=[0, 2, 1])
    if classes != list(range(num_classes)):
        scores = ops("Gather", scores, ops.i64(classes), axis=1)  # (N, C', P)
    above = ops("Greater", scores, thr)  # NaN fails, as in Caffe
    masked = ops("Where", above, scores, ops.f32(-np.inf))
    # K: top_k (or P), cut to the most candidates of any (image, class), at least 1.
    most = ops.to(ops("ReduceMax", ops("ReduceSum", ops.to(above, _FLOAT), ops.i64([-1]), keepdims=0), keepdims=0),
                  _INT64)
    k = ops("Max", ops("Min", most, ops.scalar(k_static)), ops.scalar(1))  # scalar
    values, index = ops("TopK", masked, ops("Reshape", k, ops.i64([1])), axis=-1, largest=1, sorted=1, outputs=2)
    valid = ops("Greater", values, thr)  # (N, C', K)
    loc_classes = [0] * len(classes) if share else classes
    per_class = ops("Gather", boxes, ops.i64(loc_classes), axis=1)  # (N, C', P, 4)
    cand = ops("GatherND", per_class, ops("Unsqueeze", index, ops.i64([-1])), batch_dims=2)  # (N, C', K, 4)

    overlap = _overlaps(ops, cand)
    thresholds = _nms_thresholds(float(s["nms_threshold"]), float(s["eta"]), k_static)
    kept = _greedy_nms(ops, overlap, ops("Unsqueeze", valid, ops.i64([-1])), k, thresholds, float(s["nms_threshold"]))
    kept = ops("Squeeze", kept, ops.i64([-1]))  # (N, C', K)

    if keep_top_k > -1:
        flat_kept = ops("Reshape", kept, ops.i64([0, -1]))
        flat = ops("Where", flat_kept, ops("Reshape", values, ops.i64([0, -1])), ops.f32(-np.inf))  # (N, C'*K)
        width = ops("Shape", flat, start=1, end=2)
        k2 = ops("Min", width, ops.i64([keep_top_k]))
        _, best = ops("TopK", flat, k2, axis=1, largest=1, sorted=1, outputs=2)
        ones = ops("Expand", ops.f32(1.0), ops("Shape", best))
        mark = ops("ScatterElements", ops("Expand", ops.f32(0.0), ops("Shape", flat)), best, ones, axis=1)
        kept = ops("Reshape", ops("And", flat_kept, ops("Greater", mark, ops.f32(0.0))), ops("Shape", kept))

    where = ops("Transpose", ops("NonZero", kept), perm=[1, 0])  # (R, 3): image, class slot, rank
    image = ops.to(ops("Gather", where, ops.scalar(0), axis=1), _FLOAT)
    label = ops("Gather", ops.f32([float(c) for c in classes]), ops("Gather", where, ops.scalar(1), axis=1), axis=0)
    score = ops("GatherND", values, where)
    box = ops("GatherND", cand, where)  # (R, 4)
    rows = ops("Concat", *(ops("Unsqueeze", v, ops.i64([1])) for v in (image, label, score)), box, axis=1)
    count = ops("Shape", rows, start=0, end=1)
    total = ops("Where", ops("Greater", count, ops.i64([0])), count, batch)
    out = ops("Slice", ops("Concat", rows, empty_rows, axis=0), ops.i64([0]), total, ops.i64([0]))
    ctx.op("Reshape", out, ops("Concat", ops.i64([1, 1]), total, ops.i64([7]), axis=0), top=0)
    worst = 4 * len(classes) * k_static**2 / 2**20
    ctx.notes.append(
        f"DetectionOutput {node.name!r}: standard ops (TopK, a Loop for the greedy NMS, NonZero); its NMS holds "
        f"{len(classes)} x K x K float32 overlaps per image, K = the most candidates of a class (<= {k_static}): "
        f"up to {worst:.3g} MiB per image"
    )
