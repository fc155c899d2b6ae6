"""A parity report as one self-contained HTML page (``caffenorm run --compare opencv --report F``).

The page holds no external resources and needs no JavaScript: the causes of difference with their
explanation, a chart of every layer's largest difference on a log scale (end to end and local, with
the tolerance as a stepped line; the cause in red, the layers that inherit its difference in
orange), then the table with the same numbers as :meth:`ParityReport.text`.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path

from caffenorm.caffe.compare import (
    CAUSE,
    INHERITED,
    MISSING,
    OK,
    PADDING_ONLY,
    UNEXPLAINED,
    LayerComparison,
    ParityReport,
    format_number,
)

__all__ = ["parity_html", "write_parity_html"]

# Colours of the statuses (colour-blind safe; the cause's red stands apart from the rest).
COLOURS = {
    OK: "#4477aa",
    CAUSE: "#d62728",
    INHERITED: "#e69f00",
    PADDING_ONLY: "#228833",
    MISSING: "#aaaaaa",
    UNEXPLAINED: "#aa3377",
}
BANDS = {CAUSE: "#fde0e0", INHERITED: "#fff3dc", UNEXPLAINED: "#f6e0ee"}
LEGEND = {
    OK: "agrees",
    CAUSE: "cause: differs even on OpenCV's own bottoms",
    INHERITED: "inherited: agrees on OpenCV's bottoms",
    PADDING_ONLY: "agrees; OpenCV adds padding rows",
    MISSING: "not in OpenCV's net",
    UNEXPLAINED: "differs; not recomputed",
}

# Chart geometry (pixels).
WIDTH = 1120
ROW = 18
CHAR = 7.3  # width of a 12px monospace character
LANE = 30  # the "0" lane at the left of the plot and the "inf" lane at its right
GAP = 22  # between a lane and the log axis, so their labels do not run together
STATUS_WIDTH = 150
TOP, BOTTOM = 34, 34
MAX_LABEL = 40  # characters of a layer name shown; the full name is in the tooltip


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _decades(rows: Sequence[LayerComparison], tolerances: Sequence[float]) -> tuple[int, int]:
    """The log axis' range in decades: every finite positive difference and tolerance fits."""
    values = [v for r in rows for v in (r.max_diff, r.local_diff) if v is not None and 0 < v < math.inf]
    values += [t for t in tolerances if t > 0]
    if not values:
        return -8, 0
    lo = math.floor(math.log10(min(values)))
    hi = math.ceil(math.log10(max(values)))
    return max(lo, -15), max(hi, lo + 1)


