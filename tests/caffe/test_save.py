"""``net.save``: what the modules hold now, written back to Caffe's files.

* load -> save -> load is exact, and saving is idempotent (byte-identical files);
* edited settings (LRN k and alpha, ReLU negative_slope, BatchNorm eps, Dropout ratio, Eltwise
  coeff) and a training step (weights and BatchNorm blobs) survive save -> load;
* a folded net saves without BatchNorm/Scale/Bias layers and OpenCV dnn runs it;
* a train_val net loaded for TRAIN keeps its TEST-only layers when saved;
* OpenCV dnn 4.x (the independent peer) reads and runs every saved zoo net it supports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zoo
from netutil import opencv_forward

import caffenorm
from caffenorm.caffe import io, schema


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Zoo net name -> (prototxt, caffemodel, example input), written once per module."""
    directory = tmp_path_factory.mktemp("save")
    cache: dict[str, tuple[Path, Path, np.ndarray]] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = zoo.write(name, directory)
        return cache[name]

    return get


def _outputs(
    net: caffenorm.Net, x: np.ndarray | None = None, seed: int | None = None, **inputs: np.ndarray
) -> dict[str, torch.Tensor]:
    if seed is not None:
        torch.manual_seed(seed)  # Dropout's masks in training mode
    with torch.no_grad():
        out = net(torch.from_numpy(x)) if x is not None else net(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    return {k: v.clone() for k, v in out.items()}


def _assert_identical(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    """Bit-identical: the same settings and float32 weights give the same arithmetic."""
    assert actual.keys() == expected.keys(), what
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=lambda m, key=key: f"{what} {key!r}: {m}")


def _assert_same_params(actual: caffenorm.Net, expected: caffenorm.Net) -> None:
    got, want = actual.params, expected.params
    assert got.keys() == want.keys()
    for layer, blobs in want.items():
        assert len(got[layer]) == len(blobs), layer
        for i, (a, b) in enumerate(zip(got[layer], blobs)):
            assert a.shape == b.shape and torch.equal(a, b), f"{layer} blob {i}"


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", zoo.NAMES)
def test_save_then_load_is_exact_and_saving_is_idempotent(name, files, tmp_path):
    proto, model, x = files(name)
    net = caffenorm.load(proto, model)
    expected = _outputs(net, x)
    net.save(tmp_path / "a.prototxt", tmp_path / "a.caffemodel")
    again = caffenorm.load(tmp_path / "a.prototxt", tmp_path / "a.caffemodel")
    _assert_identical(_outputs(again, x), expected, name)
    _assert_same_params(again, net)
    assert [(s.name, s.type, s.bottoms, s.tops) for s in again.layer_specs] == [
        (s.name, s.type, s.bottoms, s.tops) for s in net.layer_specs
    ]
    # saving what was read back writes the same bytes
    again.save(tmp_path / "b.prototxt", tmp_path / "b.caffemodel")
    assert (tmp_path / "b.prototxt").read_bytes() == (tmp_path / "a.prototxt").read_bytes()
    assert (tmp_path / "b.caffemodel").read_bytes() == (tmp_path / "a.caffemodel").read_bytes()
    # and so does saving the same net twice
    net.save(tmp_path / "c.prototxt", tmp_path / "c.caffemodel")
    assert (tmp_path / "c.prototxt").read_bytes() == (tmp_path / "a.prototxt").read_bytes()
    assert (tmp_path / "c.caffemodel").read_bytes() == (tmp_path / "a.caffemodel").read_bytes()


# ---------------------------------------------------------------------------------------------
# edited settings
# ---------------------------------------------------------------------------------------------

# (net, layer, attribute, new value, run in training mode).  Values are exact in float32 (the
# prototxt's float fields), so the reloaded setting equals the edited one exactly.
EDITS = [
    pytest.param("alexnet", "norm1", "k", 3.0, False, id="lrn-k"),
    pytest.param("zf", "norm1", "alpha", 2.0**-10, False, id="lrn-within-alpha"),
    pytest.param("alexnet", "relu1", "negative_slope", 0.125, False, id="relu-negative_slope"),
    pytest.param("resnet", "bn3", "eps", 2.0**-6, False, id="batchnorm-eps"),
    pytest.param("resnet", "res2a", "coeff", (1.0, -0.75), False, id="eltwise-coeff"),
    # Dropout is the identity at test time: compared in training mode, with the same masks
    pytest.param("alexnet", "drop6", "dropout_ratio", 0.25, True, id="dropout-ratio"),
]


@pytest.mark.parametrize("name, layer, attribute, value, training", EDITS)
def test_an_edited_setting_survives_save_and_load(name, layer, attribute, value, training, files, tmp_path):
    proto, model, x = files(name)
    net = caffenorm.load(proto, model).train(training)
    original = _outputs(net, x, seed=0)
    setattr(net.layer(layer), attribute, value)
    edited = _outputs(net, x, seed=0)
    # not vacuous: the edit changes what the net computes
    assert any(not torch.equal(edited[k], original[k]) for k in original), "the edit changed nothing"

    net.save(tmp_path / "edited.prototxt", tmp_path / "edited.caffemodel")
    again = caffenorm.load(tmp_path / "edited.prototxt", tmp_path / "edited.caffemodel").train(training)
    got = getattr(again.layer(layer), attribute)
    assert (tuple(got) if isinstance(value, tuple) else got) == value
    _assert_identical(_outputs(again, x, seed=0), edited, f"{name} after editing {layer}.{attribute}")


@pytest.mark.parametrize("name", ["alexnet", "resnet"])
def test_a_training_step_survives_save_and_load(name, tmp_path):
    """phase="train": a forward (BatchNorm updates its blobs, Dropout draws masks), the loss's
    backward and an SGD step; the saved net holds the new weights and blobs exactly."""
    proto, model, data, labels = zoo.write_train_val(name, tmp_path)
    net = caffenorm.load(proto, model, phase="train")
    start = {layer: [b.clone() for b in blobs] for layer, blobs in net.params.items()}
    torch.manual_seed(0)
    net(data=torch.from_numpy(data), label=torch.from_numpy(labels))
    loss = net.loss()
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    optimizer.step()
    # not vacuous: every layer's blobs moved (weights by the step, BatchNorm blobs by the forward)
    for layer, blobs in net.params.items():
        assert not torch.equal(blobs[0], start[layer][0]), layer
    if name == "resnet":
        bn = net.layer("bn_conv1")
        assert float(bn.scale_factor) == pytest.approx(0.999 * float(start["bn_conv1"][2]) + 1, rel=1e-6)

    net.save(tmp_path / "trained.prototxt", tmp_path / "trained.caffemodel")
    again = caffenorm.load(tmp_path / "trained.prototxt", tmp_path / "trained.caffemodel", phase="train")
    _assert_same_params(again, net)
    # and the saved net evaluates as the trained one does
    test = caffenorm.load(tmp_path / "trained.prototxt", tmp_path / "trained.caffemodel", phase="test")
    trained = _outputs(net.eval(), data=data, label=labels)
    got = _outputs(test, data=data, label=labels)
    assert set(got) == {"accuracy", "loss"}
    torch.testing.assert_close(got["loss"], trained["loss"], rtol=0, atol=0)  # the same arithmetic


def test_a_train_val_net_saved_from_train_keeps_its_test_only_layers(tmp_path):
    proto, model, data, labels = zoo.write_train_val("alexnet", tmp_path)
    net = caffenorm.load(proto, model, phase="train")
    assert "accuracy" not in {s.name for s in net.layer_specs}
    net.save(tmp_path / "saved.prototxt", tmp_path / "saved.caffemodel")

    original, _ = io.read_prototxt(proto)
    saved, _ = io.read_prototxt(tmp_path / "saved.prototxt")
    assert [layer.name for layer in saved.layer] == [layer.name for layer in original.layer]
    accuracy = next(layer for layer in saved.layer if layer.name == "accuracy")
    assert accuracy.type == "Accuracy" and list(accuracy.bottom) == ["fc8", "label"]
    assert [rule.phase for rule in accuracy.include] == [schema.TEST]
    # the saved pair runs the TEST phase as the original files do
    expected = _outputs(caffenorm.load(proto, model, phase="test"), data=data, label=labels)
    got = _outputs(caffenorm.load(tmp_path / "saved.prototxt", tmp_path / "saved.caffemodel"), data=data, label=labels)
    assert set(got) == {"accuracy", "loss"}
    _assert_identical(got, expected, "TEST phase of the saved train_val net")


# ---------------------------------------------------------------------------------------------
# OpenCV dnn
# ---------------------------------------------------------------------------------------------


def _for_opencv(net: caffenorm.Net) -> caffenorm.Net:
    """OpenCV's Caffe importer drops LRN's ``k`` (it computes with k = 1): set k = 1 in caffenorm
    too, so both compute the same function (an edit that ``net.save`` writes)."""
    for spec in net.layer_specs:
        if spec.type == "LRN" and net.layer(spec.name).norm_region.name == "ACROSS_CHANNELS":
            net.layer(spec.name).k = 1.0
    return net


def _opencv_caffemodel(model: Path, directory: Path) -> Path:
    """A copy of ``model`` that OpenCV 4.x can read: Caffe stores a channel-shared Normalize's scale
    as a 0-axis blob (caffenorm writes it as Caffe does), for which OpenCV's importer cannot
    create a Mat; the copy gives such blobs the shape (1,)."""
    net = schema.NetParameter()
    net.ParseFromString(model.read_bytes())
    changed = False
    for layer in net.layer:
        for blob in layer.blobs:
            if blob.HasField("shape") and not blob.shape.dim:
                blob.shape.dim.append(len(blob.data))
                changed = True
    if not changed:
        return model
    path = directory / f"{model.stem}.opencv.caffemodel"
    path.write_bytes(net.SerializeToString())
    return path


def _detection_rows(det: np.ndarray, opencv: bool = False) -> np.ndarray:
    """DetectionOutput rows sorted by (image, label, -score); OpenCV orders by score over all
    classes and pads with all-zero rows, which are dropped."""
    rows = det.reshape(-1, 7).astype(np.float64)
    if opencv:
        rows = rows[~np.all(rows == 0, axis=1)]
    return rows[np.lexsort((-rows[:, 2], rows[:, 1], rows[:, 0]))]


def _compare_with_opencv(
    net: caffenorm.Net, proto: Path, model: Path, x: np.ndarray, rtol: float, directory: Path
) -> None:
    """Every output of ``net`` against OpenCV's on the saved files, ``|diff| <= rtol * max|output|``."""
    cv2 = pytest.importorskip("cv2")
    assert cv2.__version__.startswith("4.")
    ours = {k: v.numpy() for k, v in _outputs(net, x).items()}
    theirs = opencv_forward(proto, _opencv_caffemodel(model, directory), {"data": x}, list(ours))
    for name, value in ours.items():
        if name == "detection_out":
            mine, other = _detection_rows(value), _detection_rows(theirs[name], opencv=True)
            assert len(mine) > 3 and mine.shape == other.shape, (mine.shape, other.shape)
            np.testing.assert_array_equal(mine[:, :2], other[:, :2])  # image ids and labels
            # scores in [0, 1]; boxes (not clipped) of the order of 1
            atol = rtol * max(1.0, float(np.abs(mine[:, 3:]).max()))
            np.testing.assert_allclose(mine[:, 2:], other[:, 2:], rtol=0, atol=atol)
            continue
        other = theirs[name].reshape(value.shape)
        scale = float(np.abs(value).max())
        np.testing.assert_allclose(value, other, rtol=0, atol=rtol * scale, err_msg=name)


_NO_BIAS_IN_OPENCV = "OpenCV has no Bias layer; the folded resnet (without it) is compared below"

# OpenCV and caffenorm sum in different orders: float32 rounding, ~1e-6 of an output's magnitude
# on these nets (measured: <= 1e-6, the ssd head).
OPENCV_RTOL = 1e-5


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.skip(reason=_NO_BIAS_IN_OPENCV)) if name == "resnet"
        else name
        for name in zoo.NAMES
    ],
)
def test_opencv_runs_every_saved_zoo_net(name, files, tmp_path):
    proto, model, x = files(name)
    net = _for_opencv(caffenorm.load(proto, model))
    net.save(tmp_path / "net.prototxt", tmp_path / "net.caffemodel")
    _compare_with_opencv(net, tmp_path / "net.prototxt", tmp_path / "net.caffemodel", x, OPENCV_RTOL, tmp_path)


