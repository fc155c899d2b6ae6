"""ONNX export of SSD's DetectionOutput (``caffenorm.export.onnx.detection``): standard ops that give
caffenorm's (Caffe's) rows exactly.

Two kinds of checks:

* *the subgraph alone*: a net of three Input layers (loc, conf, prior) and a DetectionOutput, so
  that onnxruntime and caffenorm's eager layer read the very same bottoms; their rows must be
  bit-identical (count, order and every value, NaN and inf included) over settings (code types,
  variance in target, share_location, background ids, top_k, keep_top_k cuts, adaptive eta, an
  ``nms_threshold`` above 1) and inputs (random, many equal scores and boxes, NaN/inf/huge
  locations);
* *whole nets* (res10 on a photo, the zoo's ``ssd`` on random inputs): ``to_onnx``'s own check,
  the rows of the written file against the eager net (same count, labels and image ids; scores
  and boxes within 1e-6, the noise of the convolutions before), and the layer on onnxruntime's
  own bottoms against caffenorm's ``detection_output`` on the same values, bit for bit.

End to end, rows can only agree where the convolutions' float noise (~1e-6) does not reorder two
nearly equal scores: that is true of the inputs below, not of every input (with res10 on seeded
normal inputs about one seed in twenty swaps two scores 2 ulp apart; the layer-local check still
holds there).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zoo

import caffenorm
from caffenorm.caffe.ops.detection import detection_output, prior_box

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import helper

from caffenorm.export.onnx import build_model, mapping_table, to_onnx

BOTTOMS = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]


# ----------------------------------------------------------------------------------- helpers


def _session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _rows(net: caffenorm.Net, feeds: dict[str, np.ndarray], top: str) -> np.ndarray:
    with torch.no_grad():
        return net(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()})[top].numpy()


def _assert_exact(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_array_equal(got, want)  # NaN equals NaN here


def _assert_close(got: np.ndarray, want: np.ndarray) -> None:
    """Rows of a whole net: same count, image ids and labels; scores and boxes within 1e-6."""
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(got[..., :2], want[..., :2])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _detection_net(directory: Path, num_priors: int, num_classes: int, batch: int, share: bool,
                   params: str) -> caffenorm.Net:
    """Input layers loc, conf, prior and one DetectionOutput ``det`` with ``params``."""
    loc_channels = num_priors * (1 if share else num_classes) * 4
    text = 'name: "detection"\n'
    for name, shape in (("loc", (batch, loc_channels)), ("conf", (batch, num_priors * num_classes)),
                        ("prior", (1, 2, num_priors * 4))):
        dims = " ".join(f"dim: {d}" for d in shape)
        text += f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'
    text += (
        'layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det"\n'
        f"  detection_output_param {{ num_classes: {num_classes} share_location: {str(share).lower()} {params} }} }}\n"
    )
    path = directory / "detection.prototxt"
    path.write_text(text)
    return caffenorm.load(path)


def _priors() -> np.ndarray:
    """Two SSD-like layers of priors on a 64x64 image: 8x8 and 4x4 cells, 4 and 6 boxes each."""
    a = prior_box((8, 8), (64, 64), min_sizes=[16], max_sizes=[32], aspect_ratios=[2], variances=[0.1, 0.1, 0.2, 0.2])
    b = prior_box((4, 4), (64, 64), min_sizes=[32], max_sizes=[48], aspect_ratios=[2, 3], clip=True,
                  variances=[0.1, 0.1, 0.2, 0.2])
    return torch.cat([a, b], dim=2).numpy()


def _inputs(kind: str, seed: int, batch: int, num_priors: int, num_loc: int, num_classes: int):
    rng = np.random.default_rng(seed)
    loc = rng.normal(0.0, 1.0, (batch, num_priors * num_loc * 4))
    logits = rng.normal(0.0, 2.0, (batch, num_priors, num_classes))
    conf = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    if kind == "ties":  # a handful of distinct scores and coarse boxes: many equal scores and equal boxes
        conf, loc = np.round(conf * 8) / 8, np.round(loc * 2) / 2
    elif kind == "nonfinite":  # NaN and infinite boxes and scores, exp overflowing to inf
        flat_loc, flat_conf = loc.reshape(-1), conf.reshape(-1)
        flat_loc[rng.choice(flat_loc.size, 40)] = np.nan
        flat_loc[rng.choice(flat_loc.size, 40)] = rng.choice([np.inf, -np.inf, 500.0, -500.0, 250.0], 40)
        flat_conf[rng.choice(flat_conf.size, 30)] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -0.0], 30)
    elif kind == "huge":  # boxes far outside the image, many overflowing sizes and overlaps
        loc = loc * 100
    return loc.astype(np.float32), conf.reshape(batch, -1).astype(np.float32)


def _with_bottoms(built, net_bottoms: list[str]):
    """A copy of the built model that also outputs the ONNX values of ``net_bottoms``."""
    model = type(built.model)()
    model.CopyFrom(built.model)
    for blob in net_bottoms:
        model.graph.output.append(helper.make_tensor_value_info(built.final[blob], onnx.TensorProto.FLOAT, None))
    return model


def _check_layer_on_runtime_bottoms(net: caffenorm.Net, inputs: list[np.ndarray]) -> list[int]:
    """The exported DetectionOutput on onnxruntime's own bottoms gives, bit for bit, caffenorm's
    ``detection_output`` of those bottoms; returns the row counts."""
    built = build_model(net)
    session = _session(_with_bottoms(built, BOTTOMS))
    settings = net.layer("detection_out").settings()
    counts = []
    for x in inputs:
        rows, *bottoms = session.run(None, {"data": x})
        want = detection_output(*(torch.from_numpy(b) for b in bottoms), **settings).numpy()
        _assert_exact(rows, want)
        counts.append(rows.shape[2])
    return counts


# ------------------------------------------------------------------ the subgraph, bit for bit

SETTINGS = [
    # (num_classes, share_location, detection_output_param)
    (4, True, "nms_param { nms_threshold: 0.45 top_k: 50 } keep_top_k: 20 confidence_threshold: 0.05"),
    (4, True, "nms_param { nms_threshold: 0.3 } keep_top_k: 13 code_type: CENTER_SIZE"),
    (4, False, "background_label_id: -1 nms_param { nms_threshold: 0.9 top_k: 40 eta: 0.7 } keep_top_k: 33"),
    (4, False, ("nms_param { nms_threshold: 0.5 top_k: 30 } keep_top_k: 7 code_type: CORNER_SIZE "
                "variance_encoded_in_target: true")),
    (4, True, ("background_label_id: 4 nms_param { nms_threshold: 1.5 } keep_top_k: 30 code_type: CENTER_SIZE "
               "variance_encoded_in_target: true")),
    (3, True, "background_label_id: 1 nms_param { nms_threshold: 0.0 top_k: 9 } code_type: CENTER_SIZE"),
    (2, True, ("nms_param { nms_threshold: 0.45 top_k: 400 } keep_top_k: 200 confidence_threshold: 0.01 "
               "code_type: CENTER_SIZE")),  # res10's
]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_subgraph_gives_caffenorms_rows_bit_for_bit(tmp_path, setting, batch):
    num_classes, share, params = SETTINGS[setting]
    prior = _priors()
    num_priors = prior.shape[2] // 4
    net = _detection_net(tmp_path, num_priors, num_classes, batch, share, params)
    built = build_model(net)
    onnx.checker.check_model(built.model, full_check=True)
    session = _session(built.model)
    counts = []
    for kind in ("random", "ties", "nonfinite", "huge"):
        for seed in (0, 1):
            loc, conf = _inputs(kind, seed, batch, num_priors, 1 if share else num_classes, num_classes)
            feeds = {"loc": loc, "conf": conf, "prior": prior}
            (got,) = session.run(None, feeds)
            _assert_exact(got, _rows(net, feeds, "det"))
            counts.append(got.shape[2])
    assert max(counts) > batch  # something was detected


@pytest.mark.parametrize("code", ["CENTER_SIZE", "CORNER"])
def test_overlaps_are_jaccard_overlap_bit_for_bit(tmp_path, code):
    """The NMS's overlap matrix (exposed from inside the graph) is caffenorm's ``jaccard_overlap``
    of the candidates, bit for bit: an operation in another order would round differently."""
    from caffenorm.caffe.ops.detection import jaccard_overlap

    prior = _priors()
    num_priors = prior.shape[2] // 4
    net = _detection_net(tmp_path, num_priors, 3, 2, True, f"nms_param {{ nms_threshold: 0.45 }} code_type: {code}")
    model = build_model(net).model
    (cand,) = (n.output[0] for n in model.graph.node
               if n.op_type == "GatherND" and any(a.name == "batch_dims" and a.i == 2 for a in n.attribute))
    (overlap,) = (n.input[0] for n in model.graph.node if n.op_type == "LessOrEqual")
    for name in (cand, overlap):
        model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = _session(model)
    for kind in ("random", "huge", "nonfinite"):
        loc, conf = _inputs(kind, 2, 2, num_priors, 1, 3)
        _, boxes, got = session.run(None, {"loc": loc, "conf": conf, "prior": prior})
        for n in range(2):
            for c in range(2):
                want = jaccard_overlap(torch.from_numpy(boxes[n, c]), torch.from_numpy(boxes[n, c])).numpy()
                np.testing.assert_array_equal(got[n, c], want)


def test_overlap_equal_to_the_threshold_keeps(tmp_path):
    """Caffe keeps a box whose overlap equals the threshold (``<=``), also the adaptive one: with
    ``nms_threshold: 1`` and ``eta: 0.5`` the threshold is 0.5 after the first box, and the second
    box overlaps it by exactly 0.5."""
    prior = np.zeros((1, 2, 3 * 4), np.float32)
    prior[0, 1] = 1.0
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 0.5], [0, 0.5, 1, 1]], np.float32)  # overlaps 0.5, 0.5, 0
    conf = np.array([[0.1, 0.9, 0.2, 0.8, 0.3, 0.7]], np.float32)
    feeds = {"loc": boxes.reshape(1, -1), "conf": conf, "prior": prior}
    for params in ("nms_param { nms_threshold: 1.0 eta: 0.5 }", "nms_param { nms_threshold: 0.5 }"):
        net = _detection_net(tmp_path, 3, 2, 1, True, params + " code_type: CORNER variance_encoded_in_target: true")
        (got,) = _session(build_model(net).model).run(None, feeds)
        _assert_exact(got, _rows(net, feeds, "det"))
        assert got.shape == (1, 1, 3, 7)


def test_a_long_chain_of_suppressions(tmp_path):
    """400 boxes in a row, each overlapping the next by 1/3: greedy NMS keeps every other one, and
    the Loop's fixed point must run through the whole chain."""
    num_priors = 400
    prior = np.zeros((1, 2, num_priors * 4), np.float32)
    prior[0, 1] = 1.0
    params = "nms_param { nms_threshold: 0.3 } code_type: CORNER variance_encoded_in_target: true"
    net = _detection_net(tmp_path, num_priors, 2, 2, True, params)
    session = _session(build_model(net).model)
    j = np.arange(num_priors, dtype=np.float32)
    boxes = np.stack([j * 0.01, 0 * j, j * 0.01 + 0.02, 0 * j + 1], -1)
    loc = np.tile(boxes.reshape(1, -1), (2, 1)).astype(np.float32)
    score = np.linspace(0.9, 0.1, num_priors)
    conf = np.tile(np.stack([1 - score, score], -1).reshape(1, -1), (2, 1)).astype(np.float32)
    feeds = {"loc": loc, "conf": conf, "prior": prior}
    (got,) = session.run(None, feeds)
    _assert_exact(got, _rows(net, feeds, "det"))
    assert got.shape[2] == 2 * num_priors // 2


