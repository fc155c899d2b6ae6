"""The parity check against OpenCV dnn points at causes: on the bundled example only norm1 (LRN
with k = 2, which OpenCV's Caffe importer drops) is a cause and every later layer follows from it;
on res10 with a real photo nothing diverges and OpenCV's DetectionOutput padding rows are reported
as padding; two independent causes are both found; the HTML page is valid and holds the numbers."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import caffenorm
from caffenorm.caffe.compare import (
    CAUSE,
    INHERITED,
    OK,
    PADDING_ONLY,
    ParityReport,
    compare_with_opencv,
    format_number,
)
from caffenorm.caffe.report import COLOURS, parity_html, write_parity_html
from caffenorm.cli import example_model

from . import zoo

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def example_report() -> ParityReport:
    proto, model = example_model()
    net = caffenorm.load(proto, model)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    return compare_with_opencv(net, proto, model, {"data": x})


@pytest.fixture(scope="module")
def res10_report() -> ParityReport:
    proto, model = zoo.res10_files()
    net = caffenorm.load(proto, model)
    return compare_with_opencv(net, proto, model, {"data": zoo.res10_photo()})


# A net where three layers differ from OpenCV on their own: two LRN with k != 1 in independent
# branches (after a two-top Slice), and a third after the Concat joining them.  A layer name that
# needs HTML escaping, and in-place ReLUs.
TWO_BRANCHES = """
name: "two_causes"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 12 dim: 12 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "msra" }
    bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "split" type: "Slice" bottom: "conv" top: "a" top: "b" slice_param { axis: 1 slice_point: 8 } }
layer { name: "norm_a" type: "LRN" bottom: "a" top: "norm_a" lrn_param { local_size: 3 alpha: 0.01 beta: 0.75 k: 2 } }
layer { name: "act<&>" type: "TanH" bottom: "b" top: "tanh_b" }
layer { name: "norm_b" type: "LRN" bottom: "tanh_b" top: "norm_b"
  lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 k: 3 } }
layer { name: "cat" type: "Concat" bottom: "norm_a" bottom: "norm_b" top: "cat" }
layer { name: "relu_cat" type: "ReLU" bottom: "cat" top: "cat" }
layer { name: "norm_c" type: "LRN" bottom: "cat" top: "norm_c" lrn_param { local_size: 3 alpha: 0.1 beta: 0.5 k: 1.5 } }
layer { name: "pool" type: "Pooling" bottom: "norm_c" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "prob" type: "Softmax" bottom: "pool" top: "prob" }
"""


@pytest.fixture(scope="module")
def two_causes(tmp_path_factory: pytest.TempPathFactory) -> ParityReport:
    root = tmp_path_factory.mktemp("two_causes")
    proto, model = root / "net.prototxt", root / "net.caffemodel"
    proto.write_text(TWO_BRANCHES)
    caffenorm.load(proto, seed=3).save(root / "saved.prototxt", model)
    net = caffenorm.load(proto, model)
    x = np.random.default_rng(1).standard_normal((1, 4, 12, 12)).astype(np.float32) * 3
    return compare_with_opencv(net, proto, model, {"data": x})


# -- the bundled example --------------------------------------------------------------------------


def test_example_norm1_is_the_only_cause_and_every_later_layer_follows_from_it(example_report):
    report = example_report
    names = [r.name for r in report]
    assert [r.name for r in report.causes] == ["norm1"] and report.cause.name == "norm1"
    assert "ignores LRN's k" in report.cause.note and "says 2" in report.cause.note
    assert report.cause.local_diff > report.tolerance(report.cause)
    after = names.index("norm1") + 1
    assert [r.status for r in report.rows[:after - 1]] == [OK, OK]
    later = report.rows[after:]
    assert len(later) == 13
    for row in later:
        assert row.status == INHERITED and row.follows_from == ("norm1",), row
        assert row.diverges() and row.local_diff <= report.tolerance(row), row
    assert not report.ok and not report.unexplained


def test_example_in_place_relu_is_compared_on_opencvs_own_pre_relu_output(example_report):
    # relu1 writes conv1 in place: OpenCV's output of conv1 is its own (pre-ReLU), so conv1 agrees
    # and caffenorm's ReLU on OpenCV's conv1 gives OpenCV's relu1 exactly.
    conv1, relu1 = example_report.row("conv1"), example_report.row("relu1")
    assert conv1.status == OK and conv1.max_diff <= example_report.tolerance(conv1)
    assert relu1.status == OK and relu1.local_diff == 0


def test_example_text_names_the_cause_once_and_folds_what_follows(example_report):
    text = example_report.text()
    assert "DIVERGES" not in text
    assert text.count("CAUSE") == 1
    cause_line = next(line for line in text.splitlines() if line.startswith("norm1 "))
    assert "CAUSE" in cause_line and "ignores LRN's k" in cause_line
    assert re.search(r"^pool1 \.\.\. prob +\(13 layers\) .*follows from norm1$", text, re.MULTILINE)
    assert "cause: norm1 (LRN): OpenCV's Caffe importer ignores LRN's k" in text
    assert "1 cause of difference: norm1 (LRN); 13 later layers only inherit a difference" in text
    assert "even on OpenCV's own bottoms; 13 later layers inherit its difference" in text
    data = json.loads(json.dumps(example_report.to_dict(), allow_nan=False))
    assert data["cause"] == "norm1" and data["causes"] == ["norm1"] and data["ok"] is False
    assert [layer["status"] for layer in data["layers"]].count(INHERITED) == 13
    every = example_report.text(every_layer=True)
    assert sum(line.endswith("follows from norm1") for line in every.splitlines()) == 13


# -- res10 on a real photo ------------------------------------------------------------------------


def test_res10_nothing_diverges_and_detection_padding_is_reported_as_padding(res10_report):
    report = res10_report
    assert report.ok and not report.causes and report.cause is None
    assert all(r.status in (OK, PADDING_ONLY) for r in report)
    det = report.row("detection_out")
    kept = det.shape[2]
    assert det.status == PADDING_ONLY and det.opencv_shape == (1, 1, 200, 7)
    assert 0 < kept < 200 and det.padding_rows == 200 - kept
    assert det.max_diff <= report.tolerance(det)  # the detections agree row by row, in order
    assert f"{kept} detections agree row by row; OpenCV adds {200 - kept} all-zero padding rows" in det.note
    text = report.text()
    assert "DIVERGES" not in text and "CAUSE" not in text and "inf" not in text.split()
    assert text.splitlines()[-1].startswith("no layer diverges")
    assert f"ok + {200 - kept} padding rows" in text


def test_res10_without_detections_opencvs_zero_rows_are_padding(tmp_path):
    """With no detection above the threshold Caffe writes one [image, -1, ...] row per image and
    OpenCV keep_top_k x batch all-zero rows: that is padding too, not a difference."""
    proto, model = zoo.res10_files()
    text = proto.read_text()
    assert "confidence_threshold: 0.01" in text
    strict = tmp_path / "res10_strict.prototxt"
    strict.write_text(text.replace("confidence_threshold: 0.01", "confidence_threshold: 0.9999999"))
    photo = zoo.res10_photo()
    x = np.concatenate([photo, photo[:, :, :, ::-1]])
    net = caffenorm.load(strict, model, input_shapes={"data": x.shape})
    report = compare_with_opencv(net, strict, model, {"data": x})
    det = report.row("detection_out")
    assert report.ok and det.status == PADDING_ONLY
    assert det.shape == (1, 1, 2, 7) and det.opencv_shape == (1, 1, 400, 7) and det.padding_rows == 400
    assert det.note.startswith("no detections")


# -- several causes -------------------------------------------------------------------------------


def test_independent_causes_in_branches_and_in_sequence_are_each_reported(two_causes):
    report = two_causes
    assert [r.name for r in report.causes] == ["norm_a", "norm_b", "norm_c"]
    for row in report.causes:
        assert "ignores LRN's k" in row.note
    assert report.row("split").status == OK  # both tops of the Slice compared
    assert report.row("act<&>").status == OK
    assert report.row("cat").follows_from == ("norm_a", "norm_b")
    assert report.row("relu_cat").follows_from == ("norm_a", "norm_b")
    assert report.row("prob").status == INHERITED
    assert report.row("prob").follows_from == ("norm_a", "norm_b", "norm_c")
    assert "3 causes of difference: norm_a (LRN), norm_b (LRN), norm_c (LRN)" in report.summary()


# -- the HTML page --------------------------------------------------------------------------------

VOID = {"meta", "br", "hr", "img", "input", "link", "wbr", "col", "area", "base", "source"}


class _Page(HTMLParser):
    """Checks that tags balance and collects the table's cells and the page's text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self.tags: set[str] = set()
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)  # <line .../> in the SVG: opens and closes

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert not parser.errors, parser.errors[:5]
    assert parser.stack == [], f"unclosed: {parser.stack}"
    return parser


