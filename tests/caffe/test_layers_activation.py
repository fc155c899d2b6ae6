"""The activation converters: ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, Power, Dropout, Softmax, BNLL,
Exp, Log, Threshold, Clip, Swish.

Each layer is built from prototxt text and compared with a float64 numpy reference written from
the formula in BVLC ``src/caffe/layers/<name>_layer.cpp``, and with OpenCV dnn 4.x where OpenCV
computes the same thing.  OpenCV is not used where it differs from Caffe:

* Log: OpenCV ignores ``log_param`` (base, scale, shift) and computes ``ln(x)``;
* Swish: OpenCV ignores ``swish_param.beta`` and computes ``x * sigmoid(x)``;
* Threshold and Clip: OpenCV's Caffe importer has no such layers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from netutil import opencv_forward, write_model

import caffenorm
from caffenorm.caffe.layers.activation import Clip, Dropout, Power, PReLU, ReLU
from caffenorm.errors import BlobError, CaffeNormError, InputShapeError, LayerConfigError, NetDefinitionError

SHAPE = (2, 3, 4, 5)


def _prototxt(layer: str, shape=SHAPE) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return (
        'name: "act"\n'
        f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'
        f"{layer}\n"
    )


def _layer(kind: str, param: str = "", name: str = "act", top: str = "out") -> str:
    return f'layer {{ name: "{name}" type: "{kind}" bottom: "data" top: "{top}" {param} }}'


def _build(tmp_path, layer: str, weights=None, shape=SHAPE, **load_kw):
    """Load the one-layer net; without ``weights`` there is no caffemodel (fillers apply)."""
    if weights is None:
        proto, model = tmp_path / "net.prototxt", None
        proto.write_text(_prototxt(layer, shape))
    else:
        proto, model = write_model(tmp_path, _prototxt(layer, shape), weights)
    return caffenorm.load(proto, model, **load_kw), proto, model


def _forward(net, x: np.ndarray, dtype=torch.float32) -> np.ndarray:
    return net(torch.tensor(x, dtype=dtype))["out"].detach().double().numpy()


def _data(seed=0, shape=SHAPE, scale=2.0) -> np.ndarray:
    """Random values with exact zeros among them (where Caffe's subgradient rules apply)."""
    x = np.random.default_rng(seed).standard_normal(shape) * scale
    x.flat[::7] = 0.0
    return x.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# float64 references, from the formulas of the Caffe sources
# ---------------------------------------------------------------------------------------------


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def ref_relu(x, slope=0.0):
    return np.maximum(x, 0) + slope * np.minimum(x, 0)


def ref_prelu(x, w):
    w = np.asarray(w, dtype=np.float64)
    w = w.reshape((-1,) + (1,) * (x.ndim - 2)) if w.ndim else w
    return np.maximum(x, 0) + w * np.minimum(x, 0)


def ref_elu(x, alpha=1.0):
    return np.maximum(x, 0) + alpha * (np.exp(np.minimum(x, 0)) - 1)


def ref_power(x, power=1.0, scale=1.0, shift=0.0):
    return (shift + scale * x) ** power


def ref_softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def ref_bnll(x):
    return np.where(x > 0, x + np.log1p(np.exp(-np.abs(x))), np.log1p(np.exp(np.minimum(x, 0))))


def ref_exp(x, base=-1.0, scale=1.0, shift=0.0):
    b = np.e if base == -1 else base
    return b ** (shift + scale * x)


def ref_log(x, base=-1.0, scale=1.0, shift=0.0):
    return np.log(shift + scale * x) / (1.0 if base == -1 else np.log(base))


def ref_clip(x, lo, hi):
    """``std::max(lo, std::min(x, hi))`` with the std:: rules: ``min(a, b) = b < a ? b : a``,
    ``max(a, b) = a < b ? b : a`` (so a NaN ``x`` gives ``lo``)."""
    out = np.empty_like(x, dtype=np.float64)
    for i, v in enumerate(x.flat):
        m = hi if hi < v else v
        out.flat[i] = m if lo < m else lo
    return out


def f32(v):
    return float(np.float32(v))


# (id, type, param text, reference on float64 input, input generator, OpenCV agrees)
CASES = [
    ("relu", "ReLU", "", ref_relu, _data, True),
    ("leaky_relu", "ReLU", "relu_param { negative_slope: 0.1 }", lambda x: ref_relu(x, f32(0.1)), _data, True),
    ("elu", "ELU", "", ref_elu, _data, True),
    ("elu_alpha", "ELU", "elu_param { alpha: 0.3 }", lambda x: ref_elu(x, f32(0.3)), _data, True),
    ("sigmoid", "Sigmoid", "", _sigmoid, _data, True),
    ("tanh", "TanH", "", np.tanh, _data, True),
    ("absval", "AbsVal", "", np.abs, _data, True),
    ("power_square", "Power", "power_param { power: 2 scale: 0.5 shift: 1 }",
     lambda x: ref_power(x, 2, 0.5, 1), _data, True),
    ("power_sqrt", "Power", "power_param { power: 0.5 scale: 3 shift: 0.25 }",
     lambda x: ref_power(x, 0.5, 3, 0.25), lambda: np.abs(_data()), True),
    ("power_affine", "Power", "power_param { scale: -2 shift: 0.5 }", lambda x: -2 * x + 0.5, _data, True),
    ("softmax", "Softmax", "", ref_softmax, _data, True),
    ("softmax_axis", "Softmax", "softmax_param { axis: -1 }", lambda x: ref_softmax(x, -1), _data, True),
    ("softmax_axis0", "Softmax", "softmax_param { axis: 0 }", lambda x: ref_softmax(x, 0), _data, True),
    ("bnll", "BNLL", "", ref_bnll, lambda: _data(scale=8.0), True),
    ("exp", "Exp", "", np.exp, _data, True),
    ("exp_base2", "Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }",
     lambda x: ref_exp(x, 2, 0.5, 1), _data, True),
    ("exp_e_shift", "Exp", "exp_param { scale: -0.5 shift: 0.7 }",
     lambda x: ref_exp(x, -1, -0.5, f32(0.7)), _data, True),
    ("log", "Log", "", np.log, lambda: np.abs(_data()) + 0.1, True),
    # OpenCV ignores log_param: reference only.
    ("log_base10", "Log", "log_param { base: 10 scale: 2 shift: 0.5 }",
     lambda x: ref_log(x, 10, 2, 0.5), lambda: np.abs(_data()), False),
    ("threshold", "Threshold", "threshold_param { threshold: 0.5 }",
     lambda x: (x > 0.5).astype(np.float64), _data, False),
    ("clip", "Clip", "clip_param { min: -0.5 max: 1.5 }", lambda x: ref_clip(x, -0.5, 1.5), _data, False),
    ("swish", "Swish", "", lambda x: x * _sigmoid(x), _data, True),
    # OpenCV ignores swish_param.beta: reference only.
    ("swish_beta", "Swish", "swish_param { beta: 1.5 }", lambda x: x * _sigmoid(1.5 * x), _data, False),
]


@pytest.mark.parametrize(("kind", "param", "ref", "make"), [c[1:5] for c in CASES], ids=[c[0] for c in CASES])
def test_forward_matches_the_caffe_formula(tmp_path, kind, param, ref, make):
    net, _, _ = _build(tmp_path, _layer(kind, param))
    x = make()
    expected = ref(x.astype(np.float64))
    np.testing.assert_allclose(_forward(net, x), expected, rtol=2e-6, atol=2e-7)
    # float64 through the same net: the formula itself, not float32 luck.  Exp and Log hold the
    # constants they derive (log(base), base ** shift) in float32, as Caffe's float build does.
    rtol = 1e-7 if kind in ("Exp", "Log") else 1e-12
    np.testing.assert_allclose(_forward(net.double(), x, torch.float64), expected, rtol=rtol, atol=1e-14)


@pytest.mark.parametrize(("kind", "param", "make"), [(c[1], c[2], c[4]) for c in CASES if c[5]],
                         ids=[c[0] for c in CASES if c[5]])
def test_forward_matches_opencv(tmp_path, kind, param, make):
    pytest.importorskip("cv2")
    net, proto, model = _build(tmp_path, _layer(kind, param))
    x = make()
    theirs = opencv_forward(proto, model, {"data": x}, ["act"])["act"]
    np.testing.assert_allclose(_forward(net, x), theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("declared", "shape"), [(SHAPE, (1, 3, 1, 1)), (SHAPE, (5, 3, 7, 2)), ((2, 3), (4, 3)), ((2, 3, 5), (1, 3, 2))]
)
@pytest.mark.parametrize("kind", ["ReLU", "ELU", "Sigmoid", "Softmax", "PReLU", "Swish", "Power", "Clip"])
def test_any_batch_and_spatial_size(tmp_path, kind, declared, shape):
    param = "clip_param { min: -1 max: 1 }" if kind == "Clip" else ""
    net, _, _ = _build(tmp_path, _layer(kind, param), shape=declared)
    assert net.blob_shapes["out"] == declared  # inferred at load on the meta device
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    assert _forward(net, x).shape == shape


# ---------------------------------------------------------------------------------------------
# ReLU
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_relu_gradient_at_zero_is_the_negative_slope(tmp_path, slope):
    # relu_layer.cpp Backward: top_diff * ((x > 0) + negative_slope * (x <= 0)).
    net, _, _ = _build(tmp_path, _layer("ReLU", f"relu_param {{ negative_slope: {slope} }}"), shape=(1, 4))
    x = torch.tensor([[-1.0, 0.0, 2.0, -0.0]], requires_grad=True)
    net(x)["out"].sum().backward()
    s = f32(slope)
    assert x.grad.tolist() == [[s, s, 1.0, s]]


def test_relu_gives_caffes_zero_and_nan(tmp_path):
    # max(x, 0) + 0 * min(x, 0): zero for negatives; NaN for -inf and NaN.  (Caffe's zero is +0.0,
    # caffenorm's may be -0.0: equal as numbers, and not worth an extra pass on every ReLU.)
    net, _, _ = _build(tmp_path, _layer("ReLU"), shape=(1, 5))
    y = net(torch.tensor([[-3.0, -np.inf, np.nan, np.inf, 2.0]]))["out"]
    assert y[0, 0].item() == 0.0
    assert torch.isnan(y[0, 1]) and torch.isnan(y[0, 2])
    assert y[0, 3].item() == np.inf and y[0, 4].item() == 2.0


def test_in_place_relu_rebinds_the_blob(tmp_path):
    net, _, _ = _build(tmp_path, _layer("ReLU", top="data"))
    x = torch.tensor(_data())
    out = net(x)
    assert list(out) == ["data"] and torch.equal(out["data"], torch.relu(x))
    assert torch.equal(x, torch.tensor(_data()))  # the input itself is untouched


# ---------------------------------------------------------------------------------------------
# PReLU
# ---------------------------------------------------------------------------------------------


def test_prelu_blob_shapes_and_default_filler(tmp_path):
    net, _, _ = _build(tmp_path, _layer("PReLU"))
    (w,) = net.params["act"]
    assert tuple(w.shape) == (3,) and torch.all(w == 0.25)  # Caffe's default: constant 0.25
    net, _, _ = _build(tmp_path, _layer("PReLU", "prelu_param { channel_shared: true }"))
    (w,) = net.params["act"]
    assert tuple(w.shape) == () and w.item() == 0.25  # vector<int>(0): a scalar blob
    net, _, _ = _build(tmp_path, _layer("PReLU", 'prelu_param { filler { type: "constant" value: 0.5 } }'))
    assert torch.all(net.params["act"][0] == 0.5)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("shape", [SHAPE, (2, 3)])
def test_prelu_matches_reference_and_opencv(tmp_path, shared, shape):
    w = np.random.default_rng(1).uniform(-0.5, 0.8, () if shared else (3,)).astype(np.float32)
    param = f"prelu_param {{ channel_shared: {str(shared).lower()} }}"
    net, proto, model = _build(tmp_path, _layer("PReLU", param), {"act": [w]}, shape=shape)
    assert net.params["act"][0].shape == w.shape
    x = _data(shape=shape)
    np.testing.assert_allclose(_forward(net, x), ref_prelu(x.astype(np.float64), w), rtol=2e-6, atol=1e-7)
    pytest.importorskip("cv2")
    if shared:
        return  # OpenCV cannot create the 0-axis Mat of Caffe's shared slope blob (CV_MAX_DIM assertion)
    theirs = opencv_forward(proto, model, {"data": x}, ["act"])["act"]
    np.testing.assert_allclose(_forward(net, x), theirs, rtol=1e-5, atol=1e-6)


def test_prelu_zero_slope_gives_caffes_positive_zero(tmp_path):
    # max(x, 0) + 0 * min(x, 0) is +0.0 for a negative x; -inf gives NaN (0 * -inf).
    net, _, _ = _build(tmp_path, _layer("PReLU"), {"act": [np.array([0.0, 0.5])]}, shape=(1, 2, 3))
    y = net(torch.tensor([[[-1.0, -2.0, -np.inf], [-1.0, 3.0, -np.inf]]]))["out"]
    assert y[0, 0, :2].tolist() == [0.0, 0.0] and not torch.signbit(y[0, 0, :2]).any()
    assert torch.isnan(y[0, 0, 2]) and y[0, 1].tolist() == [-0.5, 3.0, -np.inf]


def test_prelu_legacy_4d_blob_loads(tmp_path):
    w = np.array([0.1, 0.2, 0.3], dtype=np.float32)
    net, _, _ = _build(tmp_path, _layer("PReLU"), {"act": [w.reshape(1, 1, 1, 3)]})
    assert torch.equal(net.params["act"][0], torch.tensor(w))


def test_prelu_slope_gradient_is_caffes(tmp_path):
    # prelu_layer.cpp: slope_diff[c] = sum of top_diff * x * (x <= 0) over everything in channel c.
    rng = np.random.default_rng(2)
    w = rng.uniform(0.1, 0.5, 3).astype(np.float32)
    net, _, _ = _build(tmp_path, _layer("PReLU"), {"act": [w]})
    x = _data(seed=4)
    g = rng.standard_normal(SHAPE).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    net(xt)["out"].backward(torch.tensor(g))
    expected = (g * x * (x <= 0)).astype(np.float64).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(net.params["act"][0].grad.numpy(), expected, rtol=1e-5, atol=1e-5)
    x_expected = g * np.where(x > 0, 1.0, w.reshape(3, 1, 1))
    np.testing.assert_allclose(xt.grad.numpy(), x_expected, rtol=1e-6, atol=1e-7)


def test_prelu_errors(tmp_path):
    with pytest.raises(InputShapeError, match="'act'.*at least 2 axes"):
        _build(tmp_path, _layer("PReLU"), shape=(6,))
    with pytest.raises(BlobError, match="'act'.*shape \\(4,\\), expected \\(3,\\)"):
        _build(tmp_path, _layer("PReLU"), {"act": [np.zeros(4)]})
    with pytest.raises(BlobError, match="shape \\(3,\\), expected \\(\\)"):
        _build(tmp_path, _layer("PReLU", "prelu_param { channel_shared: true }"), {"act": [np.zeros(3)]})
    net, _, _ = _build(tmp_path, _layer("PReLU"))
    with pytest.raises(InputShapeError, match="'act'.*5 channels"):
        net(torch.zeros(2, 5, 4, 5))
    with pytest.raises(LayerConfigError, match="channels=0"):
        PReLU(0)


# ---------------------------------------------------------------------------------------------
# ELU, Sigmoid, AbsVal, Swish, BNLL: gradients
# ---------------------------------------------------------------------------------------------


def test_elu_gradient_at_zero_is_alpha(tmp_path):
    # elu_layer.cpp Backward: x <= 0 takes (top + alpha), which is alpha at x = 0.
    net, _, _ = _build(tmp_path, _layer("ELU", "elu_param { alpha: 0.5 }"), shape=(1, 3))
    x = torch.tensor([[0.0, 100.0, -200.0]], requires_grad=True)
    y = net(x)["out"]
    y.sum().backward()
    assert x.grad.tolist() == [[0.5, 1.0, 0.0]]  # no NaN from exp overflow in the unused branch
    assert y.tolist() == [[0.0, 100.0, -0.5]]


def test_absval_gradient_is_sign(tmp_path):
    net, _, _ = _build(tmp_path, _layer("AbsVal"), shape=(1, 3))
    x = torch.tensor([[-2.0, 0.0, 3.0]], requires_grad=True)
    net(x)["out"].sum().backward()
    assert x.grad.tolist() == [[-1.0, 0.0, 1.0]]  # caffe_cpu_sign: 0 at 0


def test_bnll_is_stable_and_its_gradient_is_sigmoid(tmp_path):
    net, _, _ = _build(tmp_path, _layer("BNLL"), shape=(1, 5))
    x = torch.tensor([[-200.0, -5.0, 0.0, 5.0, 200.0]], requires_grad=True)
    y = net(x)["out"]
    assert torch.isfinite(y).all() and y[0, 4].item() == 200.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), _sigmoid(x.detach().double().numpy()), rtol=1e-6, atol=1e-30)