def _chart(report: ParityReport) -> str:
    rows = report.rows
    tolerances = [report.tolerance(r) for r in rows]
    lo, hi = _decades(rows, tolerances)
    label_chars = min(MAX_LABEL, max((len(r.name) for r in rows), default=4))
    left = int(label_chars * CHAR) + 24
    plot_left, plot_right = left + LANE + GAP, WIDTH - STATUS_WIDTH - LANE - GAP
    height = TOP + ROW * len(rows) + BOTTOM

    def x(value: float) -> float:
        if value == 0:
            return left + LANE / 2
        if value == math.inf:
            return plot_right + GAP + LANE / 2
        t = (math.log10(value) - lo) / (hi - lo)
        return plot_left + min(max(t, 0.0), 1.0) * (plot_right - plot_left)

    out = [
        (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="largest difference per layer, log scale">')
    ]
    # Row bands first (behind everything): the cause and what follows from it stand out.
    for i, row in enumerate(rows):
        band = BANDS.get(row.status)
        if band:
            out.append(f'<rect x="0" y="{TOP + i * ROW}" width="{WIDTH}" height="{ROW}" fill="{band}"/>')
    # Axis: a gridline and a label per decade, top and bottom; the 0 and inf lanes.
    axis_bottom = TOP + ROW * len(rows)
    step = 1 if hi - lo <= 12 else 2
    for d in range(lo, hi + 1):
        px = x(10.0**d)
        out.append(f'<line x1="{px:.1f}" y1="{TOP}" x2="{px:.1f}" y2="{axis_bottom}" class="grid"/>')
        if (d - lo) % step == 0:
            for y in (TOP - 8, axis_bottom + 18):
                out.append(f'<text x="{px:.1f}" y="{y}" class="tick">1e{d}</text>')
    out.append(f'<text x="{left - 8}" y="{TOP - 8}" class="head">layer</text>')
    out.append(f'<text x="{WIDTH - STATUS_WIDTH + 8}" y="{TOP - 8}" class="head start">status</text>')
    for value, name in ((0.0, "0"), (math.inf, "inf")):
        px = x(value)
        for y in (TOP - 8, axis_bottom + 18):
            out.append(f'<text x="{px:.1f}" y="{y}" class="tick">{name}</text>')
    out.append(f'<rect x="{left}" y="{TOP}" width="{LANE}" height="{axis_bottom - TOP}" class="lane"/>')
    out.append(f'<rect x="{plot_right + GAP}" y="{TOP}" width="{LANE}" height="{axis_bottom - TOP}" class="lane"/>')
    out.append(f'<line x1="{plot_left}" y1="{TOP}" x2="{plot_left}" y2="{axis_bottom}" class="axis"/>')
    out.append(f'<line x1="{plot_right}" y1="{TOP}" x2="{plot_right}" y2="{axis_bottom}" class="axis"/>')
    # The tolerance (atol + rtol * max |value|, one per layer) as a stepped line.
    points = []
    for i, tol in enumerate(tolerances):
        px = x(tol)
        points += [f"{px:.1f},{TOP + i * ROW}", f"{px:.1f},{TOP + (i + 1) * ROW}"]
    if points:
        out.append(f'<polyline points="{" ".join(points)}" class="tolerance"/>')
    # One row per layer: its name, a line from the local to the end-to-end difference, the two
    # markers, its status.
    for i, (row, tol) in enumerate(zip(rows, tolerances)):
        y = TOP + i * ROW + ROW / 2
        colour = COLOURS[row.status]
        name = row.name if len(row.name) <= MAX_LABEL else row.name[: MAX_LABEL - 3] + "..."
        weight = ' font-weight="bold"' if row.status == CAUSE else ""
        tip = (f"{row.name} ({row.type}): end to end {format_number(row.max_diff)}, local "
               f"{format_number(row.local_diff)}, tolerance {format_number(tol)}; {row.status_text}")
        out.append(f"<g><title>{_e(tip)}</title>")
        fill = colour if row.status == CAUSE else "#222"
        out.append(f'<text x="{left - 8}" y="{y + 4:.1f}" class="name" fill="{fill}"'
                   f"{weight}>{_e(name)}</text>")
        if row.max_diff is not None and row.local_diff is not None:
            out.append(f'<line x1="{x(row.local_diff):.1f}" y1="{y:.1f}" x2="{x(row.max_diff):.1f}" y2="{y:.1f}" '
                       f'stroke="{colour}" class="link"/>')
        # The local square is drawn larger and first, so where both differences are equal the
        # end-to-end dot (in the status colour) shows inside it.
        if row.local_diff is not None:
            half = 7.0 if row.status == CAUSE else 5.5
            out.append(f'<rect x="{x(row.local_diff) - half:.1f}" y="{y - half:.1f}" width="{2 * half:g}" '
                       f'height="{2 * half:g}" class="local"/>')
        if row.max_diff is not None:
            radius = 5.5 if row.status == CAUSE else 4
            out.append(f'<circle cx="{x(row.max_diff):.1f}" cy="{y:.1f}" r="{radius:g}" fill="{colour}"/>')
        if row.status != OK:
            label = {CAUSE: "CAUSE", INHERITED: f"from {', '.join(row.follows_from) or 'earlier layers'}"}.get(
                row.status, row.status_text)
            label = label if len(label) <= 24 else label[:21] + "..."  # the tooltip has all of it
            out.append(f'<text x="{WIDTH - STATUS_WIDTH + 8}" y="{y + 4:.1f}" class="status" fill="{colour}"'
                       f"{weight}>{_e(label)}</text>")
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def _table(report: ParityReport) -> str:
    header = ["#", "layer", "type", "shape", "OpenCV shape", "max value", "end to end", "local", "tolerance",
              "status", "note"]
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead>", "<tbody>"]
    for i, row in enumerate(report.rows):
        cells = [
            str(i + 1), row.name, row.type, "x".join(map(str, row.shape)),
            "-" if row.opencv_shape is None else "x".join(map(str, row.opencv_shape)),
            format_number(row.scale), format_number(row.max_diff), format_number(row.local_diff),
            format_number(report.tolerance(row)), row.status_text, row.note,
        ]
        classes = ["num" if j in (0, 5, 6, 7, 8) else "nowrap" if j in (3, 4, 9) else "" for j in range(len(cells))]
        tds = "".join(f'<td class="{c}">{_e(v)}</td>' if c else f"<td>{_e(v)}</td>" for c, v in zip(classes, cells))
        out.append(f'<tr class="{_e(row.status)}">{tds}</tr>')
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def _explanations(report: ParityReport) -> str:
    if report.ok:
        return f'<div class="verdict good"><p>{_e(report.summary())}</p></div>'
    parts = ['<div class="verdict bad">']
    for cause in report.causes:
        parts.append(f'<p><strong class="cause">Cause: {_e(cause.name)} ({_e(cause.type)})</strong> &mdash; '
                     f"{_e(report.explanation(cause))}</p>")
    for row in report.unexplained:
        parts.append(f'<p><strong class="unexplained">Diverges: {_e(row.name)} ({_e(row.type)})</strong> &mdash; '
                     f"max difference {_e(format_number(row.max_diff))}; {_e(row.note)}</p>")
    parts.append(f'<p class="summary">{_e(report.summary())}</p>')
    parts.append("</div>")
    return "\n".join(parts)


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; max-width: 1160px; }
h1 { font-size: 20px; margin: 0 0 4px 0; }
p.sub { color: #555; margin: 0 0 16px 0; font-size: 13px; }
.verdict { border-left: 6px solid; padding: 8px 14px; margin: 0 0 16px 0; font-size: 14px; }
.verdict p { margin: 6px 0; }
.verdict.good { border-color: #228833; background: #eaf6ec; }
.verdict.bad { border-color: #d62728; background: #fdeeee; }
.verdict .summary { color: #444; font-size: 13px; }
strong.cause { color: #d62728; }
strong.unexplained { color: #aa3377; }
.legend { font-size: 12px; margin: 0 0 6px 0; display: flex; flex-wrap: wrap; gap: 6px 18px; }
.legend span { white-space: nowrap; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; vertical-align: -1px; margin-right: 4px; }
.sq { display: inline-block; width: 9px; height: 9px; border: 1.5px solid #222; vertical-align: 0; margin-right: 4px; }
.dash { display: inline-block; width: 18px; border-top: 2px dashed #555; vertical-align: 3px; margin-right: 4px; }
svg { display: block; margin: 0 0 24px 0; }
svg text { font-size: 12px; }
svg .name { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; text-anchor: end; }
svg .tick { fill: #555; text-anchor: middle; font-size: 11px; }
svg .status { font-size: 11px; }
svg .head { fill: #555; font-size: 11px; font-weight: bold; text-anchor: end; }
svg .head.start { text-anchor: start; }
svg .grid { stroke: #e3e3e3; stroke-width: 1; }
svg .axis { stroke: #bbb; stroke-width: 1; }
svg .lane { fill: #000; fill-opacity: 0.045; }
svg .tolerance { fill: none; stroke: #555; stroke-width: 1.5; stroke-dasharray: 4 3; }
svg .link { stroke-width: 1.5; opacity: 0.55; }
svg .local { fill: #fff; stroke: #222; stroke-width: 1.5; }
table { border-collapse: collapse; font-size: 12px; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e5e5e5; text-align: left; vertical-align: top; }
th { background: #f2f2f2; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.nowrap { white-space: nowrap; }
tr.cause td { background: #fde0e0; }
tr.cause td:nth-child(2) { color: #d62728; font-weight: bold; }
tr.inherited td { background: #fff7e8; }
tr.unexplained td { background: #f6e0ee; }
tr.missing td { color: #888; }
""".strip()


def parity_html(report: ParityReport, title: str | None = None) -> str:
    """The report as a self-contained HTML page (a string)."""
    title = title or f"caffenorm vs OpenCV dnn {report.opencv_version}" + (
        f": {Path(report.model).name}" if report.model else "")
    legend = "".join(
        f'<span><span class="dot" style="background:{COLOURS[s]}"></span>{_e(LEGEND[s])}</span>'
        for s in (OK, CAUSE, INHERITED, PADDING_ONLY, MISSING, UNEXPLAINED)
        if any(r.status == s for r in report.rows) or s in (OK, CAUSE)
    )
    legend += ('<span><span class="dot" style="background:#777"></span>end to end (coloured by status)</span>'
               '<span><span class="sq"></span>local: caffenorm\'s layer on OpenCV\'s own bottoms</span>'
               f'<span><span class="dash"></span>tolerance {report.atol:g} + {report.rtol:g} &times; '
               "max |value|</span>")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{_e(title)}</title>",
        f"<style>\n{_STYLE}\n</style>",
        "</head>",
        "<body>",
        f"<h1>{_e(title)}</h1>",
        (f'<p class="sub">Largest |difference| per layer, log scale: <b>end to end</b> (both runtimes run the net '
        f"from the same input) and <b>local</b> (caffenorm's layer recomputed on OpenCV's own bottoms). A layer that "
        f"differs end to end but agrees locally only inherits a difference from earlier layers. "
        f"{len(report.rows)} layers; model {_e(report.model or '-')}.</p>"),
        _explanations(report),
        f'<div class="legend">{legend}</div>',
        _chart(report),
        _table(report),
        "</body>",
        "</html>",
        "",
    ])


def write_parity_html(report: ParityReport, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Write :func:`parity_html` to ``path`` (UTF-8); returns the path."""
    path = Path(path)
    path.write_text(parity_html(report, title), encoding="utf-8")
    return path
