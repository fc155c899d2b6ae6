"""Layer-by-layer parity check against OpenCV dnn 4.x that points at causes, not at symptoms.

Both runtimes get the same input.  For every layer two differences are measured:

* **end to end**: caffenorm's output against OpenCV's, each runtime having run the net up to there;
* **local**: caffenorm's layer recomputed on OpenCV's own bottoms (OpenCV's outputs of the layers
  that wrote them, or the net input) against OpenCV's output of that layer.

A layer whose end-to-end difference is beyond the tolerance is a **cause** when its local
difference is too (the layer itself computes differently in the two runtimes) and **inherited**
when it is not (it only passes on a difference from earlier layers; ``follows_from`` names the
causes upstream).  So one layer OpenCV computes differently (the example's LRN with ``k: 2``) is
reported once, and the layers after it as following from it.

OpenCV's per-layer outputs are each layer's own: asked for every layer (``forwardAndRetrieve``),
OpenCV 4.x keeps a separate output for a layer that Caffe runs in place, so the convolution before
an in-place ReLU gives its pre-ReLU values and the ReLU its own (checked on OpenCV 4.14, with
fusion on or off; fusion is turned off here anyway, since a fused layer has no output of its own).
A bottom is therefore OpenCV's output of the last layer that wrote that blob before the layer
reading it, exactly as Caffe wires in-place layers.  Multi-top layers are compared on every top.

DetectionOutput is compared row by row.  OpenCV's output always has ``keep_top_k`` x batch rows:
the detections first, in Caffe's order (image, then label, then descending score: the same order
as caffenorm's, which reproduces Caffe's), then all-zero padding rows.  Caffe (and caffenorm) keep
only the detections, or one ``[image, -1, -1, ...]`` row per image when there are none.  The
padding rows are counted and reported as such (status ``padding-only``), not as a difference.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from caffenorm.caffe.net import Net
from caffenorm.caffe.spec import LayerSpec
from caffenorm.errors import CaffeNormError

__all__ = [
    "CAUSE",
    "INHERITED",
    "MISSING",
    "OK",
    "PADDING_ONLY",
    "STATUSES",
    "UNEXPLAINED",
    "LayerComparison",
    "ParityCheckError",
    "ParityReport",
    "compare_with_opencv",
    "format_number",
    "opencv_known_difference",
]

# A row's status.
OK = "ok"  # agrees end to end
CAUSE = "cause"  # differs end to end and still differs when recomputed on OpenCV's own bottoms
INHERITED = "inherited"  # differs end to end only because its bottoms do (see follows_from)
PADDING_ONLY = "padding-only"  # DetectionOutput whose detections agree; OpenCV only adds padding rows
MISSING = "missing"  # OpenCV has no layer of that name
UNEXPLAINED = "unexplained"  # differs end to end and cannot be recomputed on OpenCV's bottoms
STATUSES = (OK, CAUSE, INHERITED, PADDING_ONLY, MISSING, UNEXPLAINED)


class ParityCheckError(CaffeNormError):
    """The comparison with OpenCV cannot run: OpenCV is not installed or cannot run the model."""


def format_number(value: float | None) -> str:
    """How differences and values are written in the table (text and HTML): ``-`` for none."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return f"{value:.3g}"


