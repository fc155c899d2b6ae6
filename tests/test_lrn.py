"""LRN against the float64 oracle, torch's LocalResponseNorm, gradcheck, and Caffe's edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference import caffe_ref as ref
from tolerances import assert_matches

import caffenorm
from caffenorm.functional import lrn

REGIONS = ["ACROSS_CHANNELS", "WITHIN_CHANNEL"]
# (alpha, beta, k): Caffe's defaults, CaffeNet/AlexNet, and betas off the fast paths.
PARAMS = [(1.0, 0.75, 1.0), (1e-4, 0.75, 2.0), (0.5, 0.6, 0.3), (2.0, 0.5, 1.5), (0.1, 1.0, 1.0), (0.3, 0.0, 1.0)]
# Shapes include fewer channels than the window, a spatial size smaller than the window, and 1x1x1x1.
SHAPES = [(2, 7, 5, 6), (1, 3, 4, 4), (2, 5, 2, 3), (1, 1, 1, 1), (3, 12, 1, 7)]


def _data(shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("local_size", [1, 3, 5, 7])
@pytest.mark.parametrize("shape", SHAPES)
def test_lrn_forward_and_backward_match_oracle(shape, local_size, region, dtype):
    alpha, beta, k = PARAMS[(len(shape) * local_size + sum(shape)) % len(PARAMS)]
    x_np, g_np = _data(shape, 1, 2.0), _data(shape, 2)
    x = torch.tensor(x_np, dtype=dtype, requires_grad=True)
    y = lrn(x, local_size, alpha, beta, k, region)
    (dx,) = torch.autograd.grad(y, x, torch.tensor(g_np, dtype=dtype))
    assert y.dtype == dtype and dx.dtype == dtype
    assert_matches(y, ref.lrn(x_np, local_size, alpha, beta, k, region))
    assert_matches(dx, ref.lrn_backward(x_np, g_np, local_size, alpha, beta, k, region))


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize(("alpha", "beta", "k"), PARAMS)
@pytest.mark.parametrize("local_size", [1, 3, 5])
def test_lrn_gradcheck_float64(local_size, alpha, beta, k, region):
    x = torch.tensor(_data((2, 6, 4, 5), 3), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: lrn(t, local_size, alpha, beta, k, region), (x,))


@pytest.mark.parametrize("local_size", [1, 3, 5, 7, 9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lrn_across_matches_torch_local_response_norm(local_size, dtype):
    # torch's LocalResponseNorm is an independent implementation of the same ACROSS formula for odd sizes.
    x = torch.tensor(_data((2, 10, 6, 7), 4, 3.0), dtype=dtype, requires_grad=True)
    g = torch.tensor(_data((2, 10, 6, 7), 5), dtype=dtype)
    params = {"alpha": 1e-2, "beta": 0.75, "k": 2.0}
    ours = caffenorm.LRN(local_size, **params)(x)
    theirs = torch.nn.LocalResponseNorm(local_size, **params)(x)
    (d_ours,) = torch.autograd.grad(ours, x, g)
    (d_theirs,) = torch.autograd.grad(theirs, x, g)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(d_ours, d_theirs)


def test_lrn_within_channel_ignores_k():
    x = torch.tensor(_data((1, 2, 5, 5), 6))
    a = lrn(x, 3, 0.7, 0.75, 1.0, "WITHIN_CHANNEL")
    b = lrn(x, 3, 0.7, 0.75, 42.0, "WITHIN_CHANNEL")
    assert torch.equal(a, b)
    assert not torch.equal(lrn(x, 3, 0.7, 0.75, 1.0), lrn(x, 3, 0.7, 0.75, 42.0))


def test_lrn_within_channel_border_divisor_is_n_squared():
    # One non-zero pixel in a corner: its 3x3 window holds 4 in-image pixels, but Caffe divides by 9.
    x = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    x[0, 0, 0, 0] = 2.0
    y = lrn(x, 3, 1.0, 1.0, 1.0, "WITHIN_CHANNEL")
    assert y[0, 0, 0, 0].item() == pytest.approx(2.0 / (1.0 + 4.0 / 9.0), rel=1e-15)


def test_lrn_accepts_enum_names_and_values():
    x = torch.tensor(_data((1, 4, 3, 3), 7))
    for across in ("ACROSS_CHANNELS", "across_channels", 0, caffenorm.NormRegion.ACROSS_CHANNELS):
        assert torch.equal(lrn(x, norm_region=across), lrn(x))
    for within in ("WITHIN_CHANNEL", 1, caffenorm.NormRegion.WITHIN_CHANNEL):
        assert torch.equal(lrn(x, norm_region=within), lrn(x, norm_region="WITHIN_CHANNEL"))


def test_lrn_float32_accurate_at_realistic_magnitudes():
    # AlexNet conv1/relu1 activations reach the hundreds; a prefix-sum window would lose digits here.
    x_np = np.abs(_data((2, 96, 7, 7), 8, 150.0))
    x = torch.tensor(x_np, dtype=torch.float32)
    y = lrn(x, 5, 1e-4, 0.75, 1.0)
    expected = ref.lrn(x_np.astype(np.float32), 5, 1e-4, 0.75, 1.0)
    np.testing.assert_allclose(y.double().numpy(), expected, rtol=2e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("region", REGIONS)
def test_lrn_half_precision_computes_in_float32(dtype, region):
    # x**2 of 300 overflows float16 (65504); the layer must still return finite, accurate values.
    x_np = _data((2, 8, 5, 5), 9, 300.0)
    x = torch.tensor(x_np, dtype=dtype, requires_grad=True)
    y = lrn(x, 5, 1e-4, 0.75, 2.0, region)
    assert y.dtype == dtype and torch.isfinite(y).all()
    x32 = x.detach().float()
    expected = lrn(x32, 5, 1e-4, 0.75, 2.0, region)
    torch.testing.assert_close(y.float(), expected.to(dtype).float())
    (dx,) = torch.autograd.grad(y.float().sum(), x)
    assert dx.dtype == dtype and torch.isfinite(dx).all()


def test_lrn_across_nan_poisons_later_channels_like_caffe_running_sum():
    # Caffe slides the channel window by adding the head and subtracting the tail: once a NaN has
    # entered the running sum it never leaves, so every channel from r-p on is NaN at that position.
    x = torch.ones(1, 9, 2, 2)
    x[0, 3, 1, 0] = float("nan")
    y = lrn(x, 3, 1.0, 0.75, 1.0)
    column = y[0, :, 1, 0]
    assert torch.isfinite(column[:2]).all()
    assert torch.isnan(column[2:]).all()
    # Other positions are untouched.
    assert torch.isfinite(y[0, :, 0, :]).all() and torch.isfinite(y[0, :, 1, 1]).all()


def test_lrn_across_inf_becomes_nan_after_it_leaves_the_window():
    # inf enters the running sum (scale inf -> y = x * 0 = 0) and its subtraction gives inf - inf = NaN.
    x = torch.ones(1, 8, 1, 1, dtype=torch.float64)
    x[0, 2, 0, 0] = float("inf")
    column = lrn(x, 3, 1.0, 0.75, 1.0)[0, :, 0, 0]
    expected_first = 1.0 * (1.0 + 2.0 / 3.0) ** -0.75
    assert column[0].item() == pytest.approx(expected_first)
    assert column[1].item() == 0.0 and column[3].item() == 0.0
    assert torch.isnan(column[2]) and torch.isnan(column[4:]).all()


def test_lrn_within_nan_stays_local():
    x = torch.ones(1, 2, 7, 7)
    x[0, 0, 3, 3] = float("nan")
    y = lrn(x, 3, 1.0, 0.75, 1.0, "WITHIN_CHANNEL")
    assert torch.isnan(y[0, 0, 2:5, 2:5]).all()
    assert int(torch.isnan(y).sum()) == 9


def test_lrn_saves_only_input_output_and_one_tensor():
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = lrn(x, 5, 1e-4, 0.75, 1.0)
    assert len(saved) == 3
    assert sum(t is x for t in saved) == 1 and sum(t is y for t in saved) == 1
    assert all(t.shape == x.shape for t in saved)


def test_lrn_without_grad_required_returns_no_graph():
    y = lrn(torch.randn(1, 4, 3, 3))
    assert y.grad_fn is None


@pytest.mark.parametrize("bad", [2, 4, 0, -3, 3.0, True, None])
def test_lrn_rejects_bad_local_size(bad):
    with pytest.raises(caffenorm.LayerConfigError, match="local_size"):
        caffenorm.LRN(local_size=bad)
    with pytest.raises(caffenorm.CaffeNormError, match="odd"):
        lrn(torch.randn(1, 4, 3, 3), bad)


@pytest.mark.parametrize("shape", [(4,), (2, 4), (2, 4, 5), (1, 2, 3, 4, 5)])
def test_lrn_rejects_non_4d_input(shape):
    with pytest.raises(caffenorm.InputShapeError, match=r"LRN: input has \d dimensions"):
        caffenorm.LRN()(torch.randn(shape))


@pytest.mark.parametrize("bad", ["ACROSS", "within", 2, -1, 0.5])
def test_lrn_rejects_unknown_norm_region(bad):
    with pytest.raises(caffenorm.LayerConfigError, match="norm_region"):
        caffenorm.LRN(norm_region=bad)


@pytest.mark.parametrize("param", ["alpha", "beta", "k"])
def test_lrn_rejects_non_finite_parameters(param):
    with pytest.raises(caffenorm.LayerConfigError, match=param):
        caffenorm.LRN(**{param: math.nan})


def test_lrn_rejects_integer_input():
    with pytest.raises(caffenorm.CaffeNormError, match="floating-point"):
        caffenorm.LRN()(torch.ones(1, 3, 2, 2, dtype=torch.int64))


def test_lrn_module_matches_functional_and_repr():
    layer = caffenorm.LRN(3, 0.5, 0.6, 2.0, 1)
    x = torch.randn(2, 5, 4, 4)
    assert torch.equal(layer(x), lrn(x, 3, 0.5, 0.6, 2.0, "WITHIN_CHANNEL"))
    assert repr(layer) == "LRN(local_size=3, alpha=0.5, beta=0.6, k=2.0, norm_region=WITHIN_CHANNEL)"
    assert layer.caffe_blobs() == []


def test_lrn_across_overflowed_window_stays_inf_like_caffe_running_sum():
    # Caffe's running sum overflows to inf at the first window holding the huge squares and then
    # stays inf (inf - finite), so every later channel is divided by inf: 0.
    x = torch.tensor([1.5e19, 1.5e19, 1.0, 1.0, 1.0, 1.0]).view(1, 6, 1, 1)
    y = lrn(x, 3, 3.0, 0.75, 1.0)
    assert torch.equal(y.flatten(), torch.zeros(6))


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_channels_last_keeps_its_layout_and_the_same_values(region):
    """A channels-last input (what ``net.to(memory_format=torch.channels_last)`` feeds it) gives
    channels-last y, S and dx, equal bit for bit to the contiguous computation: the same
    arithmetic per element, in another memory order."""
    x = torch.randn(3, 11, 6, 7, dtype=torch.float32) * 4
    x[1, 4, 2, 2] = float("nan")  # the running-sum emulation must see the same channel order
    g = torch.randn_like(x)
    xc = x.to(memory_format=torch.channels_last).requires_grad_(True)
    xn = x.clone().requires_grad_(True)
    yc, yn = lrn(xc, 5, 0.7, 0.75, 2.0, region), lrn(xn, 5, 0.7, 0.75, 2.0, region)
    (dxc,), (dxn,) = torch.autograd.grad(yc, xc, g), torch.autograd.grad(yn, xn, g)
    assert yc.is_contiguous(memory_format=torch.channels_last)
    assert dxc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(yc.nan_to_num(7.0), yn.nan_to_num(7.0)) and torch.equal(yc.isnan(), yn.isnan())
    assert torch.equal(dxc.nan_to_num(7.0), dxn.nan_to_num(7.0))
    s = torch.ops.caffenorm.lrn(xc.detach(), 5, 0.7, 0.75, 2.0, 0 if region == "ACROSS_CHANNELS" else 1)[1]
    assert s.stride() == xc.stride()
