"""The Triton kernels (caffenorm.kernels) against the torch path and the float64 oracle.

Every test runs twice: in Triton's interpreter on CPU tensors (machines without CUDA), and compiled
on CUDA tensors (marked ``cuda``, select with ``-m cuda``; skipped without a GPU).  The torch path, the CPU implementation of the
``caffenorm::*`` ops, is the reference: it is computed on CPU copies in both variants.  Shapes are
small (the interpreter runs each program in Python) but each one crosses the kernels' tile
boundaries: more channels than one chunk, more positions than one block, windows wider than the
tensor.  One more test compiles every kernel for sm_90 ahead of time, without a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import caffenorm
from caffenorm import kernels
from conftest import TRITON_INTERPRET_BEFORE
from reference import caffe_ref as ref
from tolerances import TOLERANCES

pytest.importorskip("triton")

# The interpreter runs kernels in numpy, which warns on the NaN/inf the tests feed it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")

CUDA = torch.cuda.is_available()
BACKENDS = [
    pytest.param("interpreter", id="interpreter"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs CUDA")]),
]
ACROSS, WITHIN = 0, 1


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest):
    """``(kernel modules, device)`` of one variant: interpreter copies on CPU, or the compiled
    package modules on CUDA."""
    if request.param == "cuda":
        return request.getfixturevalue("compiled"), torch.device("cuda")
    return request.getfixturevalue("interpreted"), torch.device("cpu")


def _randn(shape, seed, scale=1.0, dtype=torch.float32):
    return torch.tensor(np.random.default_rng(seed).standard_normal(shape) * scale, dtype=dtype)


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = torch.float32, scale: float = 1.0):
    """The layer tests' tolerances (tests/tolerances.py); NaN must meet NaN and inf the same inf."""
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.detach().cpu().double(), expected.detach().cpu().double(), rtol=rtol, atol=atol * scale, equal_nan=True
    )


# ---------------------------------------------------------------------------------------------- LRN

# (shape, local_size, alpha, beta, k): real-model settings, each beta form, windows wider than C,
# several channel chunks (16) and position blocks (64), and a negative S (negative k) with an odd
# integer exponent and with a non-integer one (NaN, as torch.pow).
ACROSS_CASES = [
    ((2, 7, 5, 6), 5, 1.0, 0.75, 1.0),
    ((2, 7, 5, 6), 3, 1e-4, 0.75, 2.0),
    ((1, 3, 4, 4), 7, 0.5, 0.6, 0.3),
    ((2, 5, 3, 3), 1, 2.0, 0.5, 1.5),
    ((1, 6, 2, 3), 5, 0.1, 1.0, 1.0),
    ((1, 6, 2, 3), 3, 0.3, 0.0, 1.0),
    ((1, 6, 2, 3), 3, 0.5, 2.0, 1.0),
    ((1, 6, 2, 3), 3, 0.5, 3.0, -3.0),
    ((1, 6, 2, 3), 3, 0.5, 0.6, -3.0),
    ((1, 20, 3, 3), 9, 1.0, 0.75, 1.0),
    ((1, 3, 9, 9), 3, 1.0, 0.75, 1.0),
]
# WITHIN: k is ignored (Caffe's Power shift = 1); spatial sizes below the window; two blocks (256).
WITHIN_CASES = [
    ((1, 2, 5, 6), 3, 1.0, 0.75, 1.0),
    ((1, 2, 4, 5), 5, 1e-2, 0.6, 2.0),
    ((2, 1, 2, 3), 5, 0.5, 1.0, 1.0),
    ((1, 1, 3, 3), 1, 2.0, 2.0, 1.0),
    ((1, 1, 17, 17), 3, 1.0, 0.75, 1.0),
]
LRN_CASES = [(ACROSS, *c) for c in ACROSS_CASES] + [(WITHIN, *c) for c in WITHIN_CASES]


def _lrn_torch_path(x, g, local_size, alpha, beta, k, region):
    """(y, S, dx) of the torch implementation, on CPU."""
    x, g = x.cpu(), g.cpu()
    y, s = torch.ops.caffenorm.lrn(x, local_size, alpha, beta, k, region)
    dx = torch.ops.caffenorm.lrn_backward(g, x, y, s, local_size, alpha, beta, region)
    return y, s, dx