@pytest.mark.parametrize(
    "num_classes, params",
    [
        (1, "nms_param { nms_threshold: 0.3 }"),  # only the background class
        (3, "nms_param { nms_threshold: 0.3 top_k: 0 }"),
        (3, "nms_param { nms_threshold: 0.3 } keep_top_k: 0"),
        (3, "nms_param { nms_threshold: 0.3 } confidence_threshold: 1.0"),  # nothing is above 1
    ],
)
def test_nothing_kept_gives_caffes_rows(tmp_path, num_classes, params):
    prior = _priors()
    num_priors = prior.shape[2] // 4
    net = _detection_net(tmp_path, num_priors, num_classes, 3, True, params)
    session = _session(build_model(net).model)
    loc, conf = _inputs("random", 0, 3, num_priors, 1, num_classes)
    feeds = {"loc": loc, "conf": conf, "prior": prior}
    (got,) = session.run(None, feeds)
    expected = np.full((1, 1, 3, 7), -1.0, np.float32)
    expected[0, 0, :, 0] = [0, 1, 2]
    _assert_exact(got, expected)
    _assert_exact(got, _rows(net, feeds, "det"))


def test_graph_is_standard_ops_at_every_opset(tmp_path):
    prior = _priors()
    net = _detection_net(tmp_path, prior.shape[2] // 4, 4, 1, True, "nms_param { nms_threshold: 0.45 eta: 0.8 }")
    loc, conf = _inputs("random", 3, 1, prior.shape[2] // 4, 1, 4)
    feeds = {"loc": loc, "conf": conf, "prior": prior}
    want = _rows(net, feeds, "det")
    for opset in sorted({17, 18, onnx.defs.onnx_opset_version()}):
        model = build_model(net, opset=opset).model
        onnx.checker.check_model(model, full_check=True)
        assert all(op.domain in ("", "ai.onnx") for op in model.opset_import)
        types = {n.op_type for n in model.graph.node}
        assert "NonMaxSuppression" not in types and {"TopK", "Loop", "NonZero"} <= types
        (got,) = _session(model).run(None, feeds)
        _assert_exact(got, want)
    rows = {row[0]: row for row in mapping_table()}
    assert not rows["DetectionOutput"][2].startswith("Refused")


# ------------------------------------------------------------------------------ whole nets


def test_res10_convert_and_photo(tmp_path, capsys):
    """``caffenorm convert`` of res10 (fold on) verifies itself; the file gives Caffe's 126 rows
    on the photo, and the rows of the photo and its mirror image at batch 2."""
    from caffenorm.cli import main

    files, photo = zoo.REAL["res10"]
    proto, model = files()
    x = photo()
    out = tmp_path / "res10.onnx"
    assert main(["convert", str(proto), str(model), "--to", "onnx", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "all blobs agree" in printed and "detection_out" in printed
    net = caffenorm.load(proto, model, fold=True)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    pair = np.ascontiguousarray(np.concatenate([x, x[..., ::-1]]))
    for batch in (x, pair):
        (got,) = session.run(None, {"data": batch})
        _assert_close(got, _rows(net, {"data": batch}, "detection_out"))
    (single,) = session.run(None, {"data": x})
    assert single.shape == (1, 1, 126, 7) and single[0, 0, 0, 2] > 0.99  # one face, and Caffe's 126 rows
    counts = _check_layer_on_runtime_bottoms(net, [x, pair])
    assert counts[0] == 126 and counts[1] > 126


def test_res10_with_nothing_detected(tmp_path):
    files, photo = zoo.REAL["res10"]
    net = caffenorm.load(*files())
    net.layer("detection_out").confidence_threshold = 0.9999
    report = to_onnx(net, tmp_path / "res10.onnx")  # random inputs: no face, one [i, -1, ...] row per image
    shapes = {c.batch: c.shape for c in report.checks if c.name == "detection_out"}
    assert shapes == {1: (1, 1, 1, 7), 2: (1, 1, 2, 7)}
    session = ort.InferenceSession(str(tmp_path / "res10.onnx"), providers=["CPUExecutionProvider"])
    x = photo()
    noise = np.random.default_rng(5).standard_normal((2, *x.shape[1:])).astype(np.float32)
    for feed in (x, noise, np.ascontiguousarray(np.concatenate([noise[:1], x]))):
        (got,) = session.run(None, {"data": feed})
        _assert_close(got, _rows(net, {"data": feed}, "detection_out"))
    (got,) = session.run(None, {"data": noise})
    _assert_exact(got, np.array([[[[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]]]], np.float32))


@pytest.fixture(scope="module")
def ssd_files(tmp_path_factory):
    return zoo.write("ssd", tmp_path_factory.mktemp("ssd"))[:2]


@pytest.mark.parametrize(
    "variant",
    [
        {},  # top_k 100, keep_top_k 40 (cuts), confidence 0.05
        {"keep_top_k": 5},  # the cross-class cut and the regrouping by label
        {"top_k": 7, "keep_top_k": 3},
        {"top_k": 20, "keep_top_k": -1, "nms_threshold": 0.95, "eta": 0.8},  # adaptive NMS
    ],
    ids=["zoo", "keep_top_k", "top_k", "eta"],
)
def test_ssd_zoo_net(ssd_files, tmp_path, variant):
    net = caffenorm.load(*ssd_files)
    for name, value in variant.items():
        setattr(net.layer("detection_out"), name, value)
    report = to_onnx(net, tmp_path / "ssd.onnx")
    assert any(c.name == "detection_out" for c in report.checks)
    session = ort.InferenceSession(str(tmp_path / "ssd.onnx"), providers=["CPUExecutionProvider"])
    inputs = [zoo.example_input("ssd", batch=b, seed=s) for b in (1, 2) for s in range(3)]
    for x in inputs:
        (got,) = session.run(None, {"data": x})
        _assert_close(got, _rows(net, {"data": x}, "detection_out"))
    counts = _check_layer_on_runtime_bottoms(net, inputs)
    keep = net.layer("detection_out").keep_top_k
    if keep > -1:
        assert max(counts) == 2 * keep  # the cut was reached