GRAD_CASES = [
    ("ReLU", "relu_param { negative_slope: 0.1 }"),
    ("ELU", "elu_param { alpha: 0.7 }"),
    ("Sigmoid", ""),
    ("TanH", ""),
    ("AbsVal", ""),
    ("Power", "power_param { power: 3 scale: 0.5 shift: 0.2 }"),
    ("Softmax", "softmax_param { axis: 2 }"),
    ("BNLL", ""),
    ("Exp", "exp_param { base: 3 scale: 0.5 shift: 0.1 }"),
    ("Log", "log_param { base: 2 scale: 0.5 shift: 4 }"),
    ("Clip", "clip_param { min: -0.4 max: 0.6 }"),
    ("Swish", "swish_param { beta: 1.3 }"),
    ("PReLU", ""),
]


@pytest.mark.parametrize(("kind", "param"), GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_gradcheck(tmp_path, kind, param):
    weights = {"act": [np.array([0.1, -0.2, 0.3])]} if kind == "PReLU" else None
    net, _, _ = _build(tmp_path, _layer(kind, param), weights, shape=(2, 3, 2, 2))
    net = net.double()
    # Away from the kinks (0, the Clip bounds), where the derivative is defined.
    x = torch.tensor(np.random.default_rng(5).uniform(0.05, 1.0, (2, 3, 2, 2)), dtype=torch.float64)
    x = x * torch.tensor([1.0, -1.0]).repeat(12).view(2, 3, 2, 2).double()
    x.requires_grad_(True)
    params = [p for p in net.parameters()]
    assert torch.autograd.gradcheck(lambda t, *ps: net(t)["out"], (x, *params))


def test_clip_gradient_passes_at_the_bounds(tmp_path):
    # clip_layer.cpp Backward: top_diff * (x >= min && x <= max).
    net, _, _ = _build(tmp_path, _layer("Clip", "clip_param { min: -1 max: 1 }"), shape=(1, 5))
    x = torch.tensor([[-2.0, -1.0, 0.0, 1.0, 2.0]], requires_grad=True)
    net(x)["out"].sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0]]


