"""SSD's DetectionOutput in ncnn: caffenorm's custom layer ``CaffeDetectionOutput``.

The layer runs caffenorm's own DetectionOutput (pinned against a float64 reference and real-Caffe
rows elsewhere); what these tests pin is everything between: each setting survives the ``.param``
text and ncnn's ParamDict, the bottoms arrive in Caffe's layout, the rows come back in Caffe's
order for one image (without the image column), nothing kept gives Caffe's -1 row, and whole SSD
nets give Caffe's rows end to end (res10 on a photo: 126 rows, not ncnn's native 200).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zoo
from netutil import write_model

import caffenorm

ncnn = pytest.importorskip("ncnn")

from caffenorm.export.ncnn import NcnnRunner, check_ncnn, register_custom_layers, to_ncnn
from caffenorm.export.ncnn._runtime import image_detections, param_layers

RTOL, ATOL = 1e-4, 1e-5
P = 24  # priors


def _one_layer(directory: Path, num_classes: int, share: bool, param: str) -> caffenorm.Net:
    loc = P * (1 if share else num_classes) * 4
    text = 'name: "det"\n'
    for name, shape in (("loc", (1, loc)), ("conf", (1, P * num_classes)), ("prior", (1, 2, P * 4))):
        dims = " ".join(f"dim: {d}" for d in shape)
        text += f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'
    text += (
        'layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det" '
        f"detection_output_param {{ num_classes: {num_classes} share_location: {str(share).lower()} {param} }} }}\n"
    )
    proto, model = write_model(directory, text, None)
    return caffenorm.load(proto, model)


def _feeds(rng: np.random.Generator, num_classes: int, share: bool, *, ties: bool = False,
           nonfinite: bool = False) -> dict[str, np.ndarray]:
    centre = rng.uniform(0.2, 0.8, (P, 2))
    size = rng.uniform(0.05, 0.4, (P, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    variances = np.tile([0.1, 0.1, 0.2, 0.2], (P, 1))
    prior = np.stack([boxes.reshape(-1), variances.reshape(-1)])[None].astype(np.float32)
    loc = (0.5 * rng.standard_normal((1, P * (1 if share else num_classes) * 4))).astype(np.float32)
    if nonfinite:
        loc[0, 3], loc[0, 9], loc[0, 14] = np.nan, np.inf, -np.inf
    logits = rng.standard_normal((P, num_classes))
    conf = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if ties:
        conf = np.round(conf * 4) / 4  # many equal scores: Caffe's order breaks ties by prior index
    return {"loc": loc, "conf": conf.reshape(1, -1).astype(np.float32), "prior": prior}


CASES = [
    pytest.param(2, True, "background_label_id: 0 code_type: CENTER_SIZE confidence_threshold: 0.01 "
                 "keep_top_k: 200 nms_param { nms_threshold: 0.45 top_k: 400 }", {}, id="res10-settings"),
    pytest.param(4, False, "background_label_id: 0 code_type: CORNER nms_param { nms_threshold: 0.3 }", {},
                 id="corner-per-class-loc-no-threshold"),
    pytest.param(5, True, "background_label_id: 5 code_type: CORNER_SIZE variance_encoded_in_target: true "
                 "keep_top_k: 3 nms_param { nms_threshold: 0.9 eta: 0.7 }", {}, id="corner-size-eta-bg-outside"),
    pytest.param(3, True, "background_label_id: 1 code_type: CENTER_SIZE confidence_threshold: 0.2 "
                 "nms_param { nms_threshold: 0.5 top_k: 5 }", {"ties": True}, id="ties-top-k"),
    pytest.param(21, True, "background_label_id: 0 confidence_threshold: 0.02 keep_top_k: 10 "
                 "nms_param { nms_threshold: 0.45 top_k: 8 }", {}, id="voc-21-classes"),
    pytest.param(3, False, "background_label_id: 0 code_type: CORNER nms_param { nms_threshold: 0.4 }",
                 {"nonfinite": True}, id="nan-inf-loc"),
    pytest.param(2, True, "background_label_id: 0 confidence_threshold: 0.999 nms_param { nms_threshold: 0.45 }",
                 {}, id="nothing-kept"),
    pytest.param(3, True, "background_label_id: 0 keep_top_k: 0 nms_param { nms_threshold: 0.45 }", {},
                 id="keep-top-k-0"),
]


@pytest.mark.parametrize(("num_classes", "share", "param", "feed"), CASES)
def test_custom_layer_gives_caffes_rows_for_one_image(tmp_path: Path, num_classes: int, share: bool, param: str,
                                                     feed: dict) -> None:
    net = _one_layer(tmp_path, num_classes, share, param)
    report = to_ncnn(net, tmp_path / "net.param", verify=False)
    assert any("CaffeDetectionOutput" in note for note in report.notes)
    kinds = [kind for kind, _, _ in param_layers(tmp_path / "net.param")]
    assert kinds[-1] == "CaffeDetectionOutput" and "DetectionOutput" not in kinds
    runner = NcnnRunner(tmp_path / "net.param", tmp_path / "net.bin")
    for seed in range(3):
        feeds = _feeds(np.random.default_rng(seed), num_classes, share, **feed)
        with torch.no_grad():
            caffe_rows = net(**{k: torch.from_numpy(v) for k, v in feeds.items()})["det"].numpy()
        got = runner.run({k: v[0] for k, v in feeds.items()}, ["det"])["det"]
        want = image_detections(caffe_rows, 0)
        assert got.shape == want.shape, (got.shape, want.shape)
        np.testing.assert_array_equal(got, want)  # same rows, same order, bit for bit
        checks, _ = check_ncnn(net, tmp_path / "net.param", tmp_path / "net.bin", [feeds], rtol=RTOL, atol=ATOL)
        assert [c.name for c in checks] == ["det"] and checks[0].ok


def test_nothing_kept_is_one_row_of_minus_one(tmp_path: Path) -> None:
    net = _one_layer(tmp_path, 2, True, "confidence_threshold: 0.999 nms_param { nms_threshold: 0.45 }")
    to_ncnn(net, tmp_path / "net.param", verify=False)
    feeds = _feeds(np.random.default_rng(0), 2, True)
    got = NcnnRunner(tmp_path / "net.param", tmp_path / "net.bin").run({k: v[0] for k, v in feeds.items()}, ["det"])
    np.testing.assert_array_equal(got["det"], np.full((1, 6), -1, np.float32))


def test_image_detections_follows_caffes_batch_rule() -> None:
    """An image without rows in a batch where another has some: Caffe writes no row for it, and
    run alone it gets Caffe's single -1 row; the image column is dropped."""
    rows = np.array([[[[1, 1, 0.9, 0.1, 0.1, 0.2, 0.2], [1, 2, 0.8, 0.3, 0.3, 0.4, 0.4]]]], np.float32)
    np.testing.assert_array_equal(image_detections(rows, 1), rows[0, 0, :, 1:])
    np.testing.assert_array_equal(image_detections(rows, 0), -np.ones((1, 6), np.float32))
    empty = np.array([[[[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]]]], np.float32)
    np.testing.assert_array_equal(image_detections(empty, 1), -np.ones((1, 6), np.float32))