@dataclass(frozen=True)
class LayerComparison:
    """One layer of the comparison.

    Attributes:
        name, type: the layer's.
        shape: caffenorm's output shape (the first top's).
        max_diff: end to end, max |caffenorm - OpenCV| over every top (over the detections both
            keep, for DetectionOutput); ``inf`` when the sizes differ; None when OpenCV has no
            such layer.
        scale: max |caffenorm's output|; the tolerance is ``atol + rtol * scale``.
        local_diff: caffenorm's layer on OpenCV's own bottoms against OpenCV's output; None when
            it could not be recomputed (``note`` says why) or OpenCV has no such layer.
        status: one of :data:`STATUSES`.
        note: for a cause, the known reason OpenCV differs (or that none is known); otherwise
            what is special about the row (padding rows, why it was not recomputed, ...).
        follows_from: for an inherited difference, the causes upstream, in net order (empty when
            differences below the tolerance added up).
        opencv_shape: OpenCV's output shape (first top); None when OpenCV has no such layer.
        padding_rows: DetectionOutput: the all-zero rows OpenCV adds after the detections.
    """

    name: str
    type: str
    shape: tuple[int, ...]
    max_diff: float | None
    scale: float
    note: str = ""
    local_diff: float | None = None
    status: str = OK
    follows_from: tuple[str, ...] = ()
    opencv_shape: tuple[int, ...] | None = None
    padding_rows: int = 0

    def diverges(self) -> bool:
        """Whether the outputs differ end to end beyond the tolerance (cause, inherited or
        unexplained); padding rows alone are not a difference."""
        return self.status in (CAUSE, INHERITED, UNEXPLAINED)

    @property
    def status_text(self) -> str:
        """The status as the table writes it."""
        if self.status == CAUSE:
            return "CAUSE"
        if self.status == INHERITED:
            return f"follows from {', '.join(self.follows_from)}" if self.follows_from else "inherited"
        if self.status == UNEXPLAINED:
            return "DIVERGES"
        if self.status == PADDING_ONLY:
            return f"ok + {self.padding_rows} padding rows"
        return self.status