def test_clip_nan_and_inverted_bounds_follow_std_min_max(tmp_path):
    net, _, _ = _build(tmp_path, _layer("Clip", "clip_param { min: -1 max: 1 }"), shape=(1, 3))
    y = net(torch.tensor([[np.nan, -np.inf, np.inf]]))["out"]
    assert y.tolist() == [[-1.0, -1.0, 1.0]]  # std::max(min, NaN) is min
    # min > max: std::max(min, std::min(x, max)) is min everywhere (torch.clamp would give max).
    net, _, _ = _build(tmp_path, _layer("Clip", "clip_param { min: 2 max: 1 }"), shape=(1, 3))
    assert net(torch.tensor([[0.0, 1.5, 5.0]]))["out"].tolist() == [[2.0, 2.0, 2.0]]
    x = np.array([np.nan, -3.0, 1.0, 2.0, 7.0])
    assert np.array_equal(Clip(-1, 1)(torch.tensor(x)).numpy(), ref_clip(x, -1, 1), equal_nan=True)


def test_one_sided_clip(tmp_path):
    net, _, _ = _build(tmp_path, _layer("Clip", "clip_param { min: 0 max: inf }"), shape=(1, 3))
    x = torch.tensor([[-1.0, 2.0, 1e30]])
    assert net(x)["out"].tolist() == [[0.0, 2.0, x[0, 2].item()]]