def test_register_custom_layers_on_a_plain_ncnn_net(tmp_path: Path) -> None:
    """What a deployment does: a stock ncnn.Net refuses the file; registered, it loads and runs."""
    net = _one_layer(tmp_path, 2, True, "confidence_threshold: 0.01 nms_param { nms_threshold: 0.45 }")
    to_ncnn(net, tmp_path / "net.param", verify=False)
    plain = ncnn.Net()
    assert plain.load_param(str(tmp_path / "net.param")) != 0
    deployed = register_custom_layers(ncnn.Net())
    assert deployed.load_param(str(tmp_path / "net.param")) == 0
    assert deployed.load_model(str(tmp_path / "net.bin")) == 0
    feeds = _feeds(np.random.default_rng(3), 2, True)
    ex = deployed.create_extractor()
    for name, value in feeds.items():
        ex.input(name, ncnn.Mat(np.ascontiguousarray(value[0])).clone())
    ret, mat = ex.extract("det")
    assert ret == 0
    with torch.no_grad():
        want = image_detections(net(**{k: torch.from_numpy(v) for k, v in feeds.items()})["det"].numpy(), 0)
    np.testing.assert_array_equal(np.array(mat), want)


def test_zoo_ssd_with_detection_output_matches_caffe_in_ncnn(tmp_path: Path) -> None:
    proto, model, _ = zoo.write("ssd", tmp_path)
    net = caffenorm.load(proto, model)
    report = to_ncnn(net, tmp_path / "net.param", batch_sizes=(1, 2))
    compared = [(c.batch, c.name) for c in report.checks if c.name == "detection_out"]
    assert compared == [(1, "detection_out"), (2, "detection_out"), (2, "detection_out")]
    # The zoo's own input scale, a batch of 2: each image's rows as Caffe gives them.
    data = zoo.example_input("ssd", batch=2, seed=5)
    checks, _ = check_ncnn(net, tmp_path / "net.param", tmp_path / "net.bin", [{net.inputs[0]: data}],
                           rtol=RTOL, atol=ATOL)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_res10_on_a_photo_keeps_caffes_126_rows(tmp_path: Path) -> None:
    proto, model = zoo.res10_files()
    net = caffenorm.load(proto, model)
    photo = zoo.res10_photo()
    notes: list[str] = []
    to_ncnn(net, tmp_path / "net.param", batch_sizes=(1,))
    checks, _ = check_ncnn(net, tmp_path / "net.param", tmp_path / "net.bin", [{"data": photo}],
                           rtol=RTOL, atol=ATOL, notes_out=notes)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    rows = NcnnRunner(tmp_path / "net.param", tmp_path / "net.bin").run({"data": photo[0]}, ["detection_out"])
    assert rows["detection_out"].shape == (126, 6)
    with torch.no_grad():
        caffe_rows = net(torch.from_numpy(photo))["detection_out"].numpy()
    assert caffe_rows.shape == (1, 1, 126, 7)
    if not notes:  # end to end: the same rows within float noise of the upstream layers
        np.testing.assert_allclose(rows["detection_out"], caffe_rows[0, 0, :, 1:], rtol=0, atol=5e-5)


@pytest.mark.parametrize(("params", "message"), [
    ("0=2 8=7", "code_type=7"),
    ("8=2", "num_classes=0 must be >= 1"),
    ("0=2 5=1.50000000e+00", "eta=1.5 must be in (0, 1]"),
    ("0=2 3=-1.00000000e-01", "nms_threshold=-0.1"),
    ("0=2 2=-1", "background_label_id -1"),
])
def test_a_bad_param_file_fails_at_load_param_naming_the_value(tmp_path: Path, params: str, message: str) -> None:
    """What Caffe's LayerSetUp rejects, the custom layer rejects when ncnn reads the .param."""
    (tmp_path / "det.param").write_text(
        "7767517\n4 4\nInput loc 0 1 loc 0=8\nInput conf 0 1 conf 0=4\nInput prior 0 1 prior 0=8 1=2\n"
        f"CaffeDetectionOutput det 3 1 loc conf prior out {params}\n")
    with pytest.raises(caffenorm.LayerConfigError, match="CaffeDetectionOutput") as err:
        register_custom_layers(ncnn.Net()).load_param(str(tmp_path / "det.param"))
    assert message in str(err.value)