@dataclass
class ParityReport:
    """The comparison of a net in caffenorm and in OpenCV dnn, layer by layer (see the module
    docstring).  Iterating over it gives its rows."""

    rows: list[LayerComparison]
    rtol: float
    atol: float
    opencv_version: str
    model: str = ""
    extra_notes: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[LayerComparison]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, name: str) -> LayerComparison:
        """The row of the layer called ``name``."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no layer named {name!r} in the comparison")

    @property
    def causes(self) -> list[LayerComparison]:
        """The layers that compute differently from OpenCV themselves, in net order."""
        return [r for r in self.rows if r.status == CAUSE]

    @property
    def cause(self) -> LayerComparison | None:
        """The first cause, or None."""
        return next(iter(self.causes), None)

    @property
    def unexplained(self) -> list[LayerComparison]:
        """Layers that differ but could not be recomputed on OpenCV's bottoms."""
        return [r for r in self.rows if r.status == UNEXPLAINED]

    @property
    def ok(self) -> bool:
        """No layer differs end to end beyond the tolerance."""
        return not any(r.diverges() for r in self.rows)

    def tolerance(self, row: LayerComparison) -> float:
        """The largest end-to-end difference that counts as agreement for ``row``."""
        return self.atol + self.rtol * row.scale

    def inherited_from(self, cause: str) -> list[LayerComparison]:
        """The layers whose difference follows from ``cause`` (among others, possibly)."""
        return [r for r in self.rows if r.status == INHERITED and cause in r.follows_from]

    def explanation(self, row: LayerComparison) -> str:
        """What a cause does differently, by how much, and what follows from it (without its name)."""
        later = len(self.inherited_from(row.name))
        many = later != 1
        after = ""
        if later:
            after = f"; {later} later layer{'s' if many else ''} inherit{'' if many else 's'} its difference"
        return (f"{row.note}. It differs by {format_number(row.local_diff)} "
                f"(values up to {format_number(row.scale)}) even on OpenCV's own bottoms{after}")

    def summary(self) -> str:
        """One line: does the net agree, and if not, which layers are the causes."""
        tolerance = f"tolerance {self.atol:g} + {self.rtol:g} x max |value|"
        compared = [r for r in self.rows if r.status != MISSING]
        if self.ok:
            line = f"no layer diverges: all {len(compared)} layers OpenCV runs agree ({tolerance})"
        else:
            parts = []
            if self.causes:
                names = ", ".join(f"{r.name} ({r.type})" for r in self.causes)
                parts.append(f"{len(self.causes)} cause{'s' if len(self.causes) != 1 else ''} of difference: {names}")
            inherited = [r for r in self.rows if r.status == INHERITED]
            if inherited:
                many = len(inherited) != 1
                plural, verb = ("s", "inherit") if many else ("", "inherits")
                parts.append(f"{len(inherited)} later layer{plural} only {verb} a difference")
            if self.unexplained:
                parts.append(f"{len(self.unexplained)} differ without being recomputed: "
                             + ", ".join(r.name for r in self.unexplained))
            line = "; ".join(parts) + f" ({tolerance})"
        for r in self.rows:
            if r.padding_rows and not r.diverges():
                line += f"; {r.name}: {r.note}"
        missing = [r.name for r in self.rows if r.status == MISSING]
        if missing:
            line += f"; not in OpenCV's net: {', '.join(missing)}"
        return line

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (an infinite difference, from sizes that differ, is the
        string ``"inf"``; a difference not measured is None)."""

        def number(value: float | None) -> float | str | None:
            return "inf" if value == math.inf else value

        return {
            "opencv_version": self.opencv_version,
            "model": self.model,
            "rtol": self.rtol,
            "atol": self.atol,
            "ok": self.ok,
            "cause": None if self.cause is None else self.cause.name,
            "causes": [r.name for r in self.causes],
            "summary": self.summary(),
            "layers": [
                {
                    "name": r.name, "type": r.type, "shape": list(r.shape),
                    "opencv_shape": None if r.opencv_shape is None else list(r.opencv_shape),
                    "max_diff": number(r.max_diff), "local_diff": number(r.local_diff), "max_value": r.scale,
                    "tolerance": self.tolerance(r), "status": r.status, "follows_from": list(r.follows_from),
                    "note": r.note, "padding_rows": r.padding_rows,
                }
                for r in self.rows
            ],
        }

    def text(self, *, every_layer: bool = False) -> str:
        """The comparison for a terminal: a table (one line per layer; consecutive layers that
        follow from the same causes folded into one line unless ``every_layer``), then each cause
        with its explanation, then :meth:`summary`."""
        header = ["layer", "type", "shape", "max value", "end to end", "local", "status"]
        table: list[list[str]] = []
        for group in _groups(self.rows, every_layer):
            first, last = group[0], group[-1]
            if len(group) == 1:
                note = f"  <- {first.note}" if first.status == CAUSE else (f"  ({first.note})" if first.note else "")
                table.append([first.name, first.type, "x".join(map(str, first.shape)), format_number(first.scale),
                              format_number(first.max_diff), format_number(first.local_diff),
                              first.status_text + note])
                continue
            table.append([
                f"{first.name} ... {last.name}", f"({len(group)} layers)", "",
                format_number(max(r.scale for r in group)),
                format_number(max(r.max_diff or 0.0 for r in group)),
                format_number(max(r.local_diff or 0.0 for r in group)),
                first.status_text,
            ])
        widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
        lines = [
            (f"caffenorm vs OpenCV dnn {self.opencv_version}, layer by layer: max |difference| end to end, and local "
            "(caffenorm's layer recomputed on OpenCV's own bottoms)"),
            "",
            "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
            "  ".join("-" * w for w in widths),
        ]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
        lines.append("")
        for cause in self.causes:
            lines.append(f"cause: {cause.name} ({cause.type}): {self.explanation(cause)}")
        for row in self.unexplained:
            lines.append(f"diverges: {row.name} ({row.type}), max difference {format_number(row.max_diff)}: {row.note}")
        lines.append(self.summary())
        lines += self.extra_notes
        return "\n".join(lines)


def _groups(rows: Sequence[LayerComparison], every_layer: bool) -> list[list[LayerComparison]]:
    """Rows in runs: consecutive inherited rows with the same causes share a run (unless
    ``every_layer``); every other row is a run of its own."""
    groups: list[list[LayerComparison]] = []
    for row in rows:
        previous = groups[-1][-1] if groups else None
        if (not every_layer and previous is not None and row.status == INHERITED and previous.status == INHERITED
                and row.follows_from == previous.follows_from):
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


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


# -- the comparison ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Difference:
    """Two outputs of one layer compared: max |difference|, max |caffenorm's|, OpenCV's padding
    rows and what is worth saying about it."""

    max_diff: float
    scale: float
    padding_rows: int = 0
    note: str = ""


def _max_abs_diff(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |ours - theirs| (same size); NaN on both sides counts as equal, on one side as inf."""
    if not ours.size:
        return 0.0
    a, b = ours.astype(np.float64).ravel(), theirs.astype(np.float64).ravel()
    diff = np.where(np.isnan(a) & np.isnan(b), 0.0, np.abs(a - b))
    return float(np.max(np.where(np.isnan(diff), np.inf, diff)))


