"""SSD Normalize against the float64 oracle (true and Caffe backward), gradcheck and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import caffe_ref as ref
from tolerances import assert_matches

import caffenorm
from caffenorm.functional import normalize

SHAPES = [(2, 5), (2, 4, 6), (2, 6, 3, 4), (1, 1, 2, 2), (3, 16, 5, 5)]


def _data(shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


def _scale(shared, channels, seed=0):
    if shared:
        return np.asarray(np.random.default_rng(seed).uniform(0.5, 20.0))
    return np.random.default_rng(seed).uniform(0.5, 20.0, size=channels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("caffe_backward", [False, True])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("across_spatial", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_normalize_forward_and_backward_match_oracle(shape, across_spatial, shared, caffe_backward, dtype):
    x_np, g_np = _data(shape, 1), _data(shape, 2)
    s_np = _scale(shared, shape[1], 3)
    eps = 1e-10 if dtype == torch.float64 else 1e-6
    x = torch.tensor(x_np, dtype=dtype, requires_grad=True)
    s = torch.tensor(s_np, dtype=dtype, requires_grad=True)
    y = normalize(x, s, across_spatial, eps, caffe_backward)
    dx, ds = torch.autograd.grad(y, (x, s), torch.tensor(g_np, dtype=dtype))
    backward = ref.normalize_backward_caffe if caffe_backward else ref.normalize_backward
    dx_ref, ds_ref = backward(x_np, s_np, g_np, across_spatial=across_spatial, eps=eps)
    magnitude = float(np.max(np.abs(s_np)))
    assert_matches(y, ref.normalize(x_np, s_np, across_spatial=across_spatial, eps=eps), scale=magnitude)
    assert_matches(dx, dx_ref, scale=magnitude)
    assert_matches(ds, ds_ref, scale=float(np.sum(np.abs(g_np))))
    assert ds.shape == s.shape


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("across_spatial", [True, False])
@pytest.mark.parametrize("shape", [(2, 5), (2, 3, 4), (2, 4, 3, 3)])
def test_normalize_gradcheck_float64(shape, across_spatial, shared):
    x = torch.tensor(_data(shape, 4), requires_grad=True)
    s = torch.tensor(_scale(shared, shape[1], 5), requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: normalize(a, b, across_spatial), (x, s))


@pytest.mark.parametrize("across_spatial", [True, False])
def test_normalize_caffe_backward_is_the_true_gradient_only_for_equal_scales(across_spatial):
    x = torch.tensor(_data((2, 4, 3, 3), 6), requires_grad=True)
    equal = torch.full((4,), 3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: normalize(a, b, across_spatial, caffe_backward=True), (x, equal))
    unequal = torch.tensor([0.5, 2.0, 7.0, 20.0], dtype=torch.float64)
    g = torch.tensor(_data((2, 4, 3, 3), 7))
    (true_dx,) = torch.autograd.grad(normalize(x, unequal, across_spatial), x, g)
    (caffe_dx,) = torch.autograd.grad(normalize(x, unequal, across_spatial, caffe_backward=True), x, g)
    assert not torch.allclose(true_dx, caffe_dx, rtol=1e-3)


def test_normalize_caffe_scale_gradient_divides_by_scale():
    x = torch.tensor(_data((2, 3, 2, 2), 8), requires_grad=True)
    s = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    (ds_caffe,) = torch.autograd.grad(normalize(x, s, False, caffe_backward=True).sum(), s)
    (ds_true,) = torch.autograd.grad(normalize(x, s, False).sum(), s)
    assert torch.isnan(ds_caffe).all()
    assert torch.isfinite(ds_true).all()


@pytest.mark.parametrize("across_spatial", [True, False])
def test_normalize_zero_vector_gives_zero_not_nan(across_spatial):
    # eps inside the sqrt: a zero vector is divided by sqrt(eps), giving 0 (and finite gradients).
    x = torch.zeros(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    s = torch.full((4,), 20.0, dtype=torch.float64, requires_grad=True)
    y = normalize(x, s, across_spatial)
    assert torch.equal(y, torch.zeros_like(y))
    dx, ds = torch.autograd.grad(y.sum(), (x, s))
    assert torch.isfinite(dx).all() and torch.isfinite(ds).all()


def test_normalize_eps_is_inside_the_sqrt():
    # A tiny vector: Caffe gives x / sqrt(|x|^2 + eps); mmdetection's x / (|x| + eps) differs by 1e5x.
    x = torch.full((1, 1, 1, 1), 1e-8, dtype=torch.float64)
    y = normalize(x, torch.tensor(1.0, dtype=torch.float64), False, eps=1e-10)
    assert y.item() == pytest.approx(1e-8 / np.sqrt(1e-16 + 1e-10), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("across_spatial", [True, False])
def test_normalize_half_precision_large_values(dtype, across_spatial):
    # Summing squares of 300 in fp16 overflows; the layer computes in float32 and casts back.
    x_np = _data((2, 64, 4, 4), 9, 300.0)
    x = torch.tensor(x_np, dtype=dtype, requires_grad=True)
    s = torch.full((64,), 20.0, dtype=dtype, requires_grad=True)
    y = normalize(x, s, across_spatial)
    assert y.dtype == dtype and torch.isfinite(y).all()
    expected = normalize(x.detach().float(), s.detach().float(), across_spatial)
    torch.testing.assert_close(y.float(), expected.to(dtype).float())
    dx, ds = torch.autograd.grad(y.float().sum(), (x, s))
    assert dx.dtype == dtype and ds.dtype == dtype
    assert torch.isfinite(dx).all() and torch.isfinite(ds).all()


def test_normalize_nan_propagates_over_its_region():
    x = torch.ones(2, 3, 4, 4)
    x[0, 1, 2, 2] = float("nan")
    per_position = normalize(x, torch.tensor(1.0), across_spatial=False)
    assert torch.isnan(per_position[0, :, 2, 2]).all() and int(torch.isnan(per_position).sum()) == 3
    per_sample = normalize(x, torch.tensor(1.0), across_spatial=True)
    assert torch.isnan(per_sample[0]).all() and torch.isfinite(per_sample[1]).all()


def test_normalize_saves_input_and_norm_only():
    saved: list[torch.Tensor] = []
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    s = torch.ones(8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        normalize(x, s, across_spatial=False)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0] is x
    assert sum(t.numel() for t in saved if t is not x) <= 2 * 5 * 5 + 8


def test_normalize_module_blob_shapes_and_init():
    shared = caffenorm.Normalize(8)
    per_channel = caffenorm.Normalize(8, across_spatial=False, channel_shared=False, scale=20.0)
    assert shared.caffe_blobs()[0].shape == () and shared.caffe_blobs()[0] is shared.weight
    assert per_channel.weight.shape == (8,) and torch.equal(per_channel.weight.detach(), torch.full((8,), 20.0))
    x = torch.randn(2, 8, 3, 3)
    assert torch.equal(per_channel(x), normalize(x, per_channel.weight, False))
    assert repr(per_channel) == (
        "Normalize(8, across_spatial=False, channel_shared=False, eps=1e-10, caffe_backward=False)"
    )


@pytest.mark.parametrize("shape", [(8,), (1, 8, 2, 2, 2)])
def test_normalize_rejects_ranks_caffe_cannot_read(shape):
    with pytest.raises(caffenorm.InputShapeError, match="Normalize: input has"):
        caffenorm.Normalize(8)(torch.randn(shape))


def test_normalize_rejects_channel_mismatch_and_negative_eps():
    with pytest.raises(caffenorm.InputShapeError, match=r"scale of shape \(8,\) does not fit an input with 6 channels"):
        caffenorm.Normalize(8, channel_shared=False)(torch.randn(1, 6, 2, 2))
    with pytest.raises(caffenorm.LayerConfigError, match="eps=-1e-05"):
        caffenorm.Normalize(8, eps=-1e-5)
    with pytest.raises(caffenorm.InputShapeError, match="scale of shape"):
        normalize(torch.randn(1, 6, 2, 2), torch.ones(5))
