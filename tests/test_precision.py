"""Caffe's numbers out of eager float32: half precision, bfloat16 and autocast keep BatchNorm's
sums in float32; eval BatchNorm caches its statistics; on CUDA a Net switches TF32 off for its own
calls (checked here through the switch's logic, the GPU itself is not needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import caffenorm
from caffenorm.nn.batch_norm import global_stats
from caffenorm.precision import full_float32
from reference import caffe_ref as ref


def _big_sums_bn(channels: int = 3) -> caffenorm.BatchNorm:
    """Blobs like res10's first BatchNorm: sums far beyond float16's 65504."""
    bn = caffenorm.BatchNorm(channels)
    rng = np.random.default_rng(0)
    factor = 999.98
    mean = rng.uniform(50, 150, channels)
    var = rng.uniform(2000, 4000, channels)
    bn.load_caffe_blobs([mean * factor, var * factor, [factor]])
    return bn.eval()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_batch_norm_keeps_float32_sums_and_caffes_result(dtype):
    bn = _big_sums_bn()
    sums = [b.clone() for b in bn.caffe_blobs()]
    bn = bn.to(dtype)
    assert all(b.dtype == torch.float32 for b in bn.caffe_blobs())
    assert all(torch.equal(a, b) for a, b in zip(bn.caffe_blobs(), sums))  # not rounded through fp16
    x = torch.from_numpy(np.random.default_rng(1).uniform(0, 255, (2, 3, 4, 5))).to(dtype)
    y = bn(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    blobs = [b.numpy() for b in sums]
    expected = ref.batch_norm(x.double().numpy(), blobs[0], blobs[1], blobs[2][0], use_global_stats=True)[0]
    # One rounding of the input to `dtype`, computed in float32, one rounding of the output.
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    np.testing.assert_allclose(y.double().numpy(), expected, rtol=tol, atol=tol)


def test_half_then_float_and_double_conversions():
    bn = _big_sums_bn()
    assert all(b.dtype == torch.float32 for b in bn.half().caffe_blobs())
    assert all(b.dtype == torch.float64 for b in bn.double().caffe_blobs())
    assert all(b.dtype == torch.float32 for b in bn.float().caffe_blobs())


def test_net_half_tracks_its_dtype_and_keeps_batch_norm_blobs(tmp_path):
    proto = tmp_path / "bn.prototxt"
    proto.write_text(
        'input: "data" input_shape { dim: 1 dim: 3 dim: 4 dim: 4 }\n'
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"\n'
        '  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 1 } } }\n'
        'layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }\n'
        'layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }\n'
    )
    net = caffenorm.load(proto)
    bn = net.layer("bn")
    bn.load_caffe_blobs([b.numpy() for b in _big_sums_bn().caffe_blobs()])
    x = torch.from_numpy(np.random.default_rng(2).uniform(0, 255, (2, 3, 4, 4))).float()
    full = net(x)["conv"]
    half = net.half()
    assert half.dtype == torch.float16 and bn.mean_sum.dtype == torch.float32
    assert half.layer("conv").weight.dtype == torch.float16
    out = half(x.half())["conv"]
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), full, rtol=1e-2, atol=1e-2)
    with pytest.raises(caffenorm.InputShapeError, match="net computes in torch.float16"):
        half(x)


def test_autocast_keeps_batch_norm_statistics_in_float32(tmp_path):
    bn = _big_sums_bn()
    x = torch.from_numpy(np.random.default_rng(3).uniform(0, 255, (2, 3, 4, 5))).float()
    expected = bn(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = bn(x.bfloat16())
    assert bn.mean_sum.dtype == torch.float32
    torch.testing.assert_close(y.float(), expected, rtol=1.6e-2, atol=1.6e-2)


def test_eval_batch_norm_derives_its_statistics_once_per_change(monkeypatch):
    calls = []
    original = global_stats

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr("caffenorm.nn.batch_norm.global_stats", counting)
    bn = _big_sums_bn()
    x = torch.randn(2, 3, 4, 5) * 50 + 100
    first = bn(x)
    bn(x)
    bn(x)
    assert len(calls) == 1
    with torch.no_grad():
        bn.mean_sum.add_(1000.0)  # an in-place change is seen
    moved = bn(x)
    assert len(calls) == 2 and not torch.equal(moved, first)
    bn.load_caffe_blobs([b.numpy() for b in _big_sums_bn().caffe_blobs()])
    torch.testing.assert_close(bn(x), first)
    assert len(calls) == 3
    bn.mean_sum = bn.mean_sum.clone()  # a replaced blob with the same contents: same statistics
    bn(x)
    assert len(calls) == 3
    bn.mean_sum = bn.mean_sum * 2  # a replaced blob with other contents is seen
    bn(x)
    assert len(calls) == 4


@pytest.mark.parametrize("write", ["data", "numpy", "state_dict"])
def test_writes_that_bypass_the_version_counter_are_seen(write):
    """pycaffe's idiom (``blob.data[...] = v``), a numpy view and load_state_dict all reach the
    statistics: the cache is keyed on the blobs' contents, not on version counters."""
    bn = _big_sums_bn()
    x = torch.randn(2, 3, 4, 5) * 50 + 100
    before = bn(x)
    if write == "data":
        bn.mean_sum.data[...] = 0.0
    elif write == "numpy":
        bn.var_sum.numpy()[:] = 1.0
    else:
        state = {k: v.clone() for k, v in bn.state_dict().items()}
        state["scale_factor"].fill_(1.0)
        bn.load_state_dict(state)
    fresh = caffenorm.BatchNorm(3).eval()
    fresh.load_caffe_blobs([b.numpy() for b in bn.caffe_blobs()])
    after = bn(x)
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, fresh(x), rtol=0, atol=0)