def _max_abs(value: np.ndarray) -> float:
    finite = np.abs(value[~np.isnan(value)]) if value.size else value
    return float(np.max(finite)) if finite.size else 0.0


def _compare_tops(layer_type: str, ours: Sequence[np.ndarray], theirs: Sequence[np.ndarray]) -> _Difference:
    if layer_type == "DetectionOutput":
        return _compare_detections(ours[0], theirs[0])
    diff, scale, notes = 0.0, 0.0, []
    for i, mine in enumerate(ours):
        scale = max(scale, _max_abs(mine))
        if i >= len(theirs):
            notes.append(f"OpenCV gives no top {i}")
            diff = float("inf")
        elif theirs[i].size != mine.size:
            which = f" top {i}" if len(ours) > 1 else ""
            notes.append(f"OpenCV's{which} output has shape {tuple(theirs[i].shape)}")
            diff = float("inf")
        else:
            diff = max(diff, _max_abs_diff(mine, theirs[i]))
    return _Difference(diff, scale, 0, "; ".join(notes))


def _compare_detections(ours: np.ndarray, theirs: np.ndarray) -> _Difference:
    """DetectionOutput row by row (see the module docstring): caffenorm's detections (its
    ``[image, -1, ...]`` "none" rows left out) against OpenCV's first rows; OpenCV's all-zero rows
    after them are padding.  Both runtimes order detections as Caffe does, so no sorting."""
    mine = ours.reshape(-1, 7)
    kept = mine[mine[:, 1] != -1]
    rows = theirs.reshape(-1, 7)
    padding = np.all(rows == 0, axis=1)
    real = rows[~padding]
    scale = _max_abs(kept)
    if len(real) != len(kept) or (len(real) and padding[: len(real)].any()):
        return _Difference(float("inf"), scale, int(padding.sum()),
                           f"OpenCV keeps {len(real)} detections, caffenorm {len(kept)}")
    diff = _max_abs_diff(kept, real)
    pad = int(padding.sum())
    if not pad:
        return _Difference(diff, scale)
    if not len(kept):
        note = f"no detections; OpenCV writes {pad} all-zero padding rows, Caffe one [image, -1, ...] row per image"
    else:
        note = f"{len(kept)} detections agree row by row; OpenCV adds {pad} all-zero padding rows"
    return _Difference(diff, scale, pad, note)


def _import_cv2():  # type: ignore[no-untyped-def]
    try:
        import cv2
    except ImportError:
        raise ParityCheckError("--compare opencv needs OpenCV: pip install 'opencv-python-headless<5'") from None
    return cv2