def test_threshold_is_a_step_without_gradient(tmp_path):
    net, _, _ = _build(tmp_path, _layer("Threshold", "threshold_param { threshold: 1 }"), shape=(1, 4))
    x = torch.tensor([[1.0, 1.5, np.nan, -2.0]], requires_grad=True)
    y = net(x)["out"]
    assert y.tolist() == [[0.0, 1.0, 0.0, 0.0]] and not y.requires_grad  # Caffe: NOT_IMPLEMENTED


# ---------------------------------------------------------------------------------------------
# Power, Exp, Log
# ---------------------------------------------------------------------------------------------


def test_power_zero_power_is_one_regardless_of_input(tmp_path):
    # power_layer.cpp: power * scale == 0 ignores the input: 1 for power 0 (even for NaN/inf).
    net, proto, model = _build(tmp_path, _layer("Power", "power_param { power: 0 scale: 2 shift: -1 }"), shape=(1, 4))
    x = torch.tensor([[0.5, np.nan, np.inf, -3.0]], requires_grad=True)
    y = net(x)["out"]
    assert y.tolist() == [[1.0, 1.0, 1.0, 1.0]]
    y.sum().backward()
    assert x.grad.tolist() == [[0.0] * 4]  # Caffe sets the bottom diff to 0


def test_power_zero_scale_is_shift_to_the_power(tmp_path):
    net, _, _ = _build(tmp_path, _layer("Power", "power_param { power: 2 scale: 0 shift: 3 }"), shape=(1, 3))
    assert net(torch.tensor([[np.nan, -np.inf, 1.0]]))["out"].tolist() == [[9.0, 9.0, 9.0]]
    net, _, _ = _build(tmp_path, _layer("Power", "power_param { power: 0.5 scale: 0 shift: -4 }"), shape=(1, 2))
    assert torch.isnan(net(torch.zeros(1, 2))["out"]).all()  # pow(-4, 0.5) is NaN in Caffe too
    assert Power(1, 0, 0).extra_repr() == "power=1.0, scale=0.0, shift=0.0"


