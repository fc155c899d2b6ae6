"""The Eltwise converter: SUM (with coeff), PROD and MAX, against a numpy reference written from
BVLC ``src/caffe/layers/eltwise_layer.cpp`` and against OpenCV dnn 4.x (which agrees wherever the
inputs have no ties or NaNs; the tie and NaN rules are checked against the reference only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from netutil import opencv_forward

import caffenorm
from caffenorm.caffe.layers.eltwise import Eltwise
from caffenorm.errors import InputShapeError, LayerConfigError, NetDefinitionError

SHAPE = (2, 3, 4, 5)


def _prototxt(n_inputs: int, param: str, shapes=None, name: str = "elt") -> str:
    shapes = shapes or [SHAPE] * n_inputs
    lines = ['name: "eltwise"']
    for i, shape in enumerate(shapes):
        dims = " ".join(f"dim: {d}" for d in shape)
        lines.append(f'layer {{ name: "in{i}" type: "Input" top: "x{i}" input_param {{ shape {{ {dims} }} }} }}')
    bottoms = " ".join(f'bottom: "x{i}"' for i in range(n_inputs))
    lines.append(f'layer {{ name: "{name}" type: "Eltwise" {bottoms} top: "out" eltwise_param {{ {param} }} }}')
    return "\n".join(lines) + "\n"


def _build(tmp_path, n_inputs: int, param: str, shapes=None):
    proto = tmp_path / "net.prototxt"
    proto.write_text(_prototxt(n_inputs, param, shapes))
    return caffenorm.load(proto), proto


def _inputs(n: int, seed: int = 0, shape=SHAPE) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


def _run(net, xs, dtype=torch.float32) -> np.ndarray:
    feed = {f"x{i}": torch.tensor(x, dtype=dtype) for i, x in enumerate(xs)}
    return net(**feed)["out"].detach().double().numpy()


# ---------------------------------------------------------------------------------------------
# The reference: Forward_cpu's loops, and the max_idx_ mask its Backward_cpu uses
# ---------------------------------------------------------------------------------------------


def ref_eltwise(op: str, xs, coeff=None):
    xs = [np.asarray(x, dtype=np.float64) for x in xs]
    if op == "SUM":
        coeff = coeff or [1.0] * len(xs)
        out = np.zeros_like(xs[0])
        for c, x in zip(coeff, xs):
            out = out + c * x
        return out
    if op == "PROD":
        out = xs[0] * xs[1]
        for x in xs[2:]:
            out = out * x
        return out
    return ref_max(xs)[0]


def ref_max(xs):
    """Element by element: ``a > b ? (a, 0) : (b, 1)``, then ``x_i > top ? (x_i, i)``."""
    top = np.empty_like(xs[0])
    mask = np.empty(xs[0].shape, dtype=int)
    for idx in np.ndindex(top.shape):
        a, b = xs[0][idx], xs[1][idx]
        top[idx], mask[idx] = (a, 0) if a > b else (b, 1)
        for i in range(2, len(xs)):
            if xs[i][idx] > top[idx]:
                top[idx], mask[idx] = xs[i][idx], i
    return top, mask


def test_reference_max_rule_on_hand_cases():
    nan = np.nan
    xs = [np.array([1.0, 2.0, nan, 1.0, 3.0]), np.array([1.0, 1.0, 5.0, nan, 3.0]), np.array([1.0, 2.0, 4.0, 9.0, nan])]
    top, mask = ref_max(xs)
    np.testing.assert_array_equal(mask, [1, 0, 1, 1, 1])
    np.testing.assert_array_equal(top, [1.0, 2.0, 5.0, nan, 3.0])


CASES = [
    ("sum", 2, "operation: SUM", "SUM", None),
    ("sum_default_op", 3, "", "SUM", None),
    ("sum_coeff", 3, "operation: SUM coeff: 1 coeff: -1 coeff: 0.5", "SUM", [1.0, -1.0, 0.5]),
    ("sum_coeff_first", 2, "coeff: 0.25 coeff: 1", "SUM", [0.25, 1.0]),
    ("prod", 2, "operation: PROD", "PROD", None),
    ("prod3", 3, "operation: PROD", "PROD", None),
    ("max", 2, "operation: MAX", "MAX", None),
    ("max4", 4, "operation: MAX", "MAX", None),
]


@pytest.mark.parametrize(("n", "param", "op", "coeff"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_matches_reference_and_opencv(tmp_path, n, param, op, coeff):
    net, proto = _build(tmp_path, n, param)
    xs = _inputs(n)
    expected = ref_eltwise(op, xs, coeff)
    np.testing.assert_allclose(_run(net, xs), expected, rtol=2e-6, atol=2e-7)
    np.testing.assert_allclose(_run(net.double(), xs, torch.float64), expected, rtol=1e-13, atol=1e-14)
    pytest.importorskip("cv2")
    theirs = opencv_forward(proto, None, {f"x{i}": x for i, x in enumerate(xs)}, ["elt"])["elt"]
    np.testing.assert_allclose(_run(net.float(), xs), theirs, rtol=1e-5, atol=1e-6)


def test_max_ties_and_nans_follow_caffes_comparisons(tmp_path):
    # Ties between the first two bottoms go to the second; a later tie keeps the earlier bottom;
    # NaN loses a comparison both ways (Caffe: a > b is false), so where it lands depends on order.
    net, _ = _build(tmp_path, 3, "operation: MAX", shapes=[(1, 6)] * 3)
    nan = np.nan
    xs = [
        np.array([[1.0, 2.0, nan, 1.0, 3.0, -1.0]]),
        np.array([[1.0, 1.0, 5.0, nan, 3.0, -1.0]]),
        np.array([[1.0, 2.0, 4.0, 9.0, nan, -1.0]]),
    ]
    ts = [torch.tensor(x, requires_grad=True) for x in xs]
    y = net(x0=ts[0], x1=ts[1], x2=ts[2])["out"]
    top, mask = ref_max(xs)
    np.testing.assert_array_equal(y.detach().numpy(), top)
    y.backward(torch.full_like(y, 2.0))
    # Caffe's Backward: bottom i gets top_diff where max_idx_ == i, else 0.
    for i, t in enumerate(ts):
        np.testing.assert_array_equal(t.grad.numpy(), np.where(mask == i, 2.0, 0.0))


def test_max_gradient_on_random_ties(tmp_path):
    net, _ = _build(tmp_path, 3, "operation: MAX")
    rng = np.random.default_rng(7)
    xs = [rng.integers(-2, 3, SHAPE).astype(np.float64) for _ in range(3)]  # many ties
    ts = [torch.tensor(x, requires_grad=True) for x in xs]
    g = rng.standard_normal(SHAPE)
    net.double()(x0=ts[0], x1=ts[1], x2=ts[2])["out"].backward(torch.tensor(g))
    _, mask = ref_max(xs)
    for i, t in enumerate(ts):
        np.testing.assert_array_equal(t.grad.numpy(), np.where(mask == i, g, 0.0))


@pytest.mark.parametrize(
    "param", ["operation: SUM coeff: 0.5 coeff: -2 coeff: 3", "operation: PROD", "operation: MAX"]
)
def test_gradcheck(tmp_path, param):
    net, _ = _build(tmp_path, 3, param, shapes=[(2, 3, 2)] * 3)
    net = net.double()
    rng = np.random.default_rng(8)
    # Distinct values spread apart, so MAX has no near-ties where its derivative jumps.
    base = rng.permutation(36).reshape(3, 2, 3, 2).astype(np.float64) / 4
    ts = [torch.tensor(b, requires_grad=True) for b in base]
    assert torch.autograd.gradcheck(lambda a, b, c: net(x0=a, x1=b, x2=c)["out"], tuple(ts))


def test_prod_gradient_is_the_product_of_the_others(tmp_path):
    # stable_prod_grad (default true): bottom_diff_i = top_diff * prod_{j != i} x_j, even where x_i = 0.
    net, _ = _build(tmp_path, 3, "operation: PROD stable_prod_grad: false", shapes=[(1, 2)] * 3)
    assert net.layer("elt").stable_prod_grad is False
    ts = [torch.tensor([[0.0, 2.0]], requires_grad=True), torch.tensor([[3.0, 0.5]], requires_grad=True),
          torch.tensor([[4.0, -1.0]], requires_grad=True)]
    net(x0=ts[0], x1=ts[1], x2=ts[2])["out"].sum().backward()
    assert [t.grad.tolist() for t in ts] == [[[12.0, -0.5]], [[0.0, -2.0]], [[0.0, 1.0]]]


@pytest.mark.parametrize("shape", [(1, 3, 4, 5), (7, 3, 2, 9)])
def test_any_batch_and_spatial_size(tmp_path, shape):
    net, _ = _build(tmp_path, 2, "coeff: 2 coeff: -1")
    assert net.blob_shapes["out"] == SHAPE
    xs = _inputs(2, shape=shape)
    np.testing.assert_allclose(_run(net, xs), 2.0 * xs[0] - xs[1], rtol=1e-6, atol=1e-6)


def test_coefficients_are_ignored_by_max(tmp_path):
    # Caffe only refuses coeff with PROD; MAX never reads them.
    net, _ = _build(tmp_path, 2, "operation: MAX coeff: 5 coeff: -5")
    xs = _inputs(2)
    np.testing.assert_array_equal(_run(net, xs), np.maximum(xs[0], xs[1]))


def test_no_blobs_and_save_load_round_trip(tmp_path):
    net, _ = _build(tmp_path, 3, "operation: SUM coeff: 0.5 coeff: 1 coeff: -3")
    assert net.params == {}
    net.save(tmp_path / "again.prototxt", tmp_path / "again.caffemodel")
    again = caffenorm.load(tmp_path / "again.prototxt", tmp_path / "again.caffemodel")
    feed = {f"x{i}": torch.tensor(x) for i, x in enumerate(_inputs(3, seed=9))}
    assert torch.equal(net(**feed)["out"], again(**feed)["out"])
    assert repr(again.layer("elt")) == "Eltwise(operation='SUM', coeff=[0.5, 1.0, -3.0], stable_prod_grad=True)"


# ---------------------------------------------------------------------------------------------
# Errors name the layer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "param", "error", "match"),
    [
        (3, "coeff: 1 coeff: 2", LayerConfigError, "has 2 coeff for 3 bottoms"),
        (2, "operation: PROD coeff: 1 coeff: 2", LayerConfigError, "coefficients for SUM only"),
        (1, "", NetDefinitionError, "has 1 bottom\\(s\\), Caffe's Eltwise takes at least 2"),
        (2, "coeff: nan coeff: 1", LayerConfigError, "coeff\\[0\\]=nan"),
    ],
)
def test_bad_settings(tmp_path, n, param, error, match):
    with pytest.raises(error, match=f"layer 'elt' \\(Eltwise\\): .*{match}"):
        _build(tmp_path, n, param)


def test_unequal_shapes_are_refused_with_the_shapes(tmp_path):
    with pytest.raises(InputShapeError, match=r"layer 'elt' \(Eltwise\): .*x0 \(2, 3, 4, 5\), x1 \(2, 3, 4, 4\)"):
        _build(tmp_path, 2, "", shapes=[SHAPE, (2, 3, 4, 4)])
    # No broadcasting either, even where torch would broadcast.
    with pytest.raises(InputShapeError, match=r"x0 \(2, 3, 4, 5\), x1 \(2, 1, 4, 5\)"):
        _build(tmp_path, 2, "operation: MAX", shapes=[SHAPE, (2, 1, 4, 5)])
    net, _ = _build(tmp_path, 2, "")
    with pytest.raises(InputShapeError, match=r"layer 'elt'.*\(1, 3, 4, 5\), \(2, 3, 4, 5\)"):
        net(x0=torch.zeros(1, 3, 4, 5), x1=torch.zeros(2, 3, 4, 5))


def test_two_tops_are_refused(tmp_path):
    text = _prototxt(2, "").replace('top: "out"', 'top: "out" top: "more"')
    (tmp_path / "net.prototxt").write_text(text)
    with pytest.raises(NetDefinitionError, match="layer 'elt' \\(Eltwise\\): has 2 tops"):
        caffenorm.load(tmp_path / "net.prototxt")


def test_module_arguments():
    assert Eltwise(2).operation == "MAX" and Eltwise("prod").operation == "PROD"
    with pytest.raises(LayerConfigError, match="operation='MIN'"):
        Eltwise("MIN")
    with pytest.raises(InputShapeError, match="at least 2"):
        Eltwise()(torch.zeros(3))
    with pytest.raises(InputShapeError, match="2 coefficients for 3 inputs"):
        Eltwise("SUM", [1, 2])(torch.zeros(3), torch.zeros(3), torch.zeros(3))