def _check_page(report: ParityReport, page: str) -> _Page:
    parsed = _parse(page)
    assert {"html", "head", "body", "svg", "table", "style", "title"} <= parsed.tags
    # Self-contained: nothing fetched, nothing run.
    assert not ({"script", "link", "img", "iframe"} & parsed.tags)
    assert not re.search(r"\b(src|href)\s*=", page) and "url(" not in page
    header, *body = [row for row in parsed.rows if row]
    assert header[:2] == ["#", "layer"]
    column = {name: i for i, name in enumerate(header)}
    assert len(body) == len(report.rows)
    for cells, row in zip(body, report.rows):
        assert cells[column["layer"]] == row.name
        assert cells[column["end to end"]] == format_number(row.max_diff)
        assert cells[column["local"]] == format_number(row.local_diff)
        assert cells[column["status"]] == row.status_text
    return parsed


def test_html_of_the_example_is_valid_holds_the_numbers_and_highlights_the_cause(example_report, tmp_path):
    path = write_parity_html(example_report, tmp_path / "parity.html", title="example <&> check")
    page = path.read_text(encoding="utf-8")
    parsed = _check_page(example_report, page)
    assert "example &lt;&amp;&gt; check" in page
    text = " ".join(" ".join(parsed.text).split())
    cause = text.index("Cause: norm1 (LRN)")
    assert "ignores LRN's k" in text[cause:cause + 200]
    assert page.index("Cause: norm1") < page.index("<svg")  # the explanation comes above the chart
    assert page.count(f'fill="{COLOURS[CAUSE]}"') >= 2  # the cause's dot and its label, in red
    assert "tolerance" in page and 'class="tolerance"' in page


def test_html_escapes_names(two_causes):
    page = parity_html(two_causes)
    parsed = _check_page(two_causes, page)
    assert "act<&>" not in page and "act&lt;&amp;&gt;" in page
    assert "act<&>" in " ".join(parsed.text)


def test_html_of_res10_is_valid_and_reports_the_padding(res10_report, tmp_path):
    page = write_parity_html(res10_report, tmp_path / "res10.html").read_text(encoding="utf-8")
    _check_page(res10_report, page)
    det = res10_report.row("detection_out")
    assert f"OpenCV adds {det.padding_rows} all-zero padding rows" in page
    assert 'class="verdict good"' in page


def test_write_parity_html_returns_the_path(example_report, tmp_path):
    out = write_parity_html(example_report, str(tmp_path / "p.html"))
    assert isinstance(out, Path) and out.is_file()