def test_default_power_is_the_identity(tmp_path):
    net, _, _ = _build(tmp_path, _layer("Power"))
    x = torch.tensor(_data())
    assert torch.equal(net(x)["out"], x)


def test_exp_and_log_invert_each_other(tmp_path):
    layers = (
        'layer { name: "e" type: "Exp" bottom: "data" top: "e" exp_param { base: 2 scale: 3 shift: 1 } }\n'
        'layer { name: "act" type: "Log" bottom: "e" top: "out" log_param { base: 2 scale: 1 shift: 0 } }'
    )
    net, _, _ = _build(tmp_path, layers)
    x = _data(scale=1.0)
    np.testing.assert_allclose(_forward(net, x), 1 + 3 * x.astype(np.float64), rtol=1e-5, atol=2e-6)


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------


def test_dropout_is_the_identity_in_test_phase(tmp_path):
    net, _, _ = _build(tmp_path, _layer("Dropout", "dropout_param { dropout_ratio: 0.3 }"))
    assert not net.training and not net.layer("act").training
    x = torch.tensor(_data())
    assert torch.equal(net(x)["out"], x)


def test_dropout_in_training_keeps_and_scales(tmp_path):
    ratio = 0.3
    net, _, _ = _build(tmp_path, _layer("Dropout", f"dropout_param {{ dropout_ratio: {ratio} }}"),
                       shape=(8, 16, 16, 16), phase="train")
    assert net.layer("act").training
    torch.manual_seed(0)
    x = torch.rand(8, 16, 16, 16) + 1.0  # no zeros, so a zero output means dropped
    y = net(x)["out"]
    kept = y != 0
    scale = np.float32(1.0) / (np.float32(1.0) - np.float32(ratio))
    assert torch.equal(y[kept], x[kept] * torch.tensor(scale))  # Caffe: x * mask * (1 / (1 - ratio))
    assert abs(1 - kept.float().mean().item() - ratio) < 0.01
    net.eval()
    assert torch.equal(net(x)["out"], x)
    net.train()
    assert not torch.equal(net(x)["out"], x)


