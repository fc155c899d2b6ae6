"""Caffe Scale and Bias (BVLC scale_layer.cpp, bias_layer.cpp) as reproduced by caffenorm.

Each test pins one Caffe behaviour (shared/reference/semantics.md §2.2, §2.5) against the float64
numpy oracle ``tests/reference/caffe_ref.py``: the axis / num_axes broadcasting rules, the
two-bottom forms, the blob layout and the errors for configurations Caffe rejects.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

import caffenorm.functional as CF
from caffenorm import Bias, BlobError, CaffeNormError, InputShapeError, LayerConfigError, Scale
from reference import caffe_ref as ref

TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-10, 1e-10)}
DTYPES = [torch.float32, torch.float64]

# (input shape, axis, num_axes, blob shape): the spans Caffe's Scale/Bias support.
SPANS = [
    pytest.param((4, 3), 1, 1, (3,), id="2d-per-channel"),
    pytest.param((2, 3, 4, 5), 1, 1, (3,), id="4d-per-channel"),
    pytest.param((2, 3, 2, 2, 3), 1, 1, (3,), id="5d-per-channel"),
    pytest.param((2, 3, 4), 2, 1, (4,), id="3d-axis2"),
    pytest.param((2, 3, 4), 1, 0, (), id="num_axes0-scalar"),
    pytest.param((2, 3, 4, 5), 1, 2, (3, 4), id="num_axes2-from-axis1"),
    pytest.param((2, 3, 4, 5), 2, -1, (4, 5), id="num_axes-1-from-axis2"),
    pytest.param((2, 3, 2, 3, 2), 2, -1, (2, 3, 2), id="5d-num_axes-1-from-axis2"),
    pytest.param((2, 3, 4, 5), -2, 2, (4, 5), id="negative-axis"),
    pytest.param((2, 3, 4), -1, 1, (4,), id="axis-minus1"),
    pytest.param((2, 3, 4), 0, 2, (2, 3), id="axis0-two-axes"),
    pytest.param((2, 3, 2, 2), 1, -1, (3, 2, 2), id="num_axes-1-from-axis1"),
]


def _data(shape, seed, loc=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(loc, scale, size=shape)


def _np(t):
    """A float64 numpy *copy* (``.double().numpy()`` alone would alias a float64 tensor)."""
    return t.detach().cpu().double().numpy().copy()


def _close(actual, expected, dtype):
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(_np(actual), expected, rtol=rtol, atol=atol)


def _oracle_axis(axis, blob_shape):
    # The oracle takes the start axis; a 0-d blob ignores it, as Caffe's Reshape sets axis_ = 0.
    return 0 if blob_shape == () else axis


# --------------------------------------------------------------------------- defaults and blobs


def test_scale_defaults_are_caffe_fillers():
    """No filler: gamma = 1, beta = 0 (Caffe's defaults without a filler message)."""
    layer = Scale((3, 4), num_axes=2, bias_term=True)
    assert torch.equal(layer.weight, torch.ones(3, 4))
    assert torch.equal(layer.bias, torch.zeros(3, 4))
    x = torch.tensor(_data((2, 3, 4), seed=0))
    torch.testing.assert_close(layer(x.float()), x.float())


def test_bias_default_is_zero():
    layer = Bias(3)
    assert torch.equal(layer.bias, torch.zeros(3))


@pytest.mark.parametrize(
    ("make", "names"),
    [
        (lambda: Scale(3), ["weight"]),
        (lambda: Scale(3, bias_term=True), ["weight", "bias"]),
        (lambda: Scale((), num_axes=0, bias_term=True), ["weight", "bias"]),
        (lambda: Scale((2, 3), axis=0, scale_from_input=True, bias_term=True), ["bias"]),
        (lambda: Scale(None, scale_from_input=True), []),
        (lambda: Bias(3), ["bias"]),
        (lambda: Bias(None, bias_from_input=True), []),
    ],
    ids=["scale", "scale+bias", "scalar+bias", "two-input+bias", "two-input", "bias", "two-input-bias"],
)
def test_caffe_blobs_order_and_identity(make, names):
    """Blob order [gamma, beta] / [gamma] / [beta] (two-bottom + bias_term) / []; they ARE the parameters."""
    layer = make()
    blobs = layer.caffe_blobs()
    assert len(blobs) == len(names)
    for blob, name in zip(blobs, names):
        assert blob is getattr(layer, name)
        assert isinstance(blob, torch.nn.Parameter)
    assert [id(p) for p in layer.parameters()] == [id(b) for b in blobs]


def test_scalar_blob_has_shape_empty_tuple():
    """num_axes 0: Caffe's scalar blob has shape (), not (1,)."""
    layer = Scale((), num_axes=0, bias_term=True)
    assert [tuple(b.shape) for b in layer.caffe_blobs()] == [(), ()]
    assert tuple(Bias((), num_axes=0).bias.shape) == ()


def test_load_caffe_blobs_copies_into_the_parameters():
    layer = Scale(3, bias_term=True)
    weight, bias = layer.weight, layer.bias
    layer.load_caffe_blobs([np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.0, -0.5]).reshape(1, 1, 1, 3)])
    assert layer.weight is weight and layer.bias is bias
    torch.testing.assert_close(layer.weight.detach(), torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(layer.bias.detach(), torch.tensor([0.5, 0.0, -0.5]))
    y = layer(torch.ones(1, 3, 2))
    torch.testing.assert_close(y, torch.tensor([1.5, 2.0, 2.5])[None, :, None].expand(1, 3, 2))


@pytest.mark.parametrize(
    ("make", "blobs", "pattern"),
    [
        (lambda: Scale(3, bias_term=True), [np.ones(3)], r"got 1 blobs, expected 2"),
        (lambda: Scale(3), [np.ones(4)], r"blob 0 \(weight\) has shape \(4,\)"),
        (lambda: Scale(3, bias_term=True), [np.ones(3), np.ones(2)], r"blob 1 \(bias\) has shape \(2,\)"),
        (lambda: Scale((2, 3), axis=0, scale_from_input=True, bias_term=True), [np.ones((2, 3))] * 2,
         r"got 2 blobs, expected 1"),
        (lambda: Bias(3), [np.ones(3), np.ones(3)], r"got 2 blobs, expected 1"),
        (lambda: Bias((3, 4), num_axes=2), [np.ones((4, 3))], r"blob 0 \(bias\) has shape \(4, 3\)"),
    ],
    ids=["scale-count", "scale-weight-shape", "scale-bias-shape", "two-input-count", "bias-count", "bias-shape"],
)
def test_bad_blobs_rejected_and_layer_unchanged(make, blobs, pattern):
    layer = make()
    before = [b.detach().clone() for b in layer.caffe_blobs()]
    with pytest.raises(BlobError, match=pattern):
        layer.load_caffe_blobs([np.asarray(b) * 7.0 for b in blobs])
    for got, want in zip(layer.caffe_blobs(), before):
        assert torch.equal(got, want)


# --------------------------------------------------------------------------- Scale vs oracle


def _scale_layer(x_shape, axis, num_axes, blob_shape, bias_term, dtype, seed):
    layer = Scale(blob_shape, axis=axis, num_axes=num_axes, bias_term=bias_term, dtype=dtype)
    blobs = [_data(blob_shape, seed, loc=1.0)]
    if bias_term:
        blobs.append(_data(blob_shape, seed + 1))
    layer.load_caffe_blobs(blobs)
    return layer


@pytest.mark.parametrize(("x_shape", "axis", "num_axes", "blob_shape"), SPANS)
@pytest.mark.parametrize("bias_term", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scale_forward_backward_matches_oracle(x_shape, axis, num_axes, blob_shape, bias_term, dtype):
    """y = x*gamma (+beta) broadcast over x.shape[axis:axis+num_axes]; dx = g*gamma,
    dgamma = sum g*x, dbeta = sum g over the outer and inner axes."""
    layer = _scale_layer(x_shape, axis, num_axes, blob_shape, bias_term, dtype, seed=1)
    x = torch.tensor(_data(x_shape, seed=3), dtype=dtype, requires_grad=True)
    g = torch.tensor(_data(x_shape, seed=4), dtype=dtype)
    y = layer(x)
    ax = _oracle_axis(axis, blob_shape)
    gamma = _np(layer.weight)
    beta = _np(layer.bias) if bias_term else None
    assert y.dtype == dtype and y.shape == x.shape
    _close(y, ref.scale(_np(x), gamma, axis=ax, bias=beta), dtype)

    y.backward(g)
    dx, dgamma, dbeta = ref.scale_backward(_np(x), gamma, _np(g), axis=ax, has_bias=bias_term)
    _close(x.grad, dx, dtype)
    assert layer.weight.grad.shape == layer.weight.shape
    _close(layer.weight.grad, dgamma, dtype)
    if bias_term:
        _close(layer.bias.grad, dbeta, dtype)


@pytest.mark.parametrize(("x_shape", "axis", "num_axes", "blob_shape"), SPANS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bias_forward_backward_matches_oracle(x_shape, axis, num_axes, blob_shape, dtype):
    """y = x + beta broadcast like Scale; dx = g, dbeta = sum g over outer and inner axes."""
    layer = Bias(blob_shape, axis=axis, num_axes=num_axes, dtype=dtype)
    layer.load_caffe_blobs([_data(blob_shape, seed=5)])
    x = torch.tensor(_data(x_shape, seed=6), dtype=dtype, requires_grad=True)
    g = torch.tensor(_data(x_shape, seed=7), dtype=dtype)
    y = layer(x)
    ax = _oracle_axis(axis, blob_shape)
    beta = _np(layer.bias)
    _close(y, ref.bias(_np(x), beta, axis=ax), dtype)
    y.backward(g)
    dx, dbeta = ref.bias_backward(_np(x), beta, _np(g), axis=ax)
    _close(x.grad, dx, dtype)
    _close(layer.bias.grad, dbeta, dtype)


@pytest.mark.parametrize(("x_shape", "axis", "num_axes", "blob_shape"), SPANS[:6])
def test_functional_scale_and_bias_match_oracle(x_shape, axis, num_axes, blob_shape):
    """The functionals take num_axes from the blob's rank."""
    x = torch.tensor(_data(x_shape, seed=8), dtype=torch.float64)
    w = torch.tensor(_data(blob_shape, seed=9), dtype=torch.float64)
    b = torch.tensor(_data(blob_shape, seed=10), dtype=torch.float64)
    ax = _oracle_axis(axis, blob_shape)
    _close(CF.scale(x, w, axis=axis), ref.scale(_np(x), _np(w), axis=ax), torch.float64)
    _close(CF.scale(x, w, b, axis=axis), ref.scale(_np(x), _np(w), axis=ax, bias=_np(b)), torch.float64)
    _close(CF.bias(x, b, axis=axis), ref.bias(_np(x), _np(b), axis=ax), torch.float64)


def test_learned_gradients_accumulate():
    """Caffe accumulates (+=) into a learned blob's diff; torch's .grad accumulates likewise."""
    layer = Scale(3, bias_term=True, dtype=torch.float64)
    x = torch.tensor(_data((2, 3, 4), seed=11))
    g = torch.tensor(_data((2, 3, 4), seed=12))
    _, dgamma, dbeta = ref.scale_backward(_np(x), np.ones(3), _np(g), axis=1, has_bias=True)
    for _ in range(2):
        layer(x).backward(g)
    _close(layer.weight.grad, 2 * dgamma, torch.float64)
    _close(layer.bias.grad, 2 * dbeta, torch.float64)


# --------------------------------------------------------------------------- two-input forms


@pytest.mark.parametrize(
    ("x_shape", "gamma_shape", "axis"),
    [
        pytest.param((2, 3, 4, 5), (2, 3), 0, id="se-block-NC-axis0"),
        pytest.param((2, 3, 4, 5), (3,), 1, id="per-channel-axis1"),
        pytest.param((2, 3, 4), (), 1, id="scalar"),
        pytest.param((2, 3, 4, 5), (4, 5), -2, id="negative-axis"),
    ],
)
@pytest.mark.parametrize("bias_term", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_two_input_scale_matches_oracle(x_shape, gamma_shape, axis, bias_term, dtype):
    """Scale with a second bottom: gamma is an input (gets a gradient), only beta is learned and is
    shaped like gamma; num_axes is ignored (it comes from gamma)."""
    layer = Scale(gamma_shape if bias_term else None, axis=axis, num_axes=1, bias_term=bias_term,
                  scale_from_input=True, dtype=dtype)
    if bias_term:
        layer.load_caffe_blobs([_data(gamma_shape, seed=13)])
    x = torch.tensor(_data(x_shape, seed=14), dtype=dtype, requires_grad=True)
    gamma = torch.tensor(_data(gamma_shape, seed=15, loc=0.5), dtype=dtype, requires_grad=True)
    g = torch.tensor(_data(x_shape, seed=16), dtype=dtype)
    y = layer(x, gamma)
    ax = _oracle_axis(axis, gamma_shape)
    beta = _np(layer.bias) if bias_term else None
    _close(y, ref.scale(_np(x), _np(gamma), axis=ax, bias=beta), dtype)
    y.backward(g)
    dx, dgamma, dbeta = ref.scale_backward(_np(x), _np(gamma), _np(g), axis=ax, has_bias=bias_term)
    _close(x.grad, dx, dtype)
    _close(gamma.grad, dgamma, dtype)
    if bias_term:
        _close(layer.bias.grad, dbeta, dtype)


@pytest.mark.parametrize(
    ("x_shape", "beta_shape", "axis"),
    [
        pytest.param((2, 3, 4, 5), (2, 3), 0, id="NC-axis0"),
        pytest.param((2, 3, 4, 5), (3, 4, 5), 1, id="CHW-axis1"),
        pytest.param((2, 3, 4), (), 1, id="scalar"),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_two_input_bias_matches_oracle(x_shape, beta_shape, axis, dtype):
    layer = Bias(None, axis=axis, bias_from_input=True)
    x = torch.tensor(_data(x_shape, seed=17), dtype=dtype, requires_grad=True)
    beta = torch.tensor(_data(beta_shape, seed=18), dtype=dtype, requires_grad=True)
    g = torch.tensor(_data(x_shape, seed=19), dtype=dtype)
    y = layer(x, beta)
    ax = _oracle_axis(axis, beta_shape)
    _close(y, ref.bias(_np(x), _np(beta), axis=ax), dtype)
    y.backward(g)
    dx, dbeta = ref.bias_backward(_np(x), _np(beta), _np(g), axis=ax)
    _close(x.grad, dx, dtype)
    _close(beta.grad, dbeta, dtype)


# --------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize(("x_shape", "axis", "num_axes", "blob_shape"),
                         [SPANS[0], SPANS[3], SPANS[4], SPANS[5], SPANS[6], SPANS[10]])
@pytest.mark.parametrize("bias_term", [False, True], ids=["no-bias", "bias"])
def test_scale_gradcheck(x_shape, axis, num_axes, blob_shape, bias_term):
    """float64 finite differences w.r.t. input, weight and bias of the module."""
    layer = _scale_layer(x_shape, axis, num_axes, blob_shape, bias_term, torch.float64, seed=20)
    x = torch.tensor(_data(x_shape, seed=22), requires_grad=True)
    params = {n: p.detach().clone().requires_grad_() for n, p in layer.named_parameters()}
    names = list(params)

    def fn(x, *ps):
        return functional_call(layer, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params.values()))


@pytest.mark.parametrize(("x_shape", "axis", "num_axes", "blob_shape"), [SPANS[1], SPANS[4], SPANS[9], SPANS[10]])
def test_bias_gradcheck(x_shape, axis, num_axes, blob_shape):
    layer = Bias(blob_shape, axis=axis, num_axes=num_axes, dtype=torch.float64)
    x = torch.tensor(_data(x_shape, seed=23), requires_grad=True)
    b = torch.tensor(_data(blob_shape, seed=24), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b: functional_call(layer, {"bias": b}, (x,)), (x, b))


@pytest.mark.parametrize("bias_term", [False, True], ids=["no-bias", "bias"])
def test_two_input_scale_gradcheck(bias_term):
    layer = Scale((2, 3) if bias_term else None, axis=0, bias_term=bias_term, scale_from_input=True,
                  dtype=torch.float64)
    x = torch.tensor(_data((2, 3, 2, 2), seed=25), requires_grad=True)
    gamma = torch.tensor(_data((2, 3), seed=26), requires_grad=True)
    if bias_term:
        b = torch.tensor(_data((2, 3), seed=27), requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, g, b: functional_call(layer, {"bias": b}, (x, g)), (x, gamma, b))
    else:
        assert torch.autograd.gradcheck(layer, (x, gamma))


def test_two_input_bias_gradcheck():
    layer = Bias(None, axis=1, bias_from_input=True)
    x = torch.tensor(_data((2, 3, 2, 2), seed=28), requires_grad=True)
    beta = torch.tensor(_data((3, 2), seed=29), requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x, beta))


# --------------------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("x_shape", "axis", "num_axes", "blob_shape"), [SPANS[1], SPANS[4], SPANS[5]])
def test_half_precision_scale(dtype, x_shape, axis, num_axes, blob_shape):
    """fp16/bf16 input with float32 blobs: output in the input dtype, equal to the float32 result
    cast back; x.grad in the input dtype, the blob gradients in float32."""
    layer = _scale_layer(x_shape, axis, num_axes, blob_shape, True, torch.float32, seed=30)
    x = torch.tensor(_data(x_shape, seed=32), dtype=torch.float32).to(dtype).requires_grad_()
    y = layer(x)
    assert y.dtype == dtype
    with torch.no_grad():
        expected = layer(x.detach().float()).to(dtype)
    torch.testing.assert_close(y, expected)
    y.float().sum().backward()
    assert x.grad.dtype == dtype
    assert layer.weight.grad.dtype == torch.float32 and layer.bias.grad.dtype == torch.float32
    _, dgamma, dbeta = ref.scale_backward(_np(x), _np(layer.weight), np.ones(x_shape),
                                          axis=_oracle_axis(axis, blob_shape), has_bias=True)
    np.testing.assert_allclose(_np(layer.weight.grad), dgamma, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(_np(layer.bias.grad), dbeta, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_bias(dtype):
    layer = Bias(3)
    layer.load_caffe_blobs([np.array([0.25, -1.0, 3.0])])
    x = torch.tensor(_data((2, 3, 4), seed=33)).to(dtype)
    y = layer(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y, layer(x.float()).to(dtype))


def test_half_precision_two_input_scale():
    layer = Scale(None, axis=0, scale_from_input=True)
    x = torch.tensor(_data((2, 3, 4, 4), seed=34)).half()
    gamma = torch.tensor(_data((2, 3), seed=35)).half()
    y = layer(x, gamma)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y, (x.float() * gamma.float()[:, :, None, None]).half())


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make",
    [
        lambda: Scale((3, 4), num_axes=1),
        lambda: Scale(3, num_axes=2),
        lambda: Scale(3, num_axes=0),
        lambda: Scale((), num_axes=1),
        lambda: Scale(3, num_axes=-2),
        lambda: Scale(3, axis=1.0),
        lambda: Bias((3, 4), num_axes=1),
        lambda: Bias((), num_axes=1),
        lambda: Bias(3, num_axes=-3),
    ],
    ids=["scale-2-vs-1", "scale-1-vs-2", "scale-1-vs-0", "scale-scalar-vs-1", "scale-num_axes-2",
         "scale-float-axis", "bias-2-vs-1", "bias-scalar-vs-1", "bias-num_axes-3"],
)
def test_construction_config_errors(make):
    """The blob's rank must equal num_axes (unless -1); num_axes >= -1; axis an int."""
    with pytest.raises(LayerConfigError) as info:
        make()
    assert isinstance(info.value, ValueError) and isinstance(info.value, CaffeNormError)


def test_two_input_ignores_num_axes():
    """With a second bottom Caffe takes num_axes from that input, so a contradicting one is fine."""
    layer = Scale((2, 3), axis=0, num_axes=1, bias_term=True, scale_from_input=True)
    x = torch.ones(2, 3, 4)
    torch.testing.assert_close(layer(x, torch.full((2, 3), 2.0)), torch.full((2, 3, 4), 2.0))


@pytest.mark.parametrize(
    ("layer", "x_shape", "pattern"),
    [
        (Scale(4), (2, 3, 4, 5), r"shape \(4,\).*\(2, 3, 4, 5\)"),
        (Scale((5, 6), axis=3, num_axes=2), (2, 3, 4, 5), r"shape \(5, 6\).*\(2, 3, 4, 5\)"),
        (Scale((4,), axis=2, num_axes=-1), (2, 3, 4, 5), r"num_axes=-1.*\(4,\).*\(2, 3, 4, 5\)"),
        (Scale((3, 4), num_axes=2), (2, 3), r"shape \(3, 4\).*\(2, 3\)"),
        (Bias(4), (2, 3, 4), r"shape \(4,\).*\(2, 3, 4\)"),
        (Bias((4,), axis=2, num_axes=-1), (2, 3, 4, 5), r"num_axes=-1.*\(4,\).*\(2, 3, 4, 5\)"),
    ],
    ids=["scale-channel", "scale-past-end", "scale-not-to-end", "scale-rank", "bias-channel", "bias-not-to-end"],
)
def test_blob_input_mismatch_at_forward(layer, x_shape, pattern):
    """The blob must equal x.shape[axis:axis+num_axes]; the message names both shapes."""
    with pytest.raises(InputShapeError, match=pattern):
        layer(torch.zeros(x_shape))


def test_two_input_shape_mismatch():
    with pytest.raises(InputShapeError, match=r"\(2, 4\).*\(2, 3, 4\)"):
        Scale(None, axis=0, scale_from_input=True)(torch.zeros(2, 3, 4), torch.zeros(2, 4))
    with pytest.raises(InputShapeError, match=r"\(3, 4\)"):
        Bias(None, axis=0, bias_from_input=True)(torch.zeros(2, 3, 4), torch.zeros(3, 4))
    with pytest.raises(InputShapeError, match=r"\(2, 3\).*\(3,\)"):
        Scale(3, bias_term=True, scale_from_input=True)(torch.zeros(2, 3), torch.zeros(2, 3))


def test_functional_bias_shape_must_match_scale():
    with pytest.raises(InputShapeError, match=r"bias of shape \(2,\).*\(3,\)"):
        CF.scale(torch.zeros(2, 3), torch.ones(3), torch.zeros(2))


@pytest.mark.parametrize("axis", [4, -5, 7])
@pytest.mark.parametrize("kind", ["scale", "bias"])
def test_axis_out_of_range(axis, kind):
    layer = Scale(3, axis=axis) if kind == "scale" else Bias(3, axis=axis)
    with pytest.raises(InputShapeError, match=rf"axis={axis} is out of range"):
        layer(torch.zeros(2, 3, 4, 5))


@pytest.mark.parametrize("kind", ["scale", "bias"])
def test_axis_out_of_range_with_learned_scalar_blob(kind):
    """Caffe checks the axis of a learned blob even when num_axes is 0 (only the two-bottom
    Reshape path skips it for a 0-axis input, where caffenorm correctly ignores it)."""
    layer = Scale((), axis=7, num_axes=0) if kind == "scale" else Bias((), axis=7, num_axes=0)
    with pytest.raises(InputShapeError, match=r"axis=7 is out of range"):
        layer(torch.zeros(2, 3))


def test_two_input_scalar_ignores_axis():
    """Two bottoms with a 0-axis second input: Caffe's Reshape sets axis_ = 0, never checking it."""
    y = Scale(None, axis=7, scale_from_input=True)(torch.ones(2, 3), torch.tensor(2.0))
    torch.testing.assert_close(y, torch.full((2, 3), 2.0))
    y = Bias(None, axis=7, bias_from_input=True)(torch.ones(2, 3), torch.tensor(2.0))
    torch.testing.assert_close(y, torch.full((2, 3), 3.0))


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda: Scale(None, scale_from_input=True)(torch.zeros(2, 3)), "scale_from_input=True"),
        (lambda: Scale(3, bias_term=True, scale_from_input=True)(torch.zeros(2, 3)), "scale_from_input=True"),
        (lambda: Scale(3)(torch.zeros(2, 3), torch.ones(3)), "second input"),
        (lambda: Bias(None, bias_from_input=True)(torch.zeros(2, 3)), "bias_from_input=True"),
        (lambda: Bias(3)(torch.zeros(2, 3), torch.ones(3)), "second input"),
    ],
    ids=["scale-missing-gamma", "scale+bias-missing-gamma", "scale-extra-input", "bias-missing-beta",
         "bias-extra-input"],
)
def test_wrong_number_of_inputs(call, pattern):
    with pytest.raises(InputShapeError, match=pattern):
        call()


@pytest.mark.parametrize(
    "make",
    [
        lambda: Scale(None),
        lambda: Scale(None, bias_term=True),
        lambda: Scale(None, scale_from_input=True, bias_term=True),
        lambda: Bias(None),
    ],
    ids=["scale", "scale+bias", "two-input-scale+bias", "bias"],
)
def test_shape_none_needs_input_form(make):
    """Without a second bottom (or with a learned bias) the blob shape must be given."""
    with pytest.raises(LayerConfigError, match="shape=None"):
        make()


def test_non_float_input_rejected():
    with pytest.raises(InputShapeError, match="floating-point"):
        Scale(3)(torch.zeros(2, 3, dtype=torch.int64))
