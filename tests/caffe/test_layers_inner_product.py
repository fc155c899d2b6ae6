"""Caffe's InnerProduct layer (inner_product_layer.cpp) as built by ``caffenorm.load``.

Each test pins one Caffe behaviour against a numpy reference (the bottom as an ``M x K`` matrix,
``M = count(0, axis)``, times the weight, plus the bias) and against OpenCV dnn 4.x where OpenCV
is right.  OpenCV ignores ``transpose: true`` (it reads the ``(K, N)`` blob as ``(N, K)``), so the
transposed form is checked against the reference only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

import caffenorm
from caffenorm import BlobError, InputShapeError, LayerConfigError, NetDefinitionError
from netutil import opencv_forward, write_model


def ref_inner_product(x, w, b, axis, transpose=False):
    x = np.asarray(x, np.float64)
    axis = axis % x.ndim
    lead = x.shape[:axis]
    rows = x.reshape(int(np.prod(lead)), int(np.prod(x.shape[axis:])))
    w = np.asarray(w, np.float64)
    y = rows @ (w if transpose else w.T)
    if b is not None:
        y = y + np.asarray(b, np.float64)
    return y.reshape(*lead, y.shape[-1])


def _proto(shape, body, name="ip1", bottoms=("data",), tops=("ip1",)):
    dims = " ".join(f"dim: {d}" for d in shape)
    return (
        f'name: "t"\nlayer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'
        f'layer {{ name: "{name}" type: "InnerProduct" {" ".join(f"bottom: {chr(34)}{b}{chr(34)}" for b in bottoms)} '
        f'{" ".join(f"top: {chr(34)}{t}{chr(34)}" for t in tops)} inner_product_param {{ {body} }} }}\n'
    )


def _run(net, x):
    return net(torch.from_numpy(np.asarray(x, np.float32)))["ip1"].detach().numpy()


# (shape, body, axis, K, N, bias)
CASES = [
    pytest.param((3, 4, 2, 5), "num_output: 6", 1, 40, 6, True, id="4d-axis1-flattens-chw"),
    pytest.param((5, 7), "num_output: 3", 1, 7, 3, True, id="2d"),
    pytest.param((2, 3, 4, 5), "num_output: 4 axis: 2", 2, 20, 4, True, id="axis2"),
    pytest.param((2, 3, 4, 5), "num_output: 3 axis: -1", -1, 5, 3, True, id="axis-minus1"),
    pytest.param((2, 3, 4), "num_output: 5 axis: 0", 0, 24, 5, True, id="axis0-one-row"),
    pytest.param((4, 6, 1, 1), "num_output: 2 bias_term: false", 1, 6, 2, False, id="no-bias"),
]


@pytest.mark.parametrize("shape, body, axis, K, N, bias", CASES)
def test_matches_reference_and_opencv(tmp_path, shape, body, axis, K, N, bias):
    """Top shape ``bottom.shape[:axis] + (num_output,)``; weight blob ``(num_output, K)``."""
    rng = np.random.default_rng(1)
    blobs = [rng.normal(size=(N, K)).astype(np.float32)] + ([rng.normal(size=N).astype(np.float32)] if bias else [])
    proto, model = write_model(tmp_path, _proto(shape, body), {"ip1": blobs})
    net = caffenorm.load(proto, model)
    assert [tuple(t.shape) for t in net.params["ip1"]] == [(N, K)] + [(N,)] * bias
    x = rng.normal(size=shape).astype(np.float32)
    ours = _run(net, x)
    expected = ref_inner_product(x, blobs[0], blobs[1] if bias else None, axis)
    assert ours.shape == shape[: axis % len(shape)] + (N,)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    pytest.importorskip("cv2")
    theirs = opencv_forward(proto, model, {"data": x}, ["ip1"])["ip1"]
    np.testing.assert_allclose(ours, theirs.reshape(ours.shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, axis", [((2, 3, 4, 5), 1), ((2, 3, 4, 5), 2)])
def test_transpose_keeps_the_K_by_N_blob(tmp_path, shape, axis):
    """``transpose: true`` stores the weight as ``(K, num_output)`` and computes ``x @ W``.
    (OpenCV ignores the flag, so only the reference is compared.)"""
    rng = np.random.default_rng(2)
    K = int(np.prod(shape[axis:]))
    blobs = [rng.normal(size=(K, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)]
    proto, model = write_model(tmp_path, _proto(shape, f"num_output: 3 transpose: true axis: {axis}"), {"ip1": blobs})
    net = caffenorm.load(proto, model)
    assert [tuple(t.shape) for t in net.params["ip1"]] == [(K, 3), (3,)]
    x = rng.normal(size=shape)
    np.testing.assert_allclose(_run(net, x), ref_inner_product(x, *blobs, axis, transpose=True), rtol=1e-5,
                               atol=1e-5)


def test_legacy_4d_blobs_load(tmp_path):
    """Old caffemodels store the weight as ``(1, 1, N, K)`` and the bias as ``(1, 1, 1, N)``."""
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(4, 12)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    proto, model = write_model(tmp_path, _proto((2, 3, 2, 2), "num_output: 4"),
                               {"ip1": [w.reshape(1, 1, 4, 12), b.reshape(1, 1, 1, 4)]})
    net = caffenorm.load(proto, model)
    x = rng.normal(size=(2, 3, 2, 2))
    np.testing.assert_allclose(_run(net, x), ref_inner_product(x, w, b, 1), rtol=1e-5, atol=1e-5)


def test_any_batch_and_leading_shape(tmp_path):
    """Only K is fixed: any batch size, and with ``axis: 2`` any size of the axes before it."""
    rng = np.random.default_rng(4)
    blobs = [rng.normal(size=(3, 20)).astype(np.float32), rng.normal(size=3).astype(np.float32)]
    proto, model = write_model(tmp_path, _proto((2, 3, 4, 5), "num_output: 3 axis: 2"), {"ip1": blobs})
    net = caffenorm.load(proto, model)
    for shape in [(1, 3, 4, 5), (6, 7, 4, 5), (0, 3, 4, 5), (2, 3, 2, 10)]:
        x = rng.normal(size=shape)
        out = _run(net, x)
        assert out.shape == shape[:2] + (3,)
        np.testing.assert_allclose(out, ref_inner_product(x, *blobs, 2), rtol=1e-5, atol=1e-5)


def test_negative_axis_is_resolved_per_input(tmp_path):
    """Caffe's Reshape re-resolves ``axis`` against each input's rank: ``axis: -1`` on a 3-D input
    with the same last size works."""
    rng = np.random.default_rng(5)
    blobs = [rng.normal(size=(2, 5)).astype(np.float32), rng.normal(size=2).astype(np.float32)]
    proto, model = write_model(tmp_path, _proto((2, 3, 4, 5), "num_output: 2 axis: -1"), {"ip1": blobs})
    net = caffenorm.load(proto, model)
    x = rng.normal(size=(3, 4, 5))
    np.testing.assert_allclose(net.layer("ip1")(torch.from_numpy(x).float()).detach().numpy(),
                               ref_inner_product(x, *blobs, -1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("transpose", [False, True])
def test_gradients(tmp_path, transpose):
    body = f"num_output: 3 transpose: {str(transpose).lower()} weight_filler {{ type: 'gaussian' }} " \
           "bias_filler { type: 'gaussian' }"
    proto, _ = write_model(tmp_path, _proto((2, 2, 2, 1), body))
    module = caffenorm.load(proto).layer("ip1").double()
    x = torch.randn(2, 2, 2, 1, dtype=torch.float64, requires_grad=True)
    w = module.weight.detach().clone().requires_grad_(True)
    b = module.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, w, b: functional_call(module, {"weight": w, "bias": b}, (x,)),
                                    (x, w, b))


def test_fillers(tmp_path):
    """Both fillers always run; an unset FillerParameter (or one without ``type``) is constant 0;
    ``xavier`` uses fan_in = K."""
    text = _proto((2, 50), "num_output: 10 weight_filler { type: 'xavier' } bias_filler { type: 'constant' value: 3 }")
    text += 'layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" ' \
            "inner_product_param { num_output: 4 weight_filler { std: 0.5 } } }\n"
    params = caffenorm.load(write_model(tmp_path, text)[0], seed=2).params
    w, b = params["ip1"]
    assert w.abs().max() <= np.sqrt(3 / 50) and w.std() > 0 and torch.all(b == 3)
    assert all(torch.all(t == 0) for t in params["ip2"])


def test_save_and_reload_round_trip(tmp_path):
    text = _proto((2, 3, 2, 2), "num_output: 4 transpose: true weight_filler { type: 'gaussian' } "
                  "bias_filler { type: 'uniform' }")
    net = caffenorm.load(write_model(tmp_path, text)[0], seed=5)
    x = torch.randn(2, 3, 2, 2)
    before = net(x)["ip1"]
    net.save(tmp_path / "saved.prototxt", tmp_path / "saved.caffemodel")
    again = caffenorm.load(tmp_path / "saved.prototxt", tmp_path / "saved.caffemodel")
    assert torch.equal(again(x)["ip1"], before)
    assert [tuple(t.shape) for t in again.params["ip1"]] == [(12, 4), (4,)]


def test_extra_repr_names_every_setting(tmp_path):
    text = repr(caffenorm.load(write_model(tmp_path, _proto((2, 3, 4), "num_output: 5 axis: -1 bias_term: false "
                                                            "transpose: true"))[0]).layer("ip1"))
    for part in ("num_output=5", "in_features=4", "axis=-1", "bias_term=False", "transpose=True"):
        assert part in text


# ------------------------------------------------------------------------------- rejected settings

REJECTED = [
    pytest.param((2, 3), "bias_term: false", {}, LayerConfigError, "num_output=0", id="no-num_output"),
    pytest.param((2, 3), "num_output: 2 axis: 2", {}, LayerConfigError, "axis=2 is out of range", id="axis-too-large"),
    pytest.param((2, 3), "num_output: 2 axis: -3", {}, LayerConfigError, "axis=-3 is out of range",
                 id="axis-too-small"),
    pytest.param((2, 3), "num_output: 2", {"tops": ("a", "b")}, NetDefinitionError, "2 tops", id="two-tops"),
    pytest.param((2, 3), "num_output: 2", {"bottoms": ("data", "data")}, NetDefinitionError, "2 bottoms",
                 id="two-bottoms"),
    pytest.param((2, 3), "num_output: 2 weight_filler { type: 'nope' }", {}, LayerConfigError, "nope",
                 id="bad-filler"),
    pytest.param((1, 2**20), "num_output: 4096", {}, NetDefinitionError, "elements", id="absurd-size"),
]


@pytest.mark.parametrize("shape, body, wiring, error, match", REJECTED)
def test_rejected_settings_name_the_layer(tmp_path, shape, body, wiring, error, match):
    proto, _ = write_model(tmp_path, _proto(shape, body, **wiring))
    with pytest.raises(error, match=match) as info:
        caffenorm.load(proto)
    assert "'ip1'" in str(info.value) and "(InnerProduct)" in str(info.value)


def test_wrong_input_size_at_forward(tmp_path):
    """Caffe's Reshape: "Input size incompatible with inner product parameters"."""
    net = caffenorm.load(write_model(tmp_path, _proto((2, 3, 4), "num_output: 2"))[0])
    with pytest.raises(InputShapeError, match=r"'ip1'.*has 15 values.*set up for 12"):
        net(torch.zeros(2, 3, 5))


def test_wrong_blob_shape_on_load(tmp_path):
    proto, model = write_model(tmp_path, _proto((2, 3), "num_output: 2 transpose: true"),
                               {"ip1": [np.zeros((2, 3)), np.zeros(2)]})
    with pytest.raises(BlobError, match=r"'ip1'.*\(2, 3\), expected \(3, 2\)"):
        caffenorm.load(proto, model)