def test_dropout_gradient_uses_the_same_mask(tmp_path):
    net, _, _ = _build(tmp_path, _layer("Dropout"), shape=(4, 50), phase="train")
    x = torch.ones(4, 50, requires_grad=True)
    y = net(x)["out"]
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # both are mask * 2 for ratio 0.5


def test_dropout_ratio_zero_trains_as_identity():
    layer = Dropout(0.0).train()
    x = torch.randn(3, 4)
    assert torch.equal(layer(x), x)


# ---------------------------------------------------------------------------------------------
# Softmax
# ---------------------------------------------------------------------------------------------


def test_softmax_subtracts_the_max(tmp_path):
    net, _, _ = _build(tmp_path, _layer("Softmax"), shape=(1, 3))
    y = net(torch.tensor([[1000.0, 1001.0, -1000.0]]))["out"]
    np.testing.assert_allclose(y.numpy(), ref_softmax(np.array([[0.0, 1.0, -2000.0]])), rtol=1e-6)


def test_softmax_axis_out_of_range(tmp_path):
    with pytest.raises(InputShapeError, match="'act'.*axis=4 is out of range for a 4-D input"):
        _build(tmp_path, _layer("Softmax", "softmax_param { axis: 4 }"))
    with pytest.raises(InputShapeError, match="'act'.*axis=-5"):
        _build(tmp_path, _layer("Softmax", "softmax_param { axis: -5 }"))


