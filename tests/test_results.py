"""caffenorm.results: DetectionOutput rows read as pixel boxes, top classes, labels, drawing."""

from __future__ import annotations

import numpy as np
import pytest

from caffenorm.errors import InputShapeError, ModelFileError
from caffenorm.results import classifications, detections, draw_detections, read_labels


def _rows(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32).reshape(1, 1, len(rows), 7)


def test_detections_scale_relative_corners_to_each_images_pixels():
    out = _rows(
        [0, 1, 0.9, 0.1, 0.2, 0.5, 0.6],
        [0, 2, 0.4, 0.0, 0.0, 1.0, 1.0],   # under the threshold
        [1, -1, -1, -1, -1, -1, -1],       # Caffe's "no detection in image 1"
        [2, 1, 0.75, -0.1, 0.5, 1.2, 1.0],  # corners outside the image are kept, as Caffe's
    )
    found = detections(out, [(100, 200), (50, 50), (30, 40)], threshold=0.5, labels={1: "face"})
    assert [(d.image, d.label, d.name) for d in found] == [(0, 1, "face"), (2, 1, "face")]
    assert found[0].box == pytest.approx((20.0, 20.0, 100.0, 60.0), rel=1e-6)  # x * width, y * height
    assert found[1].box == pytest.approx((-4.0, 15.0, 48.0, 30.0), rel=1e-6)
    assert found[0].score == pytest.approx(0.9)
    assert len(detections(out, (10, 10), threshold=0.0)) == 3  # one size for every image


def test_detections_refuse_a_blob_of_another_shape():
    with pytest.raises(InputShapeError, match=r"\(1, 1, rows, 7\)"):
        detections(np.zeros((1, 10)), (1, 1))


def test_classifications_are_the_top_scores_with_ties_in_class_order():
    scores = np.array([[0.1, 0.3, 0.3, 0.2], [0.7, 0.1, 0.1, 0.1]])
    best = classifications(scores[:, :, None, None], top=2, labels={0: "a", 1: "b", 2: "c", 3: "d"})
    assert [(c.image, c.rank, c.label, c.name) for c in best] == [(0, 0, 1, "b"), (0, 1, 2, "c"), (1, 0, 0, "a"),
                                                                 (1, 1, 1, "b")]


def test_labels_from_text_lines_and_from_an_ssd_labelmap(tmp_path):
    text = tmp_path / "synset_words.txt"
    text.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish\n\n")
    assert read_labels(text) == {0: "n01440764 tench, Tinca tinca", 1: "n01443537 goldfish"}
    label_map = tmp_path / "labelmap.prototxt"
    label_map.write_text('item { name: "none_of_the_above" label: 0 display_name: "background" }\n'
                         'item { name: "face" label: 1 }\n')
    assert read_labels(label_map) == {0: "background", 1: "face"}
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ModelFileError, match="empty"):
        read_labels(tmp_path / "empty.txt")
    (tmp_path / "bad.prototxt").write_text("item { frobnicate: 1 }")
    with pytest.raises(ModelFileError, match="not a LabelMap"):
        read_labels(tmp_path / "bad.prototxt")


def test_drawing_puts_the_box_where_the_detection_is(tmp_path):
    cv2 = pytest.importorskip("cv2")
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    found = detections(_rows([0, 1, 0.99, 0.25, 0.5, 0.75, 0.9]), (60, 80), labels={1: "x"})
    draw_detections(image, found, tmp_path / "out.png")
    drawn = cv2.imread(str(tmp_path / "out.png"))
    assert drawn.shape == image.shape
    green = (drawn[:, :, 1] > 200) & (drawn[:, :, 0] < 50)
    # box (20, 30)-(60, 54): its bottom edge and right edge are drawn, the inside stays black
    assert green[54, 20:61].all() and green[31:55, 60].all()
    assert not green[40:50, 25:55].any()
    with pytest.raises(ModelFileError, match="could not write|cannot write"):
        draw_detections(image, found, tmp_path / "out.unknown-extension")
