"""Tests pinning the float64 numpy oracle in tests/reference/caffe_ref.py.

These test the *reference itself* (not caffenorm): hand-computed / closed-form
cases, central finite differences for every backward, PyTorch's independent
LRN implementation for ACROSS_CHANNELS, and the known Caffe-vs-true gradient
discrepancy of SSD Normalize (semantics.md section 3.1).
"""

import math
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from reference import caffe_ref as ref  # noqa: E402

RTOL = 1e-12  # float64 closed-form comparisons
FD_RTOL = 1e-6  # finite differences
FD_ATOL = 1e-7


def close(actual, expected, rtol=RTOL, atol=0.0):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def fd_grad(f, x, dy, h=1e-6):
    """Central-difference gradient of L(x) = sum(dy * f(x)) w.r.t. x (float64)."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp = x.copy()
        xm = x.copy()
        xp[i] += h
        xm[i] -= h
        g[i] = (np.sum(dy * f(xp)) - np.sum(dy * f(xm))) / (2.0 * h)
    return g


def fd_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=FD_RTOL, atol=FD_ATOL)


# ==========================================================================
# LRN
# ==========================================================================

def test_lrn_across_hand_1x3x1x1():
    # n=3, p=1: windows {0,1}, {0,1,2}, {1,2}; alpha divided by n=3; k used.
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    alpha, beta, k = 0.6, 0.75, 2.0
    s0 = k + alpha / 3 * (1 + 4)        # 3.0
    s1 = k + alpha / 3 * (1 + 4 + 9)    # 4.8
    s2 = k + alpha / 3 * (4 + 9)        # 4.6
    assert s0 == pytest.approx(3.0) and s1 == pytest.approx(4.8) and s2 == pytest.approx(4.6)
    expected = np.array([1 * s0 ** -0.75, 2 * s1 ** -0.75, 3 * s2 ** -0.75]).reshape(1, 3, 1, 1)
    y = ref.lrn(x, local_size=3, alpha=alpha, beta=beta, k=k)
    assert y.dtype == np.float64 and y.shape == (1, 3, 1, 1)
    close(y, expected)
    # k matters for ACROSS
    y_k1 = ref.lrn(x, local_size=3, alpha=alpha, beta=beta, k=1.0)
    assert not np.allclose(y, y_k1)


def test_lrn_across_defaults_and_int_input():
    # defaults n=5, alpha=1, beta=0.75, k=1; integer input cast to float64.
    x = np.array([1, 2, 3]).reshape(1, 3, 1, 1)
    s = 1 + 1.0 / 5 * 14  # n=5 > C=3: every window is all channels
    close(ref.lrn(x), (np.array([1, 2, 3]) * s ** -0.75).reshape(1, 3, 1, 1))


def test_lrn_local_size_1():
    x = np.array([-2.0, 0.5, 3.0]).reshape(1, 1, 1, 3)
    alpha, beta, k = 0.3, 0.6, 1.5
    close(ref.lrn(x, 1, alpha, beta, k), x * (k + alpha * x ** 2) ** -beta)
    # WITHIN with n=1: 1 + alpha * x^2, k ignored
    close(ref.lrn(x, 1, alpha, beta, k, "WITHIN_CHANNEL"), x * (1 + alpha * x ** 2) ** -beta)


def test_lrn_within_hand_2x2_k_ignored():
    # n=3 on a 2x2 image: every 3x3 window (zero padded) covers all four pixels,
    # sum x^2 = 1+4+9+16 = 30, divisor n^2 = 9 regardless of padding:
    # scale = 1 + 0.9/9*30 = 4, y = x * 4^-0.5 = x/2.
    x = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    for k in (1.0, 7.0, 0.0):
        y = ref.lrn(x, local_size=3, alpha=0.9, beta=0.5, k=k, norm_region="WITHIN_CHANNEL")
        close(y, x / 2.0)
    # not the count_include_pad=False divisor (4), not k added
    wrong_div = x * (1 + 0.9 / 4 * 30) ** -0.5
    y = ref.lrn(x, 3, 0.9, 0.5, 7.0, "WITHIN_CHANNEL")
    assert not np.allclose(y, wrong_div)


def test_lrn_within_border_divisor_1x1x1x3():
    # 1x3 image, n=3: windows (in-image) cols {0,1}, {0,1,2}, {1,2}; divisor 9 always.
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 1, 1, 3)
    alpha, beta = 1.8, 0.75
    s = np.array([1 + alpha / 9 * 5, 1 + alpha / 9 * 14, 1 + alpha / 9 * 13])
    close(ref.lrn(x, 3, alpha, beta, 3.0, "WITHIN_CHANNEL"),
          (np.array([1.0, 2.0, 3.0]) * s ** -beta).reshape(1, 1, 1, 3))


def test_lrn_within_channels_independent():
    # WITHIN never mixes channels: each channel equals the lrn of that channel alone.
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 3, 4))
    y = ref.lrn(x, 3, 1.3, 0.7, 2.0, "WITHIN_CHANNEL")
    for c in range(3):
        close(y[:, c:c + 1], ref.lrn(x[:, c:c + 1], 3, 1.3, 0.7, 5.0, "WITHIN_CHANNEL"))


@pytest.mark.parametrize("shape,n,alpha,beta,k", [
    ((1, 3, 1, 1), 3, 1.0, 0.75, 1.0),
    ((2, 5, 3, 4), 5, 1e-4, 0.75, 2.0),
    ((2, 4, 2, 3), 3, 0.7, 0.6, 1.5),
    ((1, 2, 3, 3), 7, 2.0, 1.2, 0.5),   # n > C
    ((3, 6, 2, 2), 1, 1.0, 0.75, 1.0),
])
def test_lrn_across_matches_torch(shape, n, alpha, beta, k):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(sum(shape) * 31 + n)
    x = rng.standard_normal(shape) * 2.0
    yt = torch.nn.functional.local_response_norm(
        torch.from_numpy(x), n, alpha=alpha, beta=beta, k=k).numpy()
    close(ref.lrn(x, n, alpha, beta, k), yt, rtol=1e-12, atol=1e-15)


LRN_GRAD_CASES = [
    ("ACROSS_CHANNELS", (2, 4, 2, 2), 3, 1.0, 0.75, 1.0),
    ("ACROSS_CHANNELS", (1, 5, 2, 3), 5, 0.8, 0.6, 2.0),
    ("ACROSS_CHANNELS", (1, 2, 2, 2), 7, 1.5, 1.1, 0.7),
    ("WITHIN_CHANNEL", (1, 2, 3, 3), 3, 1.0, 0.75, 1.0),
    ("WITHIN_CHANNEL", (2, 1, 3, 4), 3, 2.5, 0.6, 4.0),
    ("WITHIN_CHANNEL", (1, 1, 4, 3), 5, 1.2, 1.3, 0.5),
]


@pytest.mark.parametrize("region,shape,n,alpha,beta,k", LRN_GRAD_CASES)
def test_lrn_backward_finite_differences(region, shape, n, alpha, beta, k):
    rng = np.random.default_rng(7 + n + len(region))
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    dx = ref.lrn_backward(x, dy, n, alpha, beta, k, region)
    num = fd_grad(lambda z: ref.lrn(z, n, alpha, beta, k, region), x, dy)
    fd_close(dx, num)


def test_lrn_backward_across_matches_caffe_closed_form():
    # Caffe CrossChannelBackward_cpu:
    # dx_i = g_i s_i^-beta - (2 alpha beta / n) x_i sum_{j in W(i)} g_j y_j / s_j
    rng = np.random.default_rng(3)
    N, C, H, W = 2, 6, 2, 3
    n, alpha, beta, k = 5, 1.7, 0.8, 1.3
    p = (n - 1) // 2
    x = rng.standard_normal((N, C, H, W))
    g = rng.standard_normal((N, C, H, W))
    sq = np.pad(x ** 2, ((0, 0), (p, p), (0, 0), (0, 0)))
    s = k + alpha / n * np.stack([sq[:, c:c + n].sum(axis=1) for c in range(C)], axis=1)
    y = x * s ** -beta
    t = np.pad(g * y / s, ((0, 0), (p, p), (0, 0), (0, 0)))
    win = np.stack([t[:, c:c + n].sum(axis=1) for c in range(C)], axis=1)
    expected = g * s ** -beta - 2 * alpha * beta / n * x * win
    close(ref.lrn(x, n, alpha, beta, k), y)
    close(ref.lrn_backward(x, g, n, alpha, beta, k), expected, rtol=1e-11, atol=1e-14)


def test_lrn_backward_across_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 5, 2, 2))
    g = rng.standard_normal((2, 5, 2, 2))
    xt = torch.from_numpy(x).requires_grad_(True)
    torch.nn.functional.local_response_norm(xt, 3, alpha=0.9, beta=0.7, k=1.4).backward(
        torch.from_numpy(g))
    close(ref.lrn_backward(x, g, 3, 0.9, 0.7, 1.4), xt.grad.numpy(), rtol=1e-11, atol=1e-14)


def test_lrn_invalid():
    x4 = np.ones((1, 3, 2, 2))
    with pytest.raises(ValueError):
        ref.lrn(x4, local_size=4)
    with pytest.raises(ValueError):
        ref.lrn(x4, local_size=0)
    with pytest.raises(ValueError):
        ref.lrn(x4, local_size=3.0)
    with pytest.raises(ValueError):
        ref.lrn(np.ones((3, 2, 2)), local_size=3)
    with pytest.raises(ValueError):
        ref.lrn(np.ones((1, 1, 3, 2, 2)), local_size=3)
    with pytest.raises(ValueError):
        ref.lrn(x4, local_size=3, norm_region="ACROSS")
    with pytest.raises(ValueError):
        ref.lrn_backward(x4, np.ones((1, 3, 2, 1)), local_size=3)
    with pytest.raises(ValueError):
        ref.lrn_backward(x4, x4, local_size=2, norm_region="WITHIN_CHANNEL")


# ==========================================================================
# BatchNorm
# ==========================================================================

def test_bn_global_factor_zero_gives_x_over_sqrt_eps():
    x = np.array([[1.0, -2.0], [3.0, 0.5]]).reshape(2, 2, 1, 1)
    mean_sum = np.array([5.0, -7.0])
    var_sum = np.array([3.0, 11.0])
    eps = 1e-5
    y, m2, v2, f2 = ref.batch_norm(x, mean_sum, var_sum, 0.0, use_global_stats=True, eps=eps)
    assert np.all(np.isfinite(y))
    close(y, x / math.sqrt(eps))
    close(m2, mean_sum)
    close(v2, var_sum)
    assert f2.shape == (1,) and f2[0] == 0.0
    dx = ref.batch_norm_backward(x, np.ones_like(x), mean_sum, var_sum, np.array([0.0]),
                                 use_global_stats=True, eps=eps)
    close(dx, np.full_like(x, 1 / math.sqrt(eps)))


def test_bn_global_factor_999_9():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 2))  # (N, C, L)
    mean_sum = np.array([999.9 * 0.5, 999.9 * -1.0])   # mu = [0.5, -1]
    var_sum = np.array([999.9 * 4.0, 999.9 * 0.25])     # var = [4, 0.25]
    eps = 1e-3
    y, m2, v2, f2 = ref.batch_norm(x, mean_sum, var_sum, np.array([999.9]),
                                   use_global_stats=True, moving_average_fraction=0.5, eps=eps)
    expected = np.empty_like(x)
    expected[:, 0] = (x[:, 0] - 0.5) / math.sqrt(4.0 + eps)
    expected[:, 1] = (x[:, 1] + 1.0) / math.sqrt(0.25 + eps)
    close(y, expected)
    close(m2, mean_sum)
    close(v2, var_sum)
    close(f2, [999.9])


def test_bn_train_hand_values_and_update():
    # channel 0 over N=2 x spatial 2: [1, 2, 3, 4] -> mean 2.5, biased var 1.25,
    # unbiased 5/3 (m = 4); channel 1: [0, 0, 2, 2] -> mean 1, var 1, unbiased 4/3.
    x = np.array([[[1.0, 2.0], [0.0, 0.0]],
                  [[3.0, 4.0], [2.0, 2.0]]])  # (N=2, C=2, L=2)
    eps = 1e-5
    lam = 0.9
    mean_sum = np.array([1.0, 2.0])
    var_sum = np.array([3.0, 4.0])
    y, m2, v2, f2 = ref.batch_norm(x, mean_sum, var_sum, 2.0, use_global_stats=False,
                                   moving_average_fraction=lam, eps=eps)
    exp_y = np.empty_like(x)
    exp_y[:, 0] = (x[:, 0] - 2.5) / math.sqrt(1.25 + eps)
    exp_y[:, 1] = (x[:, 1] - 1.0) / math.sqrt(1.0 + eps)
    close(y, exp_y)
    close(f2, [0.9 * 2.0 + 1.0])
    close(m2, [0.9 * 1.0 + 2.5, 0.9 * 2.0 + 1.0])
    close(v2, [0.9 * 3.0 + 5.0 / 3.0, 0.9 * 4.0 + 4.0 / 3.0])
    assert f2.shape == (1,)


def test_bn_train_two_steps_by_hand():
    lam = 0.999
    eps = 1e-5
    # step 1: (N=2, C=1, H=1, W=2) values [1, 3, 5, 7]: mean 4, biased var 5, unbiased 20/3
    x1 = np.array([1.0, 3.0, 5.0, 7.0]).reshape(2, 1, 1, 2)
    # step 2: values [0, 2, 2, 4]: mean 2, biased var 2, unbiased 8/3
    x2 = np.array([0.0, 2.0, 2.0, 4.0]).reshape(2, 1, 1, 2)
    _, m1, v1, f1 = ref.batch_norm(x1, np.zeros(1), np.zeros(1), np.zeros(1),
                                   use_global_stats=False, moving_average_fraction=lam, eps=eps)
    close(f1, [1.0])
    close(m1, [4.0])
    close(v1, [20.0 / 3.0])
    y2, m2, v2, f2 = ref.batch_norm(x2, m1, v1, f1, use_global_stats=False,
                                    moving_average_fraction=lam, eps=eps)
    close(y2, (x2 - 2.0) / math.sqrt(2.0 + eps))
    close(f2, [lam * 1.0 + 1.0])
    close(m2, [lam * 4.0 + 2.0])
    close(v2, [lam * 20.0 / 3.0 + 8.0 / 3.0])
    # global mode after the two steps uses the bias-corrected weighted averages
    mu = (lam * 4.0 + 2.0) / (lam + 1.0)
    var = (lam * 20.0 / 3.0 + 8.0 / 3.0) / (lam + 1.0)
    xt = np.array([10.0, -1.0]).reshape(1, 1, 1, 2)
    yg, *_ = ref.batch_norm(xt, m2, v2, f2, use_global_stats=True, eps=eps)
    close(yg, (xt - mu) / math.sqrt(var + eps))
    # after a single step the global stats are exactly the batch mean / unbiased var
    yg1, *_ = ref.batch_norm(xt, m1, v1, f1, use_global_stats=True, eps=eps)
    close(yg1, (xt - 4.0) / math.sqrt(20.0 / 3.0 + eps))


def test_bn_train_m_equals_1():
    # N=1, no spatial: m = 1 -> zero variance, no m/(m-1) correction, output all zero.
    x = np.array([[3.0, -4.0, 0.5]])
    mean_sum = np.array([1.0, 2.0, 3.0])
    var_sum = np.array([0.5, 0.25, 2.0])
    y, m2, v2, f2 = ref.batch_norm(x, mean_sum, var_sum, 5.0, use_global_stats=False,
                                   moving_average_fraction=0.5)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(v2))
    close(y, np.zeros_like(x), atol=0)
    close(m2, 0.5 * mean_sum + x[0])
    close(v2, 0.5 * var_sum)
    close(f2, [3.5])
    # same with a (1, C, 1, 1) input
    y4, m4, v4, f4 = ref.batch_norm(x.reshape(1, 3, 1, 1), mean_sum, var_sum, [5.0],
                                    use_global_stats=False, moving_average_fraction=0.5)
    close(y4, np.zeros((1, 3, 1, 1)), atol=0)
    close(v4, v2)
    close(m4, m2)


def test_bn_inputs_not_mutated():
    x = np.arange(8.0).reshape(2, 2, 2)
    ms, vs, f = np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([2.0])
    keep = (x.copy(), ms.copy(), vs.copy(), f.copy())
    ref.batch_norm(x, ms, vs, f, use_global_stats=False)
    for a, b in zip((x, ms, vs, f), keep):
        np.testing.assert_array_equal(a, b)


BN_GRAD_SHAPES = [(4, 3), (2, 2, 3), (2, 3, 2, 2), (1, 2, 2, 1, 3)]


@pytest.mark.parametrize("shape", BN_GRAD_SHAPES)
@pytest.mark.parametrize("use_global_stats", [True, False])
def test_bn_backward_finite_differences(shape, use_global_stats):
    rng = np.random.default_rng(len(shape) * 10 + int(use_global_stats))
    C = shape[1]
    x = rng.standard_normal(shape) * 1.5 + 0.3
    dy = rng.standard_normal(shape)
    mean_sum = rng.standard_normal(C) * 3.0
    var_sum = rng.uniform(0.5, 2.0, C) * 3.0
    factor = 3.0
    eps = 1e-3

    def f(z):
        return ref.batch_norm(z, mean_sum, var_sum, factor,
                              use_global_stats=use_global_stats, eps=eps)[0]

    dx = ref.batch_norm_backward(x, dy, mean_sum, var_sum, factor,
                                 use_global_stats=use_global_stats, eps=eps)
    fd_close(dx, fd_grad(f, x, dy))


def test_bn_backward_batch_closed_form():
    # dx = (dy - mean(dy) - mean(dy*xhat)*xhat)/sqrt(var+eps), vectorised independently
    rng = np.random.default_rng(21)
    x = rng.standard_normal((3, 2, 2, 2))
    dy = rng.standard_normal((3, 2, 2, 2))
    eps = 1e-5
    axes = (0, 2, 3)
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    xhat = (x - mu) / np.sqrt(var + eps)
    expected = (dy - dy.mean(axis=axes, keepdims=True)
                - (dy * xhat).mean(axis=axes, keepdims=True) * xhat) / np.sqrt(var + eps)
    close(ref.batch_norm(x, np.zeros(2), np.zeros(2), 0.0, use_global_stats=False, eps=eps)[0],
          xhat, rtol=1e-12, atol=1e-14)
    close(ref.batch_norm_backward(x, dy, np.zeros(2), np.zeros(2), 0.0,
                                  use_global_stats=False, eps=eps),
          expected, rtol=1e-11, atol=1e-14)


def test_bn_invalid():
    ms, vs = np.zeros(2), np.zeros(2)
    with pytest.raises(ValueError):
        ref.batch_norm(np.ones(2), ms, vs, 1.0, use_global_stats=True)
    with pytest.raises(ValueError):
        ref.batch_norm(np.ones((2, 3)), ms, vs, 1.0, use_global_stats=True)
    with pytest.raises(ValueError):
        ref.batch_norm(np.ones((2, 2)), ms, vs, np.array([1.0, 2.0]), use_global_stats=False)
    with pytest.raises(ValueError):
        ref.batch_norm(np.ones((2, 2)), np.zeros((2, 1)), vs, 1.0, use_global_stats=False)
    with pytest.raises(ValueError):
        ref.batch_norm_backward(np.ones((2, 2)), np.ones((2, 3)), ms, vs, 1.0,
                                use_global_stats=True)


# ==========================================================================
# Scale / Bias
# ==========================================================================

def test_scale_num_axes_0_scalar():
    x = np.arange(24.0).reshape(2, 3, 4) - 5.0
    g = np.array(2.5)  # shape (): num_axes 0
    for axis in (1, 0, -1, 2):
        close(ref.scale(x, g, axis=axis), x * 2.5)
    close(ref.scale(x, g, bias=np.array(-1.0)), x * 2.5 - 1.0)
    dx, dg, db = ref.scale_backward(x, g, np.ones_like(x), has_bias=True)
    close(dx, np.full_like(x, 2.5))
    assert dg.shape == () and db.shape == ()
    close(dg, x.sum())
    close(db, 24.0)


def test_scale_last_two_axes_and_negative_axis():
    x = np.arange(24.0).reshape(2, 3, 4) * 0.5 - 3.0
    g = np.arange(12.0).reshape(3, 4) + 1.0
    y = ref.scale(x, g, axis=1)           # num_axes -1 style: span to the end
    assert y[1, 2, 3] == x[1, 2, 3] * 12.0
    assert y[0, 1, 0] == x[0, 1, 0] * 5.0
    close(y, x * g[None, :, :])
    close(ref.scale(x, g, axis=-2), y)    # -2 + 3 == 1
    g1 = np.array([1.0, -2.0, 3.0, 0.5])
    close(ref.scale(x, g1, axis=-1), x * g1[None, None, :])
    close(ref.scale(x, g1, axis=2), x * g1[None, None, :])


def test_scale_axis_0_and_full_shape_and_middle():
    x = np.arange(48.0).reshape(2, 3, 2, 4) - 20.0
    g0 = np.array([3.0, -1.0])
    close(ref.scale(x, g0, axis=0), x * g0[:, None, None, None])
    gfull = np.linspace(-1, 1, 48).reshape(x.shape)
    close(ref.scale(x, gfull, axis=0), x * gfull)
    gc = np.array([1.0, 2.0, 4.0])  # default axis=1, num_axes 1 (per channel)
    b = np.array([0.5, -0.5, 1.0])
    close(ref.scale(x, gc), x * gc[None, :, None, None])
    close(ref.scale(x, gc, bias=b), x * gc[None, :, None, None] + b[None, :, None, None])
    gm = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # axes 1..2 of a 4-D input
    close(ref.scale(x, gm, axis=1), x * gm[None, :, :, None])


def test_bias_forward_hand():
    x = np.zeros((2, 3, 2))
    b = np.array([1.0, 2.0, 3.0])
    y = ref.bias(x, b)
    assert y[1, 2, 1] == 3.0 and y[0, 0, 0] == 1.0
    close(ref.bias(x, np.array(4.0)), x + 4.0)
    close(ref.bias(x, np.array([1.0, -1.0]), axis=-1), x + np.array([1.0, -1.0]))
    close(ref.bias(x, np.arange(6.0).reshape(3, 2), axis=-2), x + np.arange(6.0).reshape(3, 2))


SCALE_CASES = [
    ((2, 3, 2, 2), (3,), 1),
    ((2, 3, 4), (3, 4), 1),
    ((2, 3, 4), (3, 4), -2),
    ((2, 3, 4), (4,), -1),
    ((2, 3, 2), (2,), 0),
    ((3, 2), (), 1),
    ((2, 2, 3), (2, 2, 3), 0),
]


@pytest.mark.parametrize("xshape,gshape,axis", SCALE_CASES)
@pytest.mark.parametrize("has_bias", [False, True])
def test_scale_backward_finite_differences(xshape, gshape, axis, has_bias):
    rng = np.random.default_rng(len(xshape) * 7 + len(gshape) + int(has_bias))
    x = rng.standard_normal(xshape)
    g = np.asarray(rng.standard_normal(gshape))
    b = np.asarray(rng.standard_normal(gshape)) if has_bias else None
    dy = rng.standard_normal(xshape)
    dx, dg, db = ref.scale_backward(x, g, dy, axis=axis, has_bias=has_bias)
    fd_close(dx, fd_grad(lambda z: ref.scale(z, g, axis=axis, bias=b), x, dy))
    assert dg.shape == g.shape
    fd_close(dg, fd_grad(lambda z: ref.scale(x, z, axis=axis, bias=b), g, dy))
    if has_bias:
        assert db.shape == g.shape
        fd_close(db, fd_grad(lambda z: ref.scale(x, g, axis=axis, bias=z), b, dy))
    else:
        assert db is None


@pytest.mark.parametrize("xshape,gshape,axis", SCALE_CASES)
def test_bias_backward_finite_differences(xshape, gshape, axis):
    rng = np.random.default_rng(len(xshape) * 3 + len(gshape))
    x = rng.standard_normal(xshape)
    b = np.asarray(rng.standard_normal(gshape))
    dy = rng.standard_normal(xshape)
    dx, db = ref.bias_backward(x, b, dy, axis=axis)
    close(dx, dy)
    assert db.shape == b.shape
    fd_close(db, fd_grad(lambda z: ref.bias(x, z, axis=axis), b, dy))


def test_scale_bias_invalid():
    x = np.ones((2, 3, 4))
    with pytest.raises(ValueError):
        ref.scale(x, np.ones(4))                 # axis 1 has size 3
    with pytest.raises(ValueError):
        ref.scale(x, np.ones((3, 5)))
    with pytest.raises(ValueError):
        ref.scale(x, np.ones((4, 1)), axis=2)    # runs past the last axis
    with pytest.raises(ValueError):
        ref.scale(x, np.ones(3), axis=3)         # out of range
    with pytest.raises(ValueError):
        ref.scale(x, np.ones(2), axis=-4)        # out of range
    with pytest.raises(ValueError):
        ref.scale(x, np.ones(3), bias=np.ones(4))
    with pytest.raises(ValueError):
        ref.scale(x, np.ones(3), bias=np.array(1.0))
    with pytest.raises(ValueError):
        ref.scale_backward(x, np.ones(3), np.ones((2, 3, 3)))
    with pytest.raises(ValueError):
        ref.bias(x, np.ones(5), axis=1)
    with pytest.raises(ValueError):
        ref.bias_backward(x, np.ones(4), np.ones((2, 3, 4)), axis=1)


# ==========================================================================
# Normalize (SSD)
# ==========================================================================

def _x_two_positions():
    # (N=1, C=2, H=1, W=2): position 0 = (3, 4) (norm 5), position 1 = (6, 8) (norm 10)
    x = np.zeros((1, 2, 1, 2))
    x[0, :, 0, 0] = [3.0, 4.0]
    x[0, :, 0, 1] = [6.0, 8.0]
    return x


def test_normalize_across_vs_within_hand():
    x = _x_two_positions()
    # across_spatial: one norm sqrt(9+16+36+64) = sqrt(125)
    close(ref.normalize(x, np.array(1.0), across_spatial=True, eps=0.0), x / math.sqrt(125.0))
    close(ref.normalize(x, np.array(1.0), eps=1e-10), x / math.sqrt(125.0 + 1e-10))
    # per position: norms 5 and 10
    y = ref.normalize(x, np.array(1.0), across_spatial=False, eps=0.0)
    close(y[0, :, 0, 0], [0.6, 0.8])
    close(y[0, :, 0, 1], [0.6, 0.8])


def test_normalize_shared_vs_per_channel_hand():
    x = _x_two_positions()
    y_sh = ref.normalize(x, np.array(2.0), across_spatial=False, eps=0.0)
    close(y_sh[0, :, 0, :], [[1.2, 1.2], [1.6, 1.6]])
    y_pc = ref.normalize(x, np.array([2.0, 10.0]), across_spatial=False, eps=0.0)
    close(y_pc[0, :, 0, :], [[1.2, 1.2], [8.0, 8.0]])
    y_pc_a = ref.normalize(x, np.array([2.0, 10.0]), across_spatial=True, eps=0.0)
    r = math.sqrt(125.0)
    close(y_pc_a[0, :, 0, :], [[6 / r, 12 / r], [40 / r, 80 / r]])


def test_normalize_zero_vector_no_nan():
    for shape in [(2, 3), (1, 3, 2), (2, 3, 2, 2)]:
        x = np.zeros(shape)
        for across in (True, False):
            for s in (np.array(20.0), np.array([1.0, 2.0, 3.0])):
                y = ref.normalize(x, s, across_spatial=across)
                assert np.all(np.isfinite(y))
                close(y, np.zeros(shape), atol=0)
                dy = np.ones(shape)
                dx, ds = ref.normalize_backward(x, s, dy, across_spatial=across)
                # at x = 0: dx = s * dy / sqrt(eps); dscale = 0
                sc = s if s.ndim == 0 else s.reshape((1, 3) + (1,) * (len(shape) - 2))
                close(dx, sc * dy / math.sqrt(1e-10))
                close(ds, np.zeros_like(s), atol=0)
                dxc, dsc = ref.normalize_backward_caffe(x, s, dy, across_spatial=across)
                close(dxc, dx)
                close(dsc, np.zeros_like(s), atol=0)


def test_normalize_eps_inside_sqrt():
    x = np.array([[1e-6, 0.0]])
    eps = 1e-10
    y = ref.normalize(x, np.array(1.0), eps=eps)
    close(y, x / math.sqrt(1e-12 + eps))
    outside = x / (math.sqrt(1e-12) + eps)
    assert not np.allclose(y, outside, rtol=1e-3)
    assert y[0, 0] == pytest.approx(1e-6 / math.sqrt(1.01e-10), rel=1e-12)


def test_normalize_missing_axes_are_size_1():
    rng = np.random.default_rng(4)
    x2 = rng.standard_normal((3, 4))
    s = rng.uniform(0.5, 2.0, 4)
    for across in (True, False):
        y2 = ref.normalize(x2, s, across_spatial=across)
        assert y2.shape == (3, 4)
        close(y2, ref.normalize(x2.reshape(3, 4, 1, 1), s, across_spatial=across).reshape(3, 4))
        # (N, C) input: both modes normalise each row over C
        close(y2, s * x2 / np.sqrt((x2 ** 2).sum(axis=1, keepdims=True) + 1e-10))
    x3 = rng.standard_normal((2, 4, 3))
    for across in (True, False):
        close(ref.normalize(x3, s, across_spatial=across),
              ref.normalize(x3.reshape(2, 4, 3, 1), s, across_spatial=across).reshape(2, 4, 3))


NORM_SHAPES = [(2, 3), (2, 3, 2), (1, 3, 2, 2), (2, 2, 1, 3)]


@pytest.mark.parametrize("shape", NORM_SHAPES)
@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_normalize_backward_finite_differences(shape, across, shared):
    rng = np.random.default_rng(len(shape) * 4 + 2 * int(across) + int(shared))
    C = shape[1]
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    s = np.array(rng.uniform(0.5, 3.0)) if shared else rng.uniform(0.5, 3.0, C)
    dx, ds = ref.normalize_backward(x, s, dy, across_spatial=across)
    fd_close(dx, fd_grad(lambda z: ref.normalize(z, s, across_spatial=across), x, dy))
    assert ds.shape == s.shape
    fd_close(ds, fd_grad(lambda z: ref.normalize(x, z, across_spatial=across), s, dy))


@pytest.mark.parametrize("across", [True, False])
def test_normalize_caffe_backward_equals_true_for_uniform_scale(across):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 4, 2, 3))
    dy = rng.standard_normal((2, 4, 2, 3))
    for s in (np.array(2.7), np.full(4, 2.7)):
        dx_t, ds_t = ref.normalize_backward(x, s, dy, across_spatial=across)
        dx_c, ds_c = ref.normalize_backward_caffe(x, s, dy, across_spatial=across)
        close(dx_c, dx_t, rtol=1e-11, atol=1e-14)
        close(ds_c, ds_t, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("across", [True, False])
def test_normalize_caffe_backward_differs_for_nonuniform_scale(across):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 4, 2, 2))
    dy = rng.standard_normal((2, 4, 2, 2))
    s = rng.uniform(0.5, 5.0, 4)
    eps = 1e-10
    dx_t, ds_t = ref.normalize_backward(x, s, dy, across_spatial=across, eps=eps)
    dx_c, ds_c = ref.normalize_backward_caffe(x, s, dy, across_spatial=across, eps=eps)
    assert np.max(np.abs(dx_c - dx_t)) > 1e-2
    # scale gradient agrees (Caffe's sum(y*dy)/s == sum(dy*x/n) when s != 0)
    close(ds_c, ds_t, rtol=1e-11, atol=1e-14)
    # exact difference: caffe - true = x_j (sum_c s_c g_c x_c - s_j sum_c g_c x_c) / n^3
    axes = (1, 2, 3) if across else (1,)
    sc = s.reshape(1, 4, 1, 1)
    n = np.sqrt((x ** 2).sum(axis=axes, keepdims=True) + eps)
    diff = x * ((sc * dy * x).sum(axis=axes, keepdims=True)
                - sc * (dy * x).sum(axis=axes, keepdims=True)) / n ** 3
    close(dx_c - dx_t, diff, rtol=1e-9, atol=1e-13)
    # and Caffe's dx is the closed form s_c (g - x <x,g>/n^2)/n
    close(dx_c, sc * (dy - x * (x * dy).sum(axis=axes, keepdims=True) / n ** 2) / n,
          rtol=1e-11, atol=1e-14)


def test_normalize_caffe_backward_semantics_example_c4():
    # semantics.md section 3.1: C=4, random s -> Caffe and true/finite-difference differ.
    rng = np.random.default_rng(2024)
    x = rng.standard_normal((1, 4)) * 3.0
    dy = rng.standard_normal((1, 4)) * 3.0
    s = rng.uniform(1.0, 20.0, 4)
    dx_c, _ = ref.normalize_backward_caffe(x, s, dy, across_spatial=False)
    dx_t, _ = ref.normalize_backward(x, s, dy, across_spatial=False)
    num = fd_grad(lambda z: ref.normalize(z, s, across_spatial=False), x, dy)
    fd_close(dx_t, num)
    assert not np.allclose(dx_c, num, rtol=1e-3, atol=1e-3)


def test_normalize_caffe_dscale_divides_by_s():
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 3, 2, 2))
    dy = rng.standard_normal((2, 3, 2, 2))
    _, ds = ref.normalize_backward_caffe(x, np.array(0.0), dy)
    assert ds.shape == () and np.isnan(ds)
    _, ds = ref.normalize_backward_caffe(x, np.array([0.0, 1.0, 2.0]), dy, across_spatial=False)
    assert np.isnan(ds[0]) and np.all(np.isfinite(ds[1:]))
    # the true gradient is finite at s == 0
    _, ds_true = ref.normalize_backward(x, np.array([0.0, 1.0, 2.0]), dy, across_spatial=False)
    assert np.all(np.isfinite(ds_true))
    close(ds[1:], ds_true[1:], rtol=1e-11)


def test_normalize_invalid():
    with pytest.raises(ValueError):
        ref.normalize(np.ones(3), np.array(1.0))
    with pytest.raises(ValueError):
        ref.normalize(np.ones((1, 2, 2, 2, 2)), np.array(1.0))
    with pytest.raises(ValueError):
        ref.normalize(np.ones((1, 2, 2, 2)), np.ones(3))
    with pytest.raises(ValueError):
        ref.normalize(np.ones((1, 2, 2, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError):
        ref.normalize_backward(np.ones((1, 2, 2)), np.ones(2), np.ones((1, 2, 3)))
    with pytest.raises(ValueError):
        ref.normalize_backward_caffe(np.ones((1, 2)), np.ones(1), np.ones((1, 2)))