# ---------------------------------------------------------------------------------------------
# Errors, round trip
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "param", "error", "match"),
    [
        ("ReLU", "relu_param { negative_slope: nan }", LayerConfigError, "negative_slope=nan"),
        ("ELU", "elu_param { alpha: inf }", LayerConfigError, "alpha=inf"),
        ("Power", "power_param { scale: nan }", LayerConfigError, "scale=nan"),
        ("Dropout", "dropout_param { dropout_ratio: 1 }", LayerConfigError, "dropout_ratio=1.0 .*\\[0, 1\\)"),
        ("Dropout", "dropout_param { dropout_ratio: -0.1 }", LayerConfigError, "dropout_ratio"),
        ("Exp", "exp_param { base: -2 }", LayerConfigError, "base=-2.0 .*> 0, or -1"),
        ("Exp", "exp_param { base: 0 }", LayerConfigError, "base=0.0"),
        ("Log", "log_param { base: 1 }", LayerConfigError, "base=1 "),
        ("Log", "log_param { base: -0.5 }", LayerConfigError, "base=-0.5"),
        ("Clip", "clip_param { min: 0 }", LayerConfigError, "needs max"),
        ("Clip", "", LayerConfigError, "needs min and max"),
        ("Clip", "clip_param { min: nan max: 1 }", LayerConfigError, "min=nan"),
        ("Threshold", "threshold_param { threshold: nan }", LayerConfigError, "threshold=nan"),
        ("Swish", "swish_param { beta: nan }", LayerConfigError, "beta=nan"),
    ],
)
def test_bad_settings_name_the_layer(tmp_path, kind, param, error, match):
    with pytest.raises(error, match=f"layer 'act' \\({kind}\\): .*{match}"):
        _build(tmp_path, _layer(kind, param))


def test_wrong_number_of_bottoms_or_tops(tmp_path):
    two_bottoms = 'layer { name: "act" type: "ReLU" bottom: "data" bottom: "data" top: "out" }'
    with pytest.raises(NetDefinitionError, match="layer 'act' \\(ReLU\\): has 2 bottoms"):
        _build(tmp_path, two_bottoms)
    two_tops = 'layer { name: "act" type: "Sigmoid" bottom: "data" top: "a" top: "b" }'
    with pytest.raises(NetDefinitionError, match="layer 'act' \\(Sigmoid\\): has 2 tops"):
        _build(tmp_path, two_tops)


def test_modules_reject_bad_arguments_directly():
    with pytest.raises(LayerConfigError, match="ReLU: negative_slope"):
        ReLU(float("inf"))
    with pytest.raises(CaffeNormError):
        Dropout(1.5)


CHAIN = "\n".join(
    [
        'layer { name: "p" type: "PReLU" bottom: "data" top: "p" }',
        'layer { name: "r" type: "ReLU" bottom: "p" top: "p" relu_param { negative_slope: 0.05 } }',
        'layer { name: "w" type: "Power" bottom: "p" top: "w" power_param { power: 2 scale: 0.3 shift: 1 } }',
        'layer { name: "d" type: "Dropout" bottom: "w" top: "w" }',
        'layer { name: "act" type: "Softmax" bottom: "w" top: "out" }',
    ]
)


def test_save_and_load_round_trip(tmp_path):
    w = np.random.default_rng(6).uniform(0, 0.5, 3).astype(np.float32)
    net, _, _ = _build(tmp_path, CHAIN, {"p": [w]})
    net.save(tmp_path / "again.prototxt", tmp_path / "again.caffemodel")
    again = caffenorm.load(tmp_path / "again.prototxt", tmp_path / "again.caffemodel")
    x = torch.tensor(_data())
    assert torch.equal(net(x)["out"], again(x)["out"])
    assert torch.equal(again.params["p"][0], torch.tensor(w))
    assert "negative_slope=0.05" in repr(again.layer("r"))
