"""Caffe BatchNorm (BVLC batch_norm_layer.cpp) as reproduced by ``caffenorm.BatchNorm``.

Every test pins one Caffe behaviour (shared/reference/semantics.md §2.1, §2.5) and compares with
the independent float64 numpy oracle ``tests/reference/caffe_ref.py`` or with torch's own
``batch_norm`` as a peer.  Data are small so the loop-based oracle stays fast.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import caffenorm
import caffenorm.functional as CF
from caffenorm import BatchNorm, BlobError, CaffeNormError, InputShapeError, LayerConfigError
from reference import caffe_ref as ref

# (rtol, atol) against the float64 oracle for unit-scale data.
TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-10, 1e-10)}
DTYPES = [torch.float32, torch.float64]
SHAPES = [(6, 3), (4, 3, 5), (2, 3, 4, 3), (2, 3, 2, 3, 2)]
SHAPE_IDS = ["2d", "3d", "4d", "5d"]
MODES = [False, True]  # use_global_stats
MODE_IDS = ["batch_stats", "global_stats"]


def _data(shape, seed, loc=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(loc, scale, size=shape)


def _stored_blobs(channels, seed, factor=3.7):
    """Plausible unnormalised Caffe blobs: sums of means / of variances times the factor."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(0.0, 0.5, size=channels)
    var = rng.uniform(0.5, 2.0, size=channels)
    return [mean * factor, var * factor, np.array([factor])]


def _layer(channels, dtype, blobs=None, **kw):
    layer = BatchNorm(channels, dtype=dtype, **kw)
    if blobs is not None:
        layer.load_caffe_blobs(blobs)
    return layer


def _np(t):
    """A float64 numpy *copy* (``.double().numpy()`` alone would alias a float64 buffer)."""
    return t.detach().cpu().double().numpy().copy()


def _close(actual, expected, dtype, scale=1.0):
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(_np(actual), expected, rtol=rtol, atol=atol * scale)


# --------------------------------------------------------------------------- forward vs oracle


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("use_global_stats", MODES, ids=MODE_IDS)
def test_forward_matches_oracle(shape, dtype, use_global_stats):
    """y = (x - mu)/sqrt(var + eps): batch mean / biased batch var, or blob/factor statistics."""
    C = shape[1]
    x = _data(shape, seed=1)
    blobs = _stored_blobs(C, seed=2)
    layer = _layer(C, dtype, blobs, use_global_stats=use_global_stats)
    xt = torch.tensor(x, dtype=dtype)
    before = [_np(b) for b in layer.caffe_blobs()]  # copies: the batch-stats step writes the blobs
    y = layer(xt)
    y_ref, ms, vs, s = ref.batch_norm(_np(xt), *before, use_global_stats=use_global_stats)
    assert y.dtype == dtype and y.shape == xt.shape
    _close(y, y_ref, dtype)
    # the blobs after the step: unchanged with global stats, Caffe's update otherwise
    _close(layer.mean_sum, ms, dtype, scale=10)
    _close(layer.var_sum, vs, dtype, scale=10)
    _close(layer.scale_factor, s, dtype, scale=10)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(5, 3), (3, 3, 4), (2, 3, 2, 3)], ids=["2d", "3d", "4d"])
def test_functional_forward_matches_oracle(shape, dtype):
    """The functional takes the blobs explicitly and updates them in place like the module."""
    C = shape[1]
    x = torch.tensor(_data(shape, seed=3), dtype=dtype)
    ms, vs, s = (torch.tensor(b, dtype=dtype) for b in _stored_blobs(C, seed=4))
    y_ref, ms_ref, vs_ref, s_ref = ref.batch_norm(_np(x), _np(ms), _np(vs), _np(s),
                                                  use_global_stats=False, moving_average_fraction=0.9,
                                                  eps=1e-3)
    y = CF.batch_norm(x, ms, vs, s, False, moving_average_fraction=0.9, eps=1e-3)
    _close(y, y_ref, dtype)
    _close(ms, ms_ref, dtype, scale=10)
    _close(vs, vs_ref, dtype, scale=10)
    _close(s, s_ref, dtype, scale=10)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("maf", [0.999, 0.5])