@pytest.fixture(scope="module")
def open_nsfw():
    proto, model = zoo.open_nsfw_files()
    return proto, model, zoo.open_nsfw_photo()


@pytest.mark.parametrize("name", ["example", "resnet", "open_nsfw"])
def test_a_folded_net_saves_without_norm_layers_and_opencv_agrees(name, files, open_nsfw, tmp_path):
    proto, model, x = open_nsfw if name == "open_nsfw" else files(name)
    folded = _for_opencv(caffenorm.load(proto, model, fold=True))
    expected = _outputs(folded, x)
    folded.save(tmp_path / "folded.prototxt", tmp_path / "folded.caffemodel")

    saved, _ = io.read_prototxt(tmp_path / "folded.prototxt")
    types = [layer.type for layer in saved.layer]
    assert not {"BatchNorm", "Scale", "Bias"} & set(types), types
    again = caffenorm.load(tmp_path / "folded.prototxt", tmp_path / "folded.caffemodel")
    _assert_identical(_outputs(again, x), expected, f"folded {name}")
    _assert_same_params(again, folded)
    for spec in again.layer_specs:  # every convolution that took a fold now has a bias
        if spec.name in set(folded.graph.removed.values()):
            field = "inner_product_param" if spec.type == "InnerProduct" else "convolution_param"
            assert getattr(spec.param, field).bias_term and len(again.params[spec.name]) == 2, spec.name
    # OpenCV sums in another order than caffenorm; the folded weights are the same float32
    # numbers on both sides: 1e-4 of the output's magnitude leaves room for open_nsfw's depth.
    _compare_with_opencv(again, tmp_path / "folded.prototxt", tmp_path / "folded.caffemodel", x, 1e-4, tmp_path)
    # the folded net computes the unfolded one's function (to float32 rounding)
    unfolded = _outputs(_for_opencv(caffenorm.load(proto, model)), x)
    for key, value in unfolded.items():
        torch.testing.assert_close(expected[key], value, rtol=0, atol=1e-5 * float(value.abs().max()))