def _lrn_kernels(mod, x, g, local_size, alpha, beta, k, region):
    y, s = mod.lrn_forward(x, local_size, alpha, beta, k, region)
    return y, s, mod.lrn_backward(g, x, y, s, local_size, alpha, beta, region)


@pytest.mark.parametrize(("region", "shape", "local_size", "alpha", "beta", "k"), LRN_CASES)
def test_lrn_matches_torch_path(backend, region, shape, local_size, alpha, beta, k):
    mods, device = backend
    x, g = _randn(shape, 1, 2.0), _randn(shape, 2)
    y, s, dx = _lrn_kernels(mods.lrn, x.to(device), g.to(device), local_size, alpha, beta, k, region)
    y_ref, s_ref, dx_ref = _lrn_torch_path(x, g, local_size, alpha, beta, k, region)
    assert y.dtype == dx.dtype == torch.float32 and s.dtype == torch.float32 and s.is_contiguous()
    _close(s, s_ref)
    _close(y, y_ref)
    _close(dx, dx_ref)


@pytest.mark.parametrize(
    ("region", "local_size", "alpha", "beta", "k"),
    [(ACROSS, 5, 1e-4, 0.75, 2.0), (ACROSS, 3, 0.5, 0.6, 0.3), (WITHIN, 3, 1.0, 0.75, 1.0)],
)
def test_lrn_matches_float64_oracle(backend, region, local_size, alpha, beta, k):
    mods, device = backend
    shape = (2, 6, 4, 5) if region == ACROSS else (1, 2, 4, 5)
    x_np = np.random.default_rng(3).standard_normal(shape) * 2.0
    g_np = np.random.default_rng(4).standard_normal(shape)
    x, g = (
        torch.tensor(x_np, dtype=torch.float32, device=device),
        torch.tensor(g_np, dtype=torch.float32, device=device),
    )
    y, _, dx = _lrn_kernels(mods.lrn, x, g, local_size, alpha, beta, k, region)
    name = ref.ACROSS_CHANNELS if region == ACROSS else ref.WITHIN_CHANNEL
    _close(y, torch.tensor(ref.lrn(x_np, local_size, alpha, beta, k, name)))
    _close(dx, torch.tensor(ref.lrn_backward(x_np, g_np, local_size, alpha, beta, k, name)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("region", [ACROSS, WITHIN])
def test_lrn_half_precision_computes_in_float32(backend, dtype, region):
    # Squares of 300 overflow float16: the kernels must compute in float32 and round once at the end.
    mods, device = backend
    shape = (2, 8, 5, 5) if region == ACROSS else (1, 3, 5, 5)
    x, g = _randn(shape, 9, 300.0, dtype), _randn(shape, 10, 1.0, dtype)
    y, s, dx = _lrn_kernels(mods.lrn, x.to(device), g.to(device), 5, 1e-4, 0.75, 2.0, region)
    y_ref, s_ref, dx_ref = _lrn_torch_path(x, g, 5, 1e-4, 0.75, 2.0, region)
    assert y.dtype == dx.dtype == dtype and s.dtype == torch.float32
    assert torch.isfinite(y).all() and torch.isfinite(dx).all()
    _close(s, s_ref)
    _close(y, y_ref, dtype)
    _close(dx, dx_ref, dtype)


@pytest.mark.parametrize("local_size", [1, 3, 5])
def test_lrn_across_non_finite_matches_running_sum_emulation(backend, local_size):
    # NaN, +-inf and a square that overflows float32, in the input and in the gradient: the same
    # NaN/inf pattern as the torch path's emulation of Caffe's running channel sum, no host sync.
    mods, device = backend
    x, g = _randn((2, 20, 3, 4), 5), _randn((2, 20, 3, 4), 6)
    x[0, 3, 1, 0] = float("nan")
    x[1, 5, 2, 2] = float("inf")
    x[1, 12, 0, 1] = -float("inf")
    x[0, 8, 2, 3] = 3e19
    g[0, 10, 0, 0] = float("inf")
    for beta in (0.75, 0.6):
        got = _lrn_kernels(mods.lrn, x.to(device), g.to(device), local_size, 1.0, beta, 1.0, ACROSS)
        want = _lrn_torch_path(x, g, local_size, 1.0, beta, 1.0, ACROSS)
        for a, b in zip(got, want):
            assert torch.equal(a.isnan().cpu(), b.isnan()) and torch.equal(a.isinf().cpu(), b.isinf())
            _close(a, b)
    assert want[0].isnan().any() and want[2].isnan().any()


def test_lrn_across_caffe_running_sum_cases(backend):
    mods, device = backend
    # A NaN at channel 3 enters Caffe's running sum and never leaves: channels >= 3 - p are NaN.
    x = torch.ones(1, 9, 2, 2)
    x[0, 3, 1, 0] = float("nan")
    column = mods.lrn.lrn_forward(x.to(device), 3, 1.0, 0.75, 1.0, ACROSS)[0][0, :, 1, 0].cpu()
    assert torch.isfinite(column[:2]).all() and torch.isnan(column[2:]).all()
    # inf: scale inf (y = 0) inside the window, inf - inf = NaN once it has left it.
    x = torch.ones(1, 8, 1, 1)
    x[0, 2, 0, 0] = float("inf")
    column = mods.lrn.lrn_forward(x.to(device), 3, 1.0, 0.75, 1.0, ACROSS)[0].flatten().cpu()
    assert column[0].item() == pytest.approx((1.0 + 2.0 / 3.0) ** -0.75, rel=1e-6)
    assert column[1].item() == 0.0 and column[3].item() == 0.0
    assert torch.isnan(column[2]) and torch.isnan(column[4:]).all()
    # An overflowed window sum stays inf (inf - finite): every later channel is x / inf = 0.
    x = torch.tensor([1.5e19, 1.5e19, 1.0, 1.0, 1.0, 1.0]).view(1, 6, 1, 1)
    assert torch.equal(mods.lrn.lrn_forward(x.to(device), 3, 3.0, 0.75, 1.0, ACROSS)[0].flatten().cpu(), torch.zeros(6))


def test_lrn_within_nan_stays_in_its_window(backend):
    mods, device = backend
    x = torch.ones(1, 2, 7, 7)
    x[0, 0, 3, 3] = float("nan")
    y = mods.lrn.lrn_forward(x.to(device), 3, 1.0, 0.75, 1.0, WITHIN)[0].cpu()
    assert torch.isnan(y[0, 0, 2:5, 2:5]).all() and int(torch.isnan(y).sum()) == 9


@pytest.mark.parametrize("region", [ACROSS, WITHIN])
def test_lrn_channels_last_and_expanded_gradient(backend, region):
    # Strided tensors are read and written in place: y, S and dx keep empty_like(x)'s layout.
    mods, device = backend
    shape = (2, 7, 5, 6) if region == ACROSS else (1, 3, 5, 6)
    x = _randn(shape, 7).to(memory_format=torch.channels_last)
    g = torch.full((), 0.5).expand(shape)
    y, s, dx = _lrn_kernels(mods.lrn, x.to(device), g.to(device), 5, 0.5, 0.75, 1.0, region)
    assert y.stride() == x.stride() and dx.stride() == x.stride() and s.stride() == x.stride()
    for a, b in zip((y, s, dx), _lrn_torch_path(x, g, 5, 0.5, 0.75, 1.0, region)):
        _close(a, b)


# ---------------------------------------------------------------------------------------- Normalize

NORM_SHAPES = [(2, 5), (2, 4, 6), (2, 6, 3, 4), (1, 40, 9, 9)]  # the last: 2 channel chunks, 2 blocks


def _scale(shared: bool, channels: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.uniform(0.5, 20.0) if shared else rng.uniform(0.5, 20.0, channels), dtype=dtype)


def _normalize_torch_path(x, g, s, across, eps, caffe, input_grad=True, scale_grad=True):
    x, g, s = x.cpu(), g.cpu(), s.cpu()
    y, norm = torch.ops.caffenorm.normalize(x, s, across, eps, caffe)
    dx, ds = torch.ops.caffenorm.normalize_backward(g, x, s, norm, across, caffe, input_grad, scale_grad)
    return y, norm, dx, ds


def _normalize_kernels(mod, x, g, s, across, eps, caffe, input_grad=True, scale_grad=True):
    y, norm = mod.normalize_forward(x, s, across, eps)
    dx, ds = mod.normalize_backward(g, x, s, norm, across, caffe, input_grad, scale_grad)
    return y, norm, dx, ds


@pytest.mark.parametrize("caffe_backward", [False, True])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("across_spatial", [True, False])
@pytest.mark.parametrize("shape", NORM_SHAPES)
def test_normalize_matches_torch_path(backend, shape, across_spatial, shared, caffe_backward):
    mods, device = backend
    x, g, s = _randn(shape, 1), _randn(shape, 2), _scale(shared, shape[1], 3)
    got = _normalize_kernels(
        mods.normalize, x.to(device), g.to(device), s.to(device), across_spatial, 1e-6, caffe_backward
    )
    want = _normalize_torch_path(x, g, s, across_spatial, 1e-6, caffe_backward)
    magnitude = float(s.abs().max())
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
    assert got[0].stride() == want[0].stride()
    _close(got[0], want[0], scale=magnitude)
    _close(got[1], want[1])
    _close(got[2], want[2], scale=magnitude)
    _close(got[3], want[3], scale=float(g.abs().sum()))


@pytest.mark.parametrize("caffe_backward", [False, True])
@pytest.mark.parametrize("across_spatial", [True, False])
def test_normalize_matches_float64_oracle(backend, across_spatial, caffe_backward):
    mods, device = backend
    shape = (2, 6, 3, 4)
    x_np = np.random.default_rng(1).standard_normal(shape)
    g_np = np.random.default_rng(2).standard_normal(shape)
    s_np = np.random.default_rng(3).uniform(0.5, 20.0, shape[1])
    x, g, s = (torch.tensor(a, dtype=torch.float32, device=device) for a in (x_np, g_np, s_np))
    y, _, dx, ds = _normalize_kernels(mods.normalize, x, g, s, across_spatial, 1e-6, caffe_backward)
    backward = ref.normalize_backward_caffe if caffe_backward else ref.normalize_backward
    dx_ref, ds_ref = backward(x_np, s_np, g_np, across_spatial=across_spatial, eps=1e-6)
    _close(y, torch.tensor(ref.normalize(x_np, s_np, across_spatial=across_spatial, eps=1e-6)), scale=20.0)
    _close(dx, torch.tensor(dx_ref), scale=20.0)
    _close(ds, torch.tensor(ds_ref), scale=float(np.abs(g_np).sum()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("across_spatial", [True, False])
def test_normalize_half_precision(backend, dtype, across_spatial):
    mods, device = backend
    shape = (2, 64, 4, 4)
    x, g = _randn(shape, 9, 300.0, dtype), _randn(shape, 10, 1.0, dtype)
    s = torch.full((64,), 20.0, dtype=dtype)
    got = _normalize_kernels(mods.normalize, x.to(device), g.to(device), s.to(device), across_spatial, 1e-10, False)
    want = _normalize_torch_path(x, g, s, across_spatial, 1e-10, False)
    assert got[0].dtype == got[2].dtype == got[3].dtype == dtype and got[1].dtype == torch.float32
    assert all(torch.isfinite(t).all() for t in got)
    _close(got[0], want[0], dtype, scale=20.0)
    _close(got[1], want[1])
    _close(got[2], want[2], dtype, scale=20.0)
    _close(got[3], want[3], dtype, scale=float(g.float().abs().sum()))


@pytest.mark.parametrize(("input_grad", "scale_grad"), [(True, False), (False, True)])
@pytest.mark.parametrize("across_spatial", [True, False])
def test_normalize_backward_computes_only_what_is_asked(backend, across_spatial, input_grad, scale_grad):
    mods, device = backend
    x, g, s = _randn((2, 6, 3, 4), 1), _randn((2, 6, 3, 4), 2), _scale(False, 6, 3)
    got = _normalize_kernels(
        mods.normalize, x.to(device), g.to(device), s.to(device), across_spatial, 1e-6, True, input_grad, scale_grad
    )
    want = _normalize_torch_path(x, g, s, across_spatial, 1e-6, True, input_grad, scale_grad)
    assert got[2].shape == want[2].shape and got[3].shape == want[3].shape
    _close(got[2], want[2], scale=20.0)
    _close(got[3], want[3], scale=float(g.abs().sum()))


def test_normalize_non_finite_and_zero_cases(backend):
    mods, device = backend
    x = torch.ones(2, 3, 4, 4)
    x[0, 1, 2, 2] = float("nan")
    x[1, 0, 0, 0] = float("inf")
    g = _randn((2, 3, 4, 4), 4)
    s = torch.tensor(2.0)
    for across in (False, True):
        got = _normalize_kernels(mods.normalize, x.to(device), g.to(device), s.to(device), across, 1e-10, False)
        want = _normalize_torch_path(x, g, s, across, 1e-10, False)
        for a, b in zip(got, want):
            assert torch.equal(a.isnan().cpu(), b.isnan()) and torch.equal(a.isinf().cpu(), b.isinf())
            _close(a, b, scale=2.0)
    y = mods.normalize.normalize_forward(x.to(device), s.to(device), False, 1e-10)[0].cpu()
    assert torch.isnan(y[0, :, 2, 2]).all() and int(torch.isnan(y[0]).sum()) == 3
    # A zero vector is divided by sqrt(eps): 0, not NaN; Caffe's scale gradient at s = 0 is NaN (sum / s).
    zero = torch.zeros(1, 3, 2, 2, device=device)
    for across in (False, True):
        y, _, dx, ds = _normalize_kernels(
            mods.normalize, zero, torch.ones_like(zero), torch.zeros(3, device=device), across, 1e-10, True
        )
        assert torch.equal(y.cpu(), torch.zeros(1, 3, 2, 2)) and torch.isfinite(dx).all() and torch.isnan(ds).all()


def test_normalize_channels_last_and_strided_scale(backend):
    mods, device = backend
    x = _randn((2, 6, 3, 4), 1).to(memory_format=torch.channels_last)
    g = _randn((2, 6, 3, 4), 2)
    s = _scale(False, 12, 3)[::2]  # a non-contiguous (C,) view
    for across in (False, True):
        got = _normalize_kernels(mods.normalize, x.to(device), g.to(device), s.to(device), across, 1e-6, False)
        want = _normalize_torch_path(x, g, s, across, 1e-6, False)
        assert got[0].stride() == want[0].stride()
        for a, b in zip(got, want):
            _close(a, b, scale=float(g.abs().sum()))


# ---------------------------------------------------------------------------------- BatchNorm + Scale

BN_SHAPES = [(2, 3, 4, 5), (4, 3), (3, 5, 7), (2, 3, 45, 50)]  # the last: 4500 values a channel, 3 blocks


def _bn_blobs(channels: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(5)
    return [
        torch.tensor(rng.uniform(0, 5, channels), dtype=torch.float32),
        torch.tensor(rng.uniform(1, 6, channels), dtype=torch.float32),
        torch.tensor([3.0]),
    ]


def _bn_run(fn, x, blobs, train, affine, g, dtype=torch.float32):
    """(y, grads of x[, w, b], blobs after) of ``fn`` with Caffe's BatchNorm signature."""
    c = x.shape[1]
    x = x.detach().clone().to(dtype).requires_grad_(True)
    w = torch.linspace(0.5, 2.0, c).to(x.device, dtype).requires_grad_(True) if affine else None
    b = torch.linspace(-1.0, 1.0, c).to(x.device, dtype).requires_grad_(True) if affine else None
    blobs = [t.clone().to(x.device) for t in blobs]
    y = fn(x, *blobs, not train, 0.9, 1e-5, w, b, None)
    grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], g.to(x.device, dtype))
    return y, grads, blobs


def _bn_torch_path(x, blobs, train, affine, g, dtype=torch.float32):
    def fn(x, m, v, s, use_global, maf, eps, w, b, stats):
        return caffenorm.functional.batch_norm(x, m, v, s, use_global, maf, eps, w, b)

    return _bn_run(fn, x.cpu(), blobs, train, affine, g.cpu(), dtype)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_matches_torch_path(backend, shape, train, affine):
    # A mean offset of 100 (the statistics must not cancel) and Caffe's blob updates in training.
    mods, device = backend
    x, g = _randn(shape, 1, 3.0) + 100.0, _randn(shape, 2)
    blobs = _bn_blobs(shape[1])
    y, grads, after = _bn_run(mods.batch_norm.batch_norm, x.to(device), blobs, train, affine, g)
    y_ref, grads_ref, after_ref = _bn_torch_path(x, blobs, train, affine, g)
    assert y.dtype == y_ref.dtype and y.stride() == y_ref.stride()
    for a, b in zip((y, *grads, *after), (y_ref, *grads_ref, *after_ref)):
        assert a.shape == b.shape and a.dtype == b.dtype
        _close(a, b, scale=max(1.0, float(b.abs().max())))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_half_precision(backend, dtype, train):
    mods, device = backend
    x, g = _randn((2, 4, 5, 5), 3, 300.0), _randn((2, 4, 5, 5), 4)
    blobs = _bn_blobs(4)
    y, grads, after = _bn_run(mods.batch_norm.batch_norm, x.to(device), blobs, train, True, g, dtype)
    y_ref, grads_ref, after_ref = _bn_torch_path(x, blobs, train, True, g, dtype)
    assert y.dtype == dtype and all(t.dtype == dtype for t in grads)
    for a, b in zip((y, *grads), (y_ref, *grads_ref)):
        _close(a, b, dtype, scale=max(1.0, float(b.float().abs().max())))
    for a, b in zip(after, after_ref):
        _close(a, b, scale=max(1.0, float(b.abs().max())))


def test_batch_norm_nan_and_layout(backend):
    mods, device = backend
    x = _randn((2, 3, 4, 4), 5)
    x[0, 1, 2, 2] = float("nan")
    g = _randn((2, 3, 4, 4), 6)
    for train in (True, False):  # batch statistics: the whole channel is NaN; global: one value
        y = _bn_run(mods.batch_norm.batch_norm, x.to(device), _bn_blobs(3), train, True, g)[0].detach().cpu()
        y_ref = _bn_torch_path(x, _bn_blobs(3), train, True, g)[0].detach()
        assert torch.equal(y.isnan(), y_ref.isnan()) and int(y.isnan().sum()) == (32 if train else 1)
    x = _randn((2, 3, 4, 5), 7).to(memory_format=torch.channels_last)
    y, grads, _ = _bn_run(
        mods.batch_norm.batch_norm, x.to(device), _bn_blobs(3), True, True, g[..., :1].expand(x.shape)
    )
    y_ref, grads_ref, _ = _bn_torch_path(x, _bn_blobs(3), True, True, g[..., :1].expand(x.shape))
    assert y.stride() == x.stride()
    for a, b in zip((y, *grads), (y_ref, *grads_ref)):
        _close(a, b, scale=10.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["plain", "affine", "s=0", "channels_last", "nan"])
def test_batch_norm_inference_derives_the_statistics_in_the_kernel(backend, case, dtype, monkeypatch):
    """Eval without autograd is one launch reading Caffe's three blobs (f = 0 if s == 0 else 1/s):
    nothing else is launched, and it equals the torch path."""
    mods, device = backend
    shape = (2, 3, 45, 50) if case == "plain" else (2, 5, 4, 6)
    x = _randn(shape, 8, 30.0) + 40.0
    if case == "nan":
        x[1, 2, 1, 1] = float("nan")
    if case == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    blobs = _bn_blobs(shape[1])
    if case == "s=0":
        blobs[2] = torch.zeros(1)
    affine = case != "plain"
    w = torch.linspace(0.5, 2.0, shape[1]) if affine else None
    b = torch.linspace(-1.0, 1.0, shape[1]) if affine else None
    derived = []
    module = sys.modules["caffenorm.functional.batch_norm"]
    monkeypatch.setattr(module, "global_stats", lambda *a, _f=module.global_stats: derived.append(1) or _f(*a))
    with torch.no_grad():
        y = mods.batch_norm.batch_norm(
            x.to(device, dtype), *(t.to(device) for t in blobs), True, 0.9, 1e-5,
            None if w is None else w.to(device, dtype), None if b is None else b.to(device, dtype), None,
        )
        y_ref = caffenorm.functional.batch_norm(x.to(dtype), *blobs, True, 0.9, 1e-5,
                                                None if w is None else w.to(dtype), None if b is None else b.to(dtype))
    assert derived == [1]  # only the torch path derived them (as a separate step)
    assert y.dtype == dtype and y.stride() == x.stride()
    _close(y, y_ref, dtype, scale=max(1.0, float(y_ref.float().nan_to_num().abs().max())))
    assert torch.equal(y.cpu().isnan(), y_ref.isnan())


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_batch_norm_fits_leaves_special_cases_to_the_torch_path():
    assert kernels.batch_norm_fits(torch.ones(2, 3, 2, 2), use_global_stats=False)
    assert not kernels.batch_norm_fits(torch.ones(1, 3), use_global_stats=False)  # m = 1: Caffe's special case
    assert kernels.batch_norm_fits(torch.ones(1, 3), use_global_stats=True)
    assert not kernels.batch_norm_fits(torch.ones(0, 3, 2, 2), use_global_stats=True)
    traced = []
    torch.jit.trace(lambda t: traced.append(kernels.batch_norm_fits(t, True)) or t, torch.ones(2, 3), check_trace=False)
    assert traced == [False]  # tracers keep the torch path (BatchNorm is no custom op)


# ------------------------------------------------------------------------------------- dispatch hook


def test_dispatch_is_cuda_only_and_can_be_switched_off(monkeypatch):
    assert os.environ.get("TRITON_INTERPRET") == TRITON_INTERPRET_BEFORE  # conftest left no trace
    cpu = torch.ones(1, 3, 2, 2)
    assert not kernels.available(cpu) and not kernels.available(cpu.to("meta"))
    monkeypatch.setenv("CAFFENORM_TRITON", "0")
    assert not kernels.enabled()
    monkeypatch.setenv("CAFFENORM_TRITON", "1")
    assert kernels.enabled() and kernels.triton_importable()
    if CUDA:
        assert kernels.available(cpu.cuda()) and not kernels.available(cpu.cuda().double())
        monkeypatch.setenv("CAFFENORM_TRITON", "0")
        assert not kernels.available(cpu.cuda())


def _layers_forward_backward(x, layers):
    out = []
    for layer in layers:
        xi = x.detach().clone().requires_grad_(True)
        y = layer(xi)
        params = [p for p in layer.parameters() if p.requires_grad]
        grads = torch.autograd.grad(y, [xi, *params], torch.ones_like(y) * 0.3 + xi.detach() * 0.1)
        out.append((y.detach(), *grads))
    return out


def _layers():
    bn_eval = caffenorm.BatchNorm(6).eval()
    bn_eval.load_caffe_blobs([torch.linspace(0, 1, 6), torch.linspace(1, 2, 6), torch.tensor([2.0])])
    return [
        caffenorm.LRN(5, 1e-4, 0.75, 2.0),
        caffenorm.LRN(3, 0.5, 0.6, 2.0, "WITHIN_CHANNEL"),
        caffenorm.Normalize(6, across_spatial=False, channel_shared=False, scale=20.0),
        caffenorm.Normalize(6, across_spatial=True, channel_shared=True, scale=3.0),
        caffenorm.BatchNormScale(caffenorm.BatchNorm(6), caffenorm.Scale(6, bias_term=True)).train(),
        bn_eval,
    ]


def test_layers_take_the_kernels_through_the_hook(interpreted, dispatch_to):
    # The functional layer's hook, with dispatch widened to CPU tensors and the interpreter kernels:
    # modules, autograd and the scale gradient give the torch path's results.
    x = _randn((1, 6, 3, 4), 11)
    layers = _layers()
    want = _layers_forward_backward(x, layers)
    dispatch_to(interpreted)
    assert sys.modules["caffenorm.kernels.lrn_triton"] is interpreted.lrn
    got = _layers_forward_backward(x, layers)
    for got_layer, want_layer in zip(got, want):
        for a, b in zip(got_layer, want_layer):
            _close(a, b, scale=20.0)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_layers_on_cuda_match_cpu(monkeypatch):
    # Native dispatch: CUDA tensors take the compiled kernels, CAFFENORM_TRITON=0 the torch path.
    x = _randn((2, 6, 5, 7), 11)
    want = _layers_forward_backward(x, _layers())
    cuda_layers = [layer.cuda() for layer in _layers()]
    got = _layers_forward_backward(x.cuda(), cuda_layers)
    monkeypatch.setenv("CAFFENORM_TRITON", "0")
    fallback = _layers_forward_backward(x.cuda(), cuda_layers)
    for got_layer, fb_layer, want_layer in zip(got, fallback, want):
        for a, f, b in zip(got_layer, fb_layer, want_layer):
            _close(a, b, scale=20.0)
            _close(f, b, scale=20.0)


# ---------------------------------------------------------------------------- ahead-of-time compile


def test_kernels_compile_for_sm90():
    # The interpreter accepts programs the compiler rejects: compile every kernel, specialised as
    # for real shapes, down to a cubin for sm_90 with Triton's own ptxas.  No GPU needed; in a
    # subprocess, as this process may hold triton's interpreter flavour (see conftest.py).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("compile_sm90.py")
    done = subprocess.run(
        [sys.executable, str(script)], check=False, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "compiled for sm_90" in done.stdout or done.stdout.startswith("SKIP")