def test_two_training_steps_update_blobs_in_place(dtype, maf):
    """Caffe: s <- lam*s + 1, b0 <- lam*b0 + mu, b1 <- lam*b1 + m/(m-1)*var, in the same tensors."""
    C = 3
    layer = _layer(C, dtype, moving_average_fraction=maf).train()
    tensors = layer.caffe_blobs()
    ptrs = [t.data_ptr() for t in tensors]
    blobs = [np.zeros(C), np.zeros(C), np.zeros(1)]
    for step, (loc, scale) in enumerate([(0.5, 2.0), (-1.0, 0.5)]):
        x = torch.tensor(_data((4, C, 3, 2), seed=10 + step, loc=loc, scale=scale), dtype=dtype)
        y = layer(x)
        y_ref, *blobs = ref.batch_norm(_np(x), *blobs, use_global_stats=False, moving_average_fraction=maf)
        _close(y, y_ref, dtype)
        for got, want in zip(layer.caffe_blobs(), blobs):
            _close(got, want, dtype, scale=10)
    assert all(a is b for a, b in zip(layer.caffe_blobs(), tensors))
    assert [t.data_ptr() for t in layer.caffe_blobs()] == ptrs
    # after the first step from zero blobs the bias-corrected average is exactly the batch mean
    assert layer.scale_factor.item() == pytest.approx(maf + 1.0)


def test_first_step_stores_unbiased_variance():
    """From zero blobs, var_sum/s equals the m/(m-1)-corrected variance, mean_sum/s the batch mean."""
    x = torch.tensor(_data((2, 2, 3), seed=5), dtype=torch.float64)
    layer = _layer(2, torch.float64).train()
    layer(x)
    xc = x.transpose(0, 1).reshape(2, -1)
    torch.testing.assert_close(layer.mean_sum / layer.scale_factor, xc.mean(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.var_sum / layer.scale_factor, xc.var(1, unbiased=True), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- scale factor edge cases


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_factor_zero_means_zero_statistics(dtype, eps):
    """s == 0 -> f = 0 -> mu = var = 0: y = x/sqrt(eps), whatever the sums hold; never NaN."""
    C = 3
    x = torch.tensor(_data((4, C, 2, 2), seed=6), dtype=dtype)
    layer = _layer(C, dtype, [np.full(C, 5.0), np.full(C, 7.0), np.zeros(1)], eps=eps).eval()
    y = layer(x)
    assert torch.isfinite(y).all()
    _close(y, _np(x) / math.sqrt(eps), dtype, scale=1 / math.sqrt(eps))
    y_ref, *_ = ref.batch_norm(_np(x), *(_np(b) for b in layer.caffe_blobs()), use_global_stats=True, eps=eps)
    _close(y, y_ref, dtype, scale=1 / math.sqrt(eps))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_factor_near_converged_value(dtype):
    """s = 999.9 (close to 1/(1-0.999)): statistics are the sums divided by s."""
    C = 4
    factor = 999.9
    x = torch.tensor(_data((3, C, 2, 2), seed=7), dtype=dtype)
    layer = _layer(C, dtype, _stored_blobs(C, seed=8, factor=factor)).eval()
    y = layer(x)
    y_ref, *_ = ref.batch_norm(_np(x), *(_np(b) for b in layer.caffe_blobs()), use_global_stats=True)
    _close(y, y_ref, dtype)
    mean = layer.mean_sum / layer.scale_factor
    var = layer.var_sum / layer.scale_factor
    expected = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + 1e-5)
    _close(y, _np(expected), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1, 1), (1, 3, 1, 1, 1)], ids=["1xC", "1xCx1x1", "1xCx1x1x1"])
