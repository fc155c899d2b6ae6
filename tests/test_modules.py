"""What every layer module shares: Caffe's blob view, state_dict, factory kwargs, the error hierarchy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import caffenorm


def _layers():
    return {
        "LRN": caffenorm.LRN(),
        "BatchNorm": caffenorm.BatchNorm(4),
        "Scale": caffenorm.Scale((4,), bias_term=True),
        "Bias": caffenorm.Bias((4,)),
        "Normalize": caffenorm.Normalize(4, channel_shared=False),
        "NormalizeShared": caffenorm.Normalize(4),
    }


EXPECTED_BLOB_SHAPES = {
    "LRN": [],
    "BatchNorm": [(4,), (4,), (1,)],
    "Scale": [(4,), (4,)],
    "Bias": [(4,)],
    "Normalize": [(4,)],
    "NormalizeShared": [()],
}


@pytest.mark.parametrize("name", list(EXPECTED_BLOB_SHAPES))
def test_caffe_blobs_have_caffe_order_and_shapes(name):
    layer = _layers()[name]
    assert [tuple(b.shape) for b in layer.caffe_blobs()] == EXPECTED_BLOB_SHAPES[name]


@pytest.mark.parametrize("name", list(EXPECTED_BLOB_SHAPES))
def test_load_caffe_blobs_round_trip(name):
    layer = _layers()[name]
    rng = np.random.default_rng(0)
    blobs = [rng.standard_normal(shape).astype(np.float32) for shape in EXPECTED_BLOB_SHAPES[name]]
    layer.load_caffe_blobs(blobs)
    for got, want in zip(layer.caffe_blobs(), blobs):
        np.testing.assert_array_equal(got.detach().numpy(), want)


def test_learnable_blobs_are_the_parameters():
    scale = caffenorm.Scale((4,), bias_term=True)
    blobs = scale.caffe_blobs()
    assert blobs[0] is scale.weight and blobs[1] is scale.bias
    scale(torch.randn(2, 4, 3)).sum().backward()
    assert blobs[0].grad is not None and blobs[1].grad is not None


def test_load_caffe_blobs_accepts_legacy_4d_blobs():
    bn = caffenorm.BatchNorm(3)
    bn.load_caffe_blobs([np.ones((1, 1, 1, 3)), np.full((1, 1, 1, 3), 2.0), np.full((1, 1, 1, 1), 4.0)])
    assert bn.scale_factor.item() == 4.0 and torch.equal(bn.var_sum, torch.full((3,), 2.0))
    shared = caffenorm.Normalize(3)
    shared.load_caffe_blobs([np.full((1, 1, 1, 1), 20.0)])
    assert shared.weight.item() == 20.0


def test_load_caffe_blobs_names_the_wrong_blob_and_changes_nothing():
    bn = caffenorm.BatchNorm(3)
    with pytest.raises(caffenorm.BlobError, match=r"BatchNorm: blob 1 \(var_sum\) has shape \(4,\), expected \(3,\)"):
        bn.load_caffe_blobs([np.ones(3), np.ones(4), np.ones(1)])
    assert torch.equal(bn.mean_sum, torch.zeros(3))
    with pytest.raises(caffenorm.BlobError, match="got 2 blobs, expected 3"):
        bn.load_caffe_blobs([np.ones(3), np.ones(3)])
    with pytest.raises(caffenorm.BlobError, match="got 1 blobs, expected 0"):
        caffenorm.LRN().load_caffe_blobs([np.ones(3)])
    with pytest.raises(caffenorm.BlobError, match="dtype"):
        bn.load_caffe_blobs([np.array(["a", "b", "c"]), np.ones(3), np.ones(1)])


def test_load_caffe_blobs_accepts_tensors():
    scale = caffenorm.Scale((2, 3), num_axes=2)
    scale.load_caffe_blobs([torch.arange(6.0).view(2, 3)])
    assert torch.equal(scale.weight.detach(), torch.arange(6.0).view(2, 3))


@pytest.mark.parametrize("name", list(EXPECTED_BLOB_SHAPES))
def test_state_dict_round_trip(name):
    src, dst = _layers()[name], _layers()[name]
    with torch.no_grad():
        for blob in src.caffe_blobs():
            blob.copy_(torch.randn(blob.shape))
    dst.load_state_dict(src.state_dict())
    for a, b in zip(src.caffe_blobs(), dst.caffe_blobs()):
        assert torch.equal(a, b)


def test_factory_kwargs_set_dtype():
    assert caffenorm.BatchNorm(3, dtype=torch.float64).mean_sum.dtype == torch.float64
    assert caffenorm.Scale(3, bias_term=True, dtype=torch.float64).bias.dtype == torch.float64
    assert caffenorm.Bias(3, dtype=torch.float64).bias.dtype == torch.float64
    assert caffenorm.Normalize(3, dtype=torch.float64).weight.dtype == torch.float64


def test_modules_move_with_to():
    bn = caffenorm.BatchNorm(3).double()
    assert all(b.dtype == torch.float64 for b in bn.caffe_blobs())
    y = bn(torch.randn(2, 3, dtype=torch.float64))
    assert y.dtype == torch.float64


def test_error_hierarchy():
    for cls in (caffenorm.LayerConfigError, caffenorm.InputShapeError, caffenorm.BlobError):
        assert issubclass(cls, caffenorm.CaffeNormError) and issubclass(cls, ValueError)


def test_modules_are_traceable_with_fx():
    model = torch.nn.Sequential(caffenorm.LRN(3), caffenorm.BatchNorm(4).eval(), caffenorm.Normalize(4))
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(traced(x), model(x))