def _run_opencv(
    prototxt: str | os.PathLike[str], caffemodel: str | os.PathLike[str], inputs: Mapping[str, np.ndarray],
    names: Sequence[str],
) -> tuple[dict[str, tuple[np.ndarray, ...]], str]:
    """OpenCV's outputs of every layer in ``names`` it has (all tops of each), and its version."""
    cv2 = _import_cv2()
    try:
        cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
        cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        cv_net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        cv_net.enableFusion(False)  # a fused layer has no output of its own to compare
        if hasattr(cv_net, "enableWinograd"):
            cv_net.enableWinograd(False)  # its Winograd 3x3 convolutions lose ~5e-6 of the output range
        for name, value in inputs.items():
            cv_net.setInput(value, name)
        known = set(cv_net.getLayerNames())
        wanted = [n for n in names if n in known]
        if not wanted:
            return {}, cv2.__version__
        # Every top of every layer (forward(names) gives only each layer's first).
        outputs = {n: tuple(np.array(o) for o in outs) for n, outs in zip(wanted, cv_net.forwardAndRetrieve(wanted))}
        # OpenCV keeps only a layer's first top out of its buffer reuse: a later layer can
        # overwrite the others before they are handed back (seen on a Slice's second top, OpenCV
        # 4.14).  So a multi-top layer is run again as the last layer, where nothing overwrites.
        for name in [n for n, outs in outputs.items() if len(outs) > 1]:
            for key, value in inputs.items():
                cv_net.setInput(value, key)
            outputs[name] = tuple(np.array(o) for o in cv_net.forwardAndRetrieve([name])[0])
    except cv2.error as err:
        message = " ".join(str(err).split())
        raise ParityCheckError(f"OpenCV dnn {cv2.__version__} cannot run {prototxt}: {message}") from None
    return outputs, cv2.__version__


def _as_tuple(out: object) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)  # type: ignore[arg-type]


def _numpy(tensors: Sequence[torch.Tensor]) -> tuple[np.ndarray, ...]:
    return tuple(t.detach().float().cpu().numpy() for t in tensors)


def compare_with_opencv(
    net: Net,
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str],
    inputs: Mapping[str, np.ndarray],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> ParityReport:
    """Run ``net`` (loaded from ``prototxt`` + ``caffemodel``, not folded) and OpenCV's Caffe
    importer on ``inputs``; compare every layer end to end and on OpenCV's own bottoms, and tell
    the causes of difference from the layers that inherit them (see the module docstring).

    A layer's end-to-end difference agrees when it is at most ``atol + rtol * max |value|``; the
    local difference uses the same rule.  Raises :class:`ParityCheckError` when OpenCV is missing
    or cannot run the model.
    """
    feeds = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in inputs.items()}
    input_layers = {node.name for node in net.graph.nodes if node.is_input}
    specs = [s for s in net.layer_specs if s.name not in input_layers and s.tops]
    theirs, version = _run_opencv(prototxt, caffemodel, feeds, [s.name for s in specs])

    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    net.record_layer_outputs = True
    try:
        with torch.no_grad():
            net(**{k: torch.from_numpy(v).to(device) for k, v in feeds.items()})
        ours = {s.name: _numpy(net.layer_outputs[s.name]) for s in specs}
    finally:
        net.record_layer_outputs = False

    order = {s.name: i for i, s in enumerate(specs)}
    # Blob name -> its current value as OpenCV computed it (what the next reader gets), and the
    # causes that value carries; both follow Caffe's wiring, in-place writes included.
    opencv_blobs: dict[str, np.ndarray] = dict(feeds)
    our_blobs: dict[str, np.ndarray] = dict(feeds)
    carried: dict[str, tuple[str, ...]] = {}
    rows = []
    for spec in specs:
        mine = ours[spec.name]
        upstream = sorted({c for b in spec.bottoms for c in carried.get(b, ())}, key=order.__getitem__)
        got = theirs.get(spec.name)
        if got is None:
            rows.append(LayerComparison(spec.name, spec.type, tuple(mine[0].shape), None, _max_abs(mine[0]),
                                        "no such layer in OpenCV's net", status=MISSING))
            for top, value in zip(spec.tops, mine):
                carried[top] = tuple(upstream)
                our_blobs[top] = value
                if top not in spec.bottoms:
                    opencv_blobs.pop(top, None)  # OpenCV computes no value for it
            continue
        end_to_end = _compare_tops(spec.type, mine, got)
        local, why_not = _recompute(net, spec, opencv_blobs, our_blobs, got, device)
        tolerance = atol + rtol * end_to_end.scale
        status, note, follows = OK, end_to_end.note, ()
        if not end_to_end.max_diff <= tolerance:
            if local is None and upstream:
                # Typically a bottom whose shape an earlier cause changed: the difference comes
                # with it, whatever this layer does.
                status, follows = INHERITED, tuple(upstream)
                note = "; ".join(filter(None, [end_to_end.note, why_not]))
            elif local is None:
                status, note = UNEXPLAINED, "; ".join(filter(None, [end_to_end.note, why_not]))
            elif not local.max_diff <= atol + rtol * local.scale:
                status = CAUSE
                note = opencv_known_difference(spec) or (
                    "no known reason: the two runtimes compute this layer differently"
                    + (f" ({end_to_end.note})" if end_to_end.note else ""))
            else:
                status, follows = INHERITED, tuple(upstream)
                note = "" if follows else "amplifies differences below the tolerance from earlier layers"
        elif end_to_end.padding_rows:
            status = PADDING_ONLY
        rows.append(LayerComparison(
            spec.name, spec.type, tuple(mine[0].shape), end_to_end.max_diff, end_to_end.scale, note,
            None if local is None else local.max_diff, status, follows, tuple(got[0].shape),
            end_to_end.padding_rows,
        ))
        for i, top in enumerate(spec.tops):
            if status in (CAUSE, UNEXPLAINED):
                carried[top] = (*upstream, spec.name)
            else:
                carried[top] = follows
            our_blobs[top] = mine[i]
            if i < len(got):
                opencv_blobs[top] = _shaped_like(got[i], mine[i], spec.type)
            else:
                opencv_blobs.pop(top, None)
    return ParityReport(rows, rtol, atol, version, str(prototxt))


