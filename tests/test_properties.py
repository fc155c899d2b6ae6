"""Property-based tests: random shapes and parameters, every layer against the float64 oracle."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import caffe_ref as ref
from tolerances import assert_matches

from caffenorm import functional as CF

SETTINGS = settings(max_examples=40, deadline=None)
dims = st.integers(min_value=1, max_value=6)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _data(shape, seed, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


@SETTINGS
@given(
    shape=st.tuples(dims, st.integers(1, 9), dims, dims),
    local_size=st.sampled_from([1, 3, 5, 7, 9]),
    alpha=st.floats(1e-4, 5.0),
    beta=st.sampled_from([0.75, 0.5, 1.0]) | st.floats(0.0, 2.0),
    k=st.floats(0.1, 5.0),
    region=st.sampled_from(["ACROSS_CHANNELS", "WITHIN_CHANNEL"]),
    seed=seeds,
)
def test_lrn_property(shape, local_size, alpha, beta, k, region, seed):
    x_np, g_np = _data(shape, seed, 2.0), _data(shape, seed + 1)
    x = torch.tensor(x_np, requires_grad=True)
    y = CF.lrn(x, local_size, alpha, beta, k, region)
    (dx,) = torch.autograd.grad(y, x, torch.tensor(g_np))
    assert_matches(y, ref.lrn(x_np, local_size, alpha, beta, k, region))
    assert_matches(dx, ref.lrn_backward(x_np, g_np, local_size, alpha, beta, k, region))


@SETTINGS
@given(
    shape=st.lists(dims, min_size=2, max_size=5).map(tuple),
    use_global_stats=st.booleans(),
    factor=st.sampled_from([0.0, 1.0, 999.9]) | st.floats(0.01, 1e4),
    maf=st.floats(0.0, 1.0),
    eps=st.floats(1e-8, 1e-1),
    seed=seeds,
)
def test_batch_norm_property(shape, use_global_stats, factor, maf, eps, seed):
    channels = shape[1]
    x_np, g_np = _data(shape, seed), _data(shape, seed + 1)
    rng = np.random.default_rng(seed + 2)
    mean_sum, var_sum = rng.standard_normal(channels) * factor, rng.uniform(0.1, 2.0, channels) * factor
    blobs = [torch.tensor(mean_sum), torch.tensor(var_sum), torch.tensor([factor], dtype=torch.float64)]
    x = torch.tensor(x_np, requires_grad=True)
    y = CF.batch_norm(x, *blobs, use_global_stats, maf, eps)
    (dx,) = torch.autograd.grad(y, x, torch.tensor(g_np))
    y_ref, m_ref, v_ref, f_ref = ref.batch_norm(
        x_np, mean_sum, var_sum, factor, use_global_stats=use_global_stats, moving_average_fraction=maf, eps=eps
    )
    dx_ref = ref.batch_norm_backward(
        x_np, g_np, mean_sum, var_sum, factor, use_global_stats=use_global_stats, eps=eps
    )
    # Outputs scale with 1/sqrt(var + eps); loosen atol by that factor.
    spread = 1.0 / np.sqrt(eps)
    assert_matches(y, y_ref, scale=spread)
    assert_matches(dx, dx_ref, scale=spread)
    for got, want in zip(blobs, (m_ref, v_ref, f_ref)):
        assert_matches(got, want, scale=max(1.0, factor))


@SETTINGS
@given(
    shape=st.lists(dims, min_size=1, max_size=5).map(tuple),
    data=st.data(),
    bias_term=st.booleans(),
    seed=seeds,
)
def test_scale_property(shape, data, bias_term, seed):
    start = data.draw(st.integers(0, len(shape)))
    num_axes = data.draw(st.integers(0, len(shape) - start))
    axis = start if num_axes == 0 or data.draw(st.booleans()) else start - len(shape)
    blob_shape = shape[start : start + num_axes]
    x_np, g_np = _data(shape, seed), _data(shape, seed + 1)
    w_np, b_np = _data(blob_shape, seed + 2), _data(blob_shape, seed + 3)
    x = torch.tensor(x_np, requires_grad=True)
    w = torch.tensor(w_np, requires_grad=True)
    b = torch.tensor(b_np, requires_grad=True) if bias_term else None
    y = CF.scale(x, w, b, axis)
    grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], torch.tensor(g_np))
    assert_matches(y, ref.scale(x_np, w_np, axis, b_np if bias_term else None))
    expected = ref.scale_backward(x_np, w_np, g_np, axis, has_bias=bias_term)
    for got, want in zip(grads, expected):
        assert_matches(got, want, scale=float(np.prod(shape)))
    z = CF.bias(x, w, axis)
    assert_matches(z, ref.bias(x_np, w_np, axis))


@SETTINGS
@given(
    shape=st.builds(lambda head, tail: head + tuple(tail), st.tuples(dims, st.integers(1, 9)), st.lists(dims, max_size=2)),
    across_spatial=st.booleans(),
    shared=st.booleans(),
    caffe_backward=st.booleans(),
    eps=st.sampled_from([1e-10, 0.0, 1e-3]),
    seed=seeds,
)
def test_normalize_property(shape, across_spatial, shared, caffe_backward, eps, seed):
    x_np, g_np = _data(shape, seed), _data(shape, seed + 1)
    rng = np.random.default_rng(seed + 2)
    s_np = np.asarray(rng.uniform(0.5, 20.0)) if shared else rng.uniform(0.5, 20.0, shape[1])
    x = torch.tensor(x_np, requires_grad=True)
    s = torch.tensor(s_np, requires_grad=True)
    y = CF.normalize(x, s, across_spatial, eps, caffe_backward)
    dx, ds = torch.autograd.grad(y, (x, s), torch.tensor(g_np))
    backward = ref.normalize_backward_caffe if caffe_backward else ref.normalize_backward
    dx_ref, ds_ref = backward(x_np, s_np, g_np, across_spatial=across_spatial, eps=eps)
    assert_matches(y, ref.normalize(x_np, s_np, across_spatial=across_spatial, eps=eps), scale=20.0)
    assert_matches(dx, dx_ref, scale=20.0 / max(np.min(np.abs(x_np)), 1e-3))
    assert_matches(ds, ds_ref, scale=float(np.sum(np.abs(g_np))))