def test_single_value_per_channel(shape, dtype):
    """m == 1: every value is its own mean, y = 0; no m/(m-1) correction (var_sum gets 0, not NaN)."""
    C = shape[1]
    blobs = [np.array([1.0, -2.0, 3.0]), np.array([0.5, 1.5, 2.5]), np.array([2.0])]
    layer = _layer(C, dtype, blobs).train()
    x = torch.tensor(_data(shape, seed=9), dtype=dtype)
    y = layer(x)
    assert torch.equal(y, torch.zeros_like(x))
    y_ref, ms, vs, s = ref.batch_norm(_np(x), *blobs, use_global_stats=False)
    _close(y, y_ref, dtype)
    _close(layer.mean_sum, ms, dtype, scale=10)
    _close(layer.var_sum, vs, dtype, scale=10)
    _close(layer.scale_factor, s, dtype, scale=10)
    assert torch.isfinite(layer.var_sum).all()


def test_two_values_per_channel_use_correction():
    """m == 2: the stored variance is doubled (m/(m-1) = 2) relative to the biased one."""
    x = torch.tensor([[1.0, 10.0], [3.0, 14.0]], dtype=torch.float64)
    layer = _layer(2, torch.float64).train()
    layer(x)
    # biased var: 1 and 4; unbiased: 2 and 8
    torch.testing.assert_close(layer.var_sum, torch.tensor([2.0, 8.0], dtype=torch.float64))


# --------------------------------------------------------------------------- mode selection


def _mode_case():
    C = 3
    x = torch.tensor(_data((4, C, 3), seed=11, loc=2.0), dtype=torch.float64)
    blobs = _stored_blobs(C, seed=12)
    y_batch, *after = ref.batch_norm(_np(x), *blobs, use_global_stats=False)
    y_global, *_ = ref.batch_norm(_np(x), *blobs, use_global_stats=True)
    return x, blobs, (y_batch, after), y_global


@pytest.mark.parametrize(
    ("use_global_stats", "training", "expect_global"),
    [
        (None, True, False),
        (None, False, True),
        (True, True, True),
        (False, False, False),
        (True, False, True),
        (False, True, False),
    ],
    ids=["none-train", "none-eval", "true-train", "false-eval", "true-eval", "false-train"],
)
def test_use_global_stats_selects_mode(use_global_stats, training, expect_global):
    """None follows module.training like Caffe follows the phase; True/False override it."""
    x, blobs, (y_batch, after), y_global = _mode_case()
    layer = _layer(3, torch.float64, blobs, use_global_stats=use_global_stats).train(training)
    assert layer.uses_global_stats() is expect_global
    y = layer(x)
    if expect_global:
        _close(y, y_global, torch.float64)
        for got, want in zip(layer.caffe_blobs(), blobs):
            np.testing.assert_array_equal(_np(got), want)
    else:
        _close(y, y_batch, torch.float64)
        for got, want in zip(layer.caffe_blobs(), after):
            _close(got, want, torch.float64, scale=10)


def test_eval_leaves_blobs_untouched():
    """Global statistics never write the blobs, however often the layer runs."""
    C = 3
    layer = _layer(C, torch.float32, _stored_blobs(C, seed=13)).eval()
    before = [b.clone() for b in layer.caffe_blobs()]
    for seed in range(3):
        layer(torch.tensor(_data((2, C, 4), seed=seed), dtype=torch.float32))
    for got, want in zip(layer.caffe_blobs(), before):
        assert torch.equal(got, want)


# --------------------------------------------------------------------------- large mean offset

# |x| ~ 100 in float32 has ulp(100) = 2**-17 ~ 7.6e-6.  The oracle sees the same float32 inputs, so
# what remains is the rounding of the centring (x - mu, or the fused x*invstd - mu*invstd), about one
# or two ulp(100) in units of the (unit-std) output.  atol = 4*ulp(100) ~ 3e-5 allows that while still
# catching a one-pass E[x^2] - E[x]^2 variance, whose cancellation costs ~100**2 * 2**-24 ~ 6e-4 in
# the variance and hence ~3e-4 in y.  Blob sums ~100 are compared with rtol 1e-6 (~8 ulp).
LARGE_OFFSET_ATOL = 4 * 2.0**-17