def _shaped_like(theirs: np.ndarray, ours: np.ndarray, layer_type: str) -> np.ndarray:
    """OpenCV's value in caffenorm's shape, where it can be (OpenCV may drop or add size-1 axes);
    a DetectionOutput's padding rows removed.  Else unchanged (the reader then cannot be
    recomputed)."""
    if layer_type == "DetectionOutput":
        rows = theirs.reshape(-1, 7)
        real = rows[~np.all(rows == 0, axis=1)]
        if real.size == ours.size:
            return real.reshape(ours.shape)
    if theirs.size == ours.size:
        return theirs.reshape(ours.shape)
    return theirs


def _recompute(
    net: Net,
    spec: LayerSpec,
    opencv_blobs: Mapping[str, np.ndarray],
    our_blobs: Mapping[str, np.ndarray],
    theirs: Sequence[np.ndarray],
    device: torch.device,
) -> tuple[_Difference | None, str]:
    """caffenorm's layer on OpenCV's bottoms, compared with OpenCV's output; or None and why not."""
    bottoms = []
    for name in spec.bottoms:
        value = opencv_blobs.get(name)
        if value is None:
            return None, f"not recomputed: OpenCV has no value for its bottom {name!r}"
        if value.shape != our_blobs[name].shape:
            return None, (f"not recomputed: OpenCV's bottom {name!r} has shape {tuple(value.shape)}, "
                          f"caffenorm's {tuple(our_blobs[name].shape)}")
        bottoms.append(torch.from_numpy(np.ascontiguousarray(value)).to(device))
    try:
        with torch.no_grad():
            outs = _numpy(_as_tuple(net.layer(spec.name)(*bottoms)))
    except (CaffeNormError, RuntimeError, ValueError, IndexError) as err:
        return None, f"not recomputed: the layer fails on OpenCV's bottoms: {err}"
    return _compare_tops(spec.type, outs, theirs), ""