def test_a_net_built_in_inference_mode_runs():
    bn = None
    with torch.inference_mode():
        bn = _big_sums_bn()
        y = bn(torch.randn(2, 3, 4, 5))
    assert torch.isfinite(y).all()


def test_traced_batch_norm_reads_its_blobs_not_a_cached_copy():
    bn = _big_sums_bn()
    x = torch.randn(2, 3, 4, 5) * 50 + 100
    bn(x)  # fills the eager cache
    traced = torch.jit.trace(bn, x)
    with torch.no_grad():
        bn.mean_sum.add_(500.0)
    torch.testing.assert_close(traced(x), bn(x))


def _tf32_state() -> tuple[str, str]:
    """(cuDNN convolutions, matrix products) TF32 settings as torch 2.13 reports them."""
    return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision


def test_full_float32_switches_tf32_off_and_restores_exactly():
    before = _tf32_state()
    try:
        torch.set_float32_matmul_precision("medium")  # a setting the legacy flags cannot express
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        outside = _tf32_state()
        with full_float32():
            assert _tf32_state() == ("ieee", "ieee")
        assert _tf32_state() == outside and torch.get_float32_matmul_precision() == "medium"
        with pytest.raises(RuntimeError), full_float32():
            raise RuntimeError("boom")
        assert _tf32_state() == outside
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = before


@pytest.mark.parametrize("precision, conv_inside", [("highest", "ieee"), ("tf32", "tf32")])
def test_net_on_cuda_runs_its_convolutions_without_tf32(monkeypatch, tmp_path, precision, conv_inside):
    proto = tmp_path / "conv.prototxt"
    proto.write_text(
        'input: "data" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }\n'
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"\n'
        "  convolution_param { num_output: 2 kernel_size: 1 } }\n"
    )
    net = caffenorm.load(proto, precision=precision)
    seen = []
    net.layer("conv").register_forward_pre_hook(lambda *_: seen.append(torch.backends.cudnn.conv.fp32_precision))
    monkeypatch.setattr(caffenorm.Net, "_on_cuda", staticmethod(lambda feeds: True))  # as if the input were on CUDA
    before = _tf32_state()
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    try:
        net(torch.randn(1, 2, 3, 3))
        assert seen == [conv_inside]
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"  # the user's setting is left as it was
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = before


def test_precision_is_checked(tmp_path):
    proto = tmp_path / "p.prototxt"
    proto.write_text('input: "data" input_shape { dim: 1 dim: 2 }\nlayer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    with pytest.raises(caffenorm.LayerConfigError, match="precision='fp16' is not allowed"):
        caffenorm.load(proto, precision="fp16")