@pytest.mark.parametrize("use_global_stats", MODES, ids=MODE_IDS)
def test_large_mean_offset_float32(use_global_stats):
    """mean 100, std 1 data stays accurate in float32 (no catastrophic cancellation)."""
    C = 4
    x = torch.tensor(_data((8, C, 6, 6), seed=14, loc=100.0), dtype=torch.float32)
    factor = 999.9
    blobs = [np.full(C, 100.3 * factor), np.full(C, 1.2 * factor), np.array([factor])]
    layer = _layer(C, torch.float32, blobs, use_global_stats=use_global_stats)
    blobs32 = [_np(b) for b in layer.caffe_blobs()]
    y = layer(x)
    y_ref, ms, vs, s = ref.batch_norm(_np(x), *blobs32, use_global_stats=use_global_stats)
    np.testing.assert_allclose(_np(y), y_ref, rtol=0, atol=LARGE_OFFSET_ATOL)
    np.testing.assert_allclose(_np(layer.mean_sum), ms, rtol=1e-6)
    np.testing.assert_allclose(_np(layer.var_sum), vs, rtol=1e-6)


# --------------------------------------------------------------------------- backward


@pytest.mark.parametrize("shape", [(6, 3), (3, 3, 4), (2, 3, 2, 3), (2, 3, 2, 2, 2), (1, 3, 1, 1)],
                         ids=["2d", "3d", "4d", "5d", "m1"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("use_global_stats", MODES, ids=MODE_IDS)
def test_backward_matches_oracle(shape, dtype, use_global_stats):
    """train: dx = (g - mean(g) - mean(g*xhat)*xhat)/sqrt(var+eps); global: dx = g/sqrt(var+eps)."""
    C = shape[1]
    blobs = _stored_blobs(C, seed=15)
    layer = _layer(C, dtype, blobs, use_global_stats=use_global_stats)
    x = torch.tensor(_data(shape, seed=16), dtype=dtype, requires_grad=True)
    g = torch.tensor(_data(shape, seed=17), dtype=dtype)
    layer(x).backward(g)
    dx_ref = ref.batch_norm_backward(_np(x), _np(g), *blobs, use_global_stats=use_global_stats)
    _close(x.grad, dx_ref, dtype)


@pytest.mark.parametrize("shape", [(5, 2), (3, 2, 3), (2, 2, 2, 3), (2, 2, 1, 2, 2)], ids=["2d", "3d", "4d", "5d"])
@pytest.mark.parametrize("use_global_stats", MODES, ids=MODE_IDS)
def test_gradcheck(shape, use_global_stats):
    """float64 finite differences agree with the analytic gradient in both modes."""
    C = shape[1]
    blobs = [torch.tensor(b) for b in _stored_blobs(C, seed=18)]
    x = torch.tensor(_data(shape, seed=19), dtype=torch.float64, requires_grad=True)

    def fn(t):
        # fresh copies: the batch-statistics path updates the blobs in place
        return CF.batch_norm(t, *(b.clone() for b in blobs), use_global_stats, eps=1e-3)

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6)


def test_gradcheck_module_single_value_per_channel():
    """m == 1 (output constant 0): gradient 0, finite, as Caffe's formula gives."""
    layer = _layer(3, torch.float64).train()
    x = torch.tensor(_data((1, 3, 1, 1), seed=20), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-6)
    layer(x).backward(torch.ones_like(x))
    assert torch.equal(x.grad, torch.zeros_like(x))


# --------------------------------------------------------------------------- peer: torch batch_norm


@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 4, 3), (2, 3, 2, 3, 2)], ids=["2d", "4d", "5d"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_peer_torch_eval_with_converted_statistics(shape, dtype):
    """Inference: torch with running_mean = b0/s, running_var = b1/s gives the same output."""
    C = shape[1]
    layer = _layer(C, dtype, _stored_blobs(C, seed=21, factor=999.9)).eval()
    x = torch.tensor(_data(shape, seed=22), dtype=dtype)
    running_mean = layer.mean_sum / layer.scale_factor
    running_var = layer.var_sum / layer.scale_factor
    expected = F.batch_norm(x, running_mean, running_var, training=False, eps=layer.eps)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(layer(x), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_peer_torch_training_output_matches_but_running_stats_differ(dtype):
    """Training: same normalised output; torch's momentum EMA from (0, 1) differs from Caffe's sums."""
    C = 3
    x = torch.tensor(_data((4, C, 3, 3), seed=23, loc=1.5, scale=2.0), dtype=dtype)
    layer = _layer(C, dtype).train()
    running_mean = torch.zeros(C, dtype=dtype)
    running_var = torch.ones(C, dtype=dtype)
    expected = F.batch_norm(x, running_mean, running_var, training=True, momentum=0.1, eps=layer.eps)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(layer(x), expected, rtol=rtol, atol=atol)
    # Caffe's bias-corrected average is the batch statistics after one step; torch's is 0.1 of the way.
    caffe_mean = layer.mean_sum / layer.scale_factor
    caffe_var = layer.var_sum / layer.scale_factor
    torch.testing.assert_close(running_mean, 0.1 * caffe_mean, rtol=rtol, atol=atol)
    torch.testing.assert_close(running_var, 0.9 + 0.1 * caffe_var, rtol=rtol, atol=atol)
    assert not torch.allclose(running_mean, caffe_mean)


# --------------------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("use_global_stats", MODES, ids=MODE_IDS)
def test_half_precision_computed_in_float32(dtype, use_global_stats):
    """fp16/bf16 input: output in the input dtype, equal to the float32 computation cast back."""
    C = 3
    blobs = _stored_blobs(C, seed=24)
    x = torch.tensor(_data((4, C, 3, 2), seed=25, loc=3.0, scale=2.0)).to(dtype)
    half = _layer(C, torch.float32, blobs, use_global_stats=use_global_stats)
    full = _layer(C, torch.float32, blobs, use_global_stats=use_global_stats)
    y = half(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y, full(x.float()).to(dtype))
    # the float32 blobs see the same update as with a float32 input
    for a, b in zip(half.caffe_blobs(), full.caffe_blobs()):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b)


def test_half_precision_backward_dtype():
    x = torch.tensor(_data((4, 3, 2), seed=26)).half().requires_grad_()
    y = BatchNorm(3)(x)
    y.float().square().sum().backward()
    assert x.grad.dtype == torch.float16
    assert torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- NaN propagation


def test_nan_poisons_its_channel_with_batch_statistics():
    """A NaN enters its channel's mean and variance, so the whole channel (and its blobs) is NaN."""
    C = 3
    x = torch.tensor(_data((4, C, 2), seed=27), dtype=torch.float64)
    x[1, 1, 0] = float("nan")
    layer = _layer(C, torch.float64).train()
    y = layer(x)
    assert torch.isnan(y[:, 1]).all()
    assert torch.isfinite(y[:, [0, 2]]).all()
    y_ref, ms, vs, _ = ref.batch_norm(_np(x), np.zeros(C), np.zeros(C), np.zeros(1), use_global_stats=False)
    _close(y[:, [0, 2]], y_ref[:, [0, 2]], torch.float64)
    assert torch.isnan(layer.mean_sum[1]) and torch.isnan(layer.var_sum[1])
    assert torch.isfinite(layer.mean_sum[[0, 2]]).all() and torch.isfinite(layer.var_sum[[0, 2]]).all()


def test_nan_stays_local_with_global_statistics():
    C = 3
    x = torch.tensor(_data((4, C, 2), seed=28), dtype=torch.float64)
    x[1, 1, 0] = float("nan")
    layer = _layer(C, torch.float64, _stored_blobs(C, seed=29)).eval()
    y = layer(x)
    nan = torch.isnan(y)
    assert nan.sum() == 1 and nan[1, 1, 0]
    y_ref, *_ = ref.batch_norm(_np(x), *(_np(b) for b in layer.caffe_blobs()), use_global_stats=True)
    np.testing.assert_allclose(_np(y), y_ref, rtol=1e-10, atol=1e-10)  # NaNs compare equal here


# --------------------------------------------------------------------------- errors


def test_channel_mismatch_at_forward():
    with pytest.raises(InputShapeError, match=r"4 channels.*channels=3") as info:
        BatchNorm(3)(torch.zeros(2, 4, 5))
    assert isinstance(info.value, ValueError) and isinstance(info.value, CaffeNormError)


def test_functional_channel_mismatch():
    z = torch.zeros(3)
    with pytest.raises(InputShapeError, match=r"input has 4 channels"):
        CF.batch_norm(torch.zeros(2, 4), z, z, torch.zeros(1), True)


@pytest.mark.parametrize("call", ["module", "functional"])
def test_one_dimensional_input_rejected(call):
    """Caffe's BatchNorm Reshape aborts for a 1-D blob; here it is an InputShapeError."""
    x = torch.zeros(3)
    with pytest.raises(InputShapeError, match=r"1 dimensions"):
        if call == "module":
            BatchNorm(3)(x)
        else:
            z = torch.zeros(3)
            CF.batch_norm(x, z, z, torch.zeros(1), False)


def test_negative_eps_rejected():
    with pytest.raises(LayerConfigError, match="eps"):
        BatchNorm(3, eps=-1e-5)
    z = torch.zeros(3)
    with pytest.raises(LayerConfigError, match="eps"):
        CF.batch_norm(torch.zeros(2, 3), z, z, torch.zeros(1), True, eps=-1.0)


def test_zero_eps_allowed():
    layer = BatchNorm(2, eps=0.0).train()
    y = layer(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
    torch.testing.assert_close(y, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))


@pytest.mark.parametrize("channels", [0, -2, 2.0, True], ids=["zero", "negative", "float", "bool"])
def test_bad_channel_count_rejected(channels):
    with pytest.raises(LayerConfigError, match="channels"):
        BatchNorm(channels)


@pytest.mark.parametrize(
    ("blobs", "pattern"),
    [
        ([np.zeros(3), np.zeros(3)], r"got 2 blobs, expected 3"),
        ([np.zeros(3)] * 2 + [np.zeros(1)] * 2, r"got 4 blobs, expected 3"),
        ([np.zeros(4), np.zeros(3), np.zeros(1)], r"blob 0 \(mean_sum\) has shape \(4,\)"),
        ([np.zeros(3), np.zeros((3, 1)), np.zeros(1)], r"blob 1 \(var_sum\) has shape \(3, 1\)"),
        ([np.zeros(3), np.zeros(3), np.zeros(2)], r"blob 2 \(scale_factor\) has shape \(2,\)"),
        ([np.zeros(3), np.zeros((1, 1, 2, 3)), np.zeros(1)], r"blob 1 \(var_sum\)"),
    ],
    ids=["too-few", "too-many", "mean-shape", "var-rank", "factor-shape", "bad-legacy"],
)
def test_bad_blobs_rejected_and_module_unchanged(blobs, pattern):
    """A wrong blob count or shape raises BlobError naming the blob; nothing is copied."""
    layer = _layer(3, torch.float32, _stored_blobs(3, seed=30))
    before = [b.clone() for b in layer.caffe_blobs()]
    # make the good blobs differ from the current values so a partial copy would show
    blobs = [np.asarray(b) + 1.0 for b in blobs]
    with pytest.raises(BlobError, match=pattern):
        layer.load_caffe_blobs(blobs)
    for got, want in zip(layer.caffe_blobs(), before):
        assert torch.equal(got, want)


def test_legacy_four_dimensional_blobs_accepted():
    """Old caffemodels store (C,) blobs as (1, 1, 1, C) and the factor as (1, 1, 1, 1)."""
    C = 3
    flat = _stored_blobs(C, seed=31)
    layer = _layer(C, torch.float64)
    layer.load_caffe_blobs([flat[0].reshape(1, 1, 1, C), flat[1].reshape(1, 1, 1, C), flat[2].reshape(1, 1, 1, 1)])
    assert [tuple(b.shape) for b in layer.caffe_blobs()] == [(C,), (C,), (1,)]
    for got, want in zip(layer.caffe_blobs(), flat):
        np.testing.assert_array_equal(_np(got), want)


def test_caffe_blobs_are_the_buffers_in_caffe_order():
    layer = BatchNorm(4)
    blobs = layer.caffe_blobs()
    assert blobs[0] is layer.mean_sum and blobs[1] is layer.var_sum and blobs[2] is layer.scale_factor
    assert [tuple(b.shape) for b in blobs] == [(4,), (4,), (1,)]
    assert all(torch.equal(b, torch.zeros_like(b)) for b in blobs)  # Caffe zero-initialises
    assert set(dict(layer.named_buffers())) == {"mean_sum", "var_sum", "scale_factor"}
    assert list(layer.parameters()) == []  # no affine term; Caffe forces lr_mult 0 on these


def test_errors_share_the_base_class():
    for err in (LayerConfigError, InputShapeError, BlobError):
        assert issubclass(err, caffenorm.CaffeNormError) and issubclass(err, ValueError)


# --- BatchNormScale: the fused BatchNorm -> Scale(bias) pair -------------------------------------


def _bn_scale_pair(channels, seed, bias_term=True):
    rng = np.random.default_rng(seed)
    bn = caffenorm.BatchNorm(channels).double()
    bn.load_caffe_blobs([rng.standard_normal(channels) * 5, rng.uniform(1, 3, channels) * 5, [5.0]])
    scale = caffenorm.Scale((channels,), bias_term=bias_term).double()
    scale.load_caffe_blobs([rng.uniform(0.5, 2, channels)] + ([rng.standard_normal(channels)] if bias_term else []))
    return bn, scale


@pytest.mark.parametrize("bias_term", [True, False])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5, 4), (2, 3, 2, 2, 3), (1, 3)])
def test_batch_norm_scale_fused_equals_the_two_layers(shape, train, bias_term):
    x_np, g_np = np.random.default_rng(1).standard_normal(shape), np.random.default_rng(2).standard_normal(shape)
    chained_bn, chained_scale = _bn_scale_pair(shape[1], 3, bias_term)
    fused = caffenorm.BatchNormScale(*_bn_scale_pair(shape[1], 3, bias_term)).train(train)
    chained = torch.nn.Sequential(chained_bn, chained_scale).train(train)
    results = []
    for model in (chained, fused):
        x = torch.tensor(x_np, requires_grad=True)
        y = model(x)
        params = [p for p in model.parameters()]
        grads = torch.autograd.grad(y, [x, *params], torch.tensor(g_np))
        results.append((y.detach(), grads, [b.clone() for b in (model[0] if model is chained else model.batch_norm).caffe_blobs()]))
    (y_a, g_a, blobs_a), (y_b, g_b, blobs_b) = results
    torch.testing.assert_close(y_b, y_a)
    for a, b in zip(g_a, g_b):
        torch.testing.assert_close(b, a)
    for a, b in zip(blobs_a, blobs_b):
        torch.testing.assert_close(b, a)


def test_batch_norm_scale_shares_the_layers_tensors():
    bn, scale = caffenorm.BatchNorm(3), caffenorm.Scale(3, bias_term=True)
    fused = caffenorm.BatchNormScale(bn, scale)
    blobs = fused.caffe_blobs()
    assert blobs[0] is bn.mean_sum and blobs[3] is scale.weight and blobs[4] is scale.bias
    fused(torch.randn(4, 3))
    assert bn.scale_factor.item() == 1.0


@pytest.mark.parametrize(
    "scale",
    [
        caffenorm.Scale((4,), bias_term=True),
        caffenorm.Scale((3, 2), num_axes=2),
        caffenorm.Scale((3,), axis=0),
        caffenorm.Scale((3,), scale_from_input=True, bias_term=True),
    ],
)
def test_batch_norm_scale_rejects_scales_it_cannot_fuse(scale):
    with pytest.raises(caffenorm.LayerConfigError, match="cannot fuse"):
        caffenorm.BatchNormScale(caffenorm.BatchNorm(3), scale)
