"""Caffe's Pooling layer (pooling_layer.cpp) as built by ``caffenorm.load``.

Each test pins one Caffe behaviour against ``ref_pool``, a loop over output pixels written from
``PoolingLayer::Reshape`` / ``Forward_cpu`` (it also produces the MAX mask of the second top), and
against OpenCV dnn 4.x where OpenCV is right.  Where OpenCV differs from Caffe the reference alone
is used:

* ``round_mode: FLOOR`` is ignored by OpenCV (it always rounds up);
* OpenCV drops a last window that starts in the padding only on a padded axis; Caffe does it on
  both axes as soon as either pad is non-zero;
* a MAX window lying wholly outside the image (ceil mode, no padding, stride > kernel) is 0 in
  OpenCV and ``-FLT_MAX`` in Caffe (mask -1); the AVE one is ``0/0 = NaN`` in Caffe;
* OpenCV rejects a kernel larger than the padded input, which Caffe's ceil rule gives a window.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import caffenorm
from caffenorm import InputShapeError, LayerConfigError, NetDefinitionError, UnsupportedLayerError
from netutil import opencv_forward, write_model

FLT_MAX = float(np.finfo(np.float32).max)


# ------------------------------------------------------------------------------- the reference


def ref_pool(x, method, kernel, stride, pad, round_mode="CEIL"):
    """Caffe's Pooling forward, one output pixel at a time; returns (top, mask) (mask for MAX)."""
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    rnd = math.ceil if round_mode == "CEIL" else math.floor
    OH, OW = rnd((H + 2 * ph - kh) / sh) + 1, rnd((W + 2 * pw - kw) / sw) + 1
    if ph or pw:  # both axes, whichever pad is non-zero
        OH -= (OH - 1) * sh >= H + ph
        OW -= (OW - 1) * sw >= W + pw
    y = np.zeros((N, C, OH, OW))
    mask = np.full((N, C, OH, OW), -1.0)
    for oh in range(OH):
        for ow in range(OW):
            hs, ws = oh * sh - ph, ow * sw - pw
            if method == "MAX":
                best = np.full((N, C), -FLT_MAX)
                for h in range(max(hs, 0), min(hs + kh, H)):
                    for w in range(max(ws, 0), min(ws + kw, W)):
                        better = x[:, :, h, w] > best
                        best = np.where(better, x[:, :, h, w], best)
                        mask[:, :, oh, ow] = np.where(better, h * W + w, mask[:, :, oh, ow])
                y[:, :, oh, ow] = best
            else:
                he, we = min(hs + kh, H + ph), min(ws + kw, W + pw)
                size = (he - hs) * (we - ws)
                window = x[:, :, max(hs, 0):min(he, H), max(ws, 0):min(we, W)]
                with np.errstate(invalid="ignore"):
                    y[:, :, oh, ow] = window.sum(axis=(2, 3)) / size if size else np.nan
    return y, mask


def test_reference_on_hand_computed_cases():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    # AVE 3x3 stride 2 pad 1: corner window covers rows/cols -1..1, divisor 9 (padding counts).
    y, _ = ref_pool(x, "AVE", (3, 3), (2, 2), (1, 1))
    assert y.shape == (1, 1, 3, 3) and y[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 9
    # Its last window starts at 3 and ends at min(3 + 3, 4 + 1) = 5: divisor 2 * 2, one pixel inside.
    assert y[0, 0, 2, 2] == 15 / 4
    # MAX 3x3 stride 2, no pad, on 4x4: ceil(1/2)+1 = 2 windows, the last overhangs.
    y, m = ref_pool(x, "MAX", (3, 3), (2, 2), (0, 0))
    assert y[0, 0].tolist() == [[10, 11], [14, 15]] and m[0, 0].tolist() == [[10, 11], [14, 15]]


# ------------------------------------------------------------------------------- helpers


def _proto(shape, body, tops=("pool1",), name="pool1", bottoms=("data",)):
    dims = " ".join(f"dim: {d}" for d in shape)
    return (
        f'name: "t"\nlayer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'
        f'layer {{ name: "{name}" type: "Pooling" {" ".join(f"bottom: {chr(34)}{b}{chr(34)}" for b in bottoms)} '
        f'{" ".join(f"top: {chr(34)}{t}{chr(34)}" for t in tops)} pooling_param {{ {body} }} }}\n'
    )


def _forward(net, x):
    net(torch.from_numpy(np.asarray(x, np.float32)))
    return net.blobs


# (body, method, kernel, stride, pad, input shape)
OPENCV_CASES = [
    pytest.param("pool: MAX kernel_size: 3 stride: 2", "MAX", (3, 3), (2, 2), (0, 0), (2, 3, 7, 6),
                 id="max-ceil-overhang"),
    pytest.param("pool: MAX kernel_size: 2 stride: 2", "MAX", (2, 2), (2, 2), (0, 0), (1, 2, 5, 5), id="max-2x2-odd"),
    pytest.param("pool: MAX kernel_size: 3 stride: 2 pad: 1", "MAX", (3, 3), (2, 2), (1, 1), (2, 2, 8, 7),
                 id="max-pad"),
    pytest.param("pool: AVE kernel_size: 3 stride: 2 pad: 1", "AVE", (3, 3), (2, 2), (1, 1), (2, 2, 8, 7),
                 id="ave-pad-borders"),
    pytest.param("pool: AVE kernel_size: 2 stride: 2", "AVE", (2, 2), (2, 2), (0, 0), (1, 2, 5, 7),
                 id="ave-ceil-overhang"),
    pytest.param("pool: AVE kernel_size: 3 stride: 1 pad: 1", "AVE", (3, 3), (1, 1), (1, 1), (1, 3, 4, 5),
                 id="ave-same"),
    pytest.param("pool: AVE kernel_size: 3 stride: 3 pad: 2", "AVE", (3, 3), (3, 3), (2, 2), (1, 2, 7, 8),
                 id="ave-pad-gt-half-kernel"),
    pytest.param("pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 1", "MAX", (3, 2), (2, 1),
                 (1, 1), (1, 2, 6, 5), id="max-hw-fields"),
    pytest.param("pool: AVE kernel_h: 2 kernel_w: 4 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 2", "AVE", (2, 4), (2, 3),
                 (1, 2), (2, 1, 7, 9), id="ave-hw-fields"),
    pytest.param("pool: AVE kernel_size: 5 stride: 3", "AVE", (5, 5), (3, 3), (0, 0), (1, 2, 9, 10),
                 id="ave-stride-remainder"),
]


@pytest.mark.parametrize("body, method, kernel, stride, pad, shape", OPENCV_CASES)
def test_pooling_matches_reference_and_opencv(tmp_path, body, method, kernel, stride, pad, shape):
    """Caffe's ceil output size, window placement and AVE divisor (padding counts up to size+pad)."""
    proto, _ = write_model(tmp_path, _proto(shape, body))
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    ours = _forward(caffenorm.load(proto), x)["pool1"].numpy()
    np.testing.assert_allclose(ours, ref_pool(x, method, kernel, stride, pad)[0], rtol=1e-6, atol=1e-6)
    pytest.importorskip("cv2")
    theirs = opencv_forward(proto, None, {"data": x}, ["pool1"])["pool1"]
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling_follows_the_input_size(tmp_path, method):
    """``global_pooling`` takes the kernel from each input's H x W (Caffe's Reshape re-reads it)."""
    proto, _ = write_model(tmp_path, _proto((2, 3, 5, 4), f"pool: {method} global_pooling: true"))
    net = caffenorm.load(proto)
    rng = np.random.default_rng(2)
    for shape in [(2, 3, 5, 4), (1, 3, 7, 9), (4, 3, 1, 1)]:
        x = rng.normal(size=shape).astype(np.float32)
        ours = _forward(net, x)["pool1"].numpy()
        expected = x.max(axis=(2, 3)) if method == "MAX" else x.mean(axis=(2, 3))
        np.testing.assert_allclose(ours, expected[:, :, None, None], rtol=1e-6, atol=1e-6)
    pytest.importorskip("cv2")
    theirs = opencv_forward(proto, None, {"data": x}, ["pool1"])["pool1"]
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_round_mode_floor(tmp_path):
    """``round_mode: FLOOR`` (BVLC master): floor instead of ceil.  OpenCV ignores the field."""
    x = np.random.default_rng(3).normal(size=(1, 2, 7, 6)).astype(np.float32)
    for mode, expected_hw in (("CEIL", (3, 3)), ("FLOOR", (3, 2))):
        proto, _ = write_model(tmp_path, _proto(x.shape, f"pool: AVE kernel_size: 3 stride: 2 round_mode: {mode}"))
        ours = _forward(caffenorm.load(proto), x)["pool1"].numpy()
        assert ours.shape[2:] == expected_hw
        np.testing.assert_allclose(ours, ref_pool(x, "AVE", (3, 3), (2, 2), (0, 0), mode)[0], rtol=1e-6, atol=1e-6)


def test_drop_rule_applies_to_both_axes_when_either_is_padded(tmp_path):
    """``if (pad_h_ || pad_w_)`` drops a last window starting at >= size + pad on *both* axes:
    here on W, which has no padding (4 wide, kernel 1, stride 2: the window at 4 is dropped).
    OpenCV keeps it (it applies the rule per padded axis)."""
    body = "pool: MAX kernel_h: 3 kernel_w: 1 stride: 2 pad_h: 1 pad_w: 0"
    proto, _ = write_model(tmp_path, _proto((1, 2, 5, 4), body))
    x = np.random.default_rng(4).normal(size=(1, 2, 5, 4)).astype(np.float32)
    ours = _forward(caffenorm.load(proto), x)["pool1"].numpy()
    assert ours.shape == (1, 2, 3, 2)
    np.testing.assert_allclose(ours, ref_pool(x, "MAX", (3, 1), (2, 2), (1, 0))[0], rtol=1e-6)


def test_window_wholly_outside_the_image(tmp_path):
    """No padding, stride > kernel, ceil mode: the last window starts at the input's end.  Caffe
    keeps it: MAX gives -FLT_MAX (mask -1), AVE gives 0/0 = NaN.  (OpenCV gives 0.)"""
    x = np.random.default_rng(5).normal(size=(1, 2, 4, 4)).astype(np.float32)
    proto, _ = write_model(tmp_path, _proto(x.shape, "pool: MAX kernel_size: 1 stride: 2", tops=("pool1", "mask")))
    blobs = _forward(caffenorm.load(proto), x)
    y, m = ref_pool(x, "MAX", (1, 1), (2, 2), (0, 0))
    assert blobs["pool1"].shape == (1, 2, 3, 3) and blobs["pool1"][0, 0, 2, 2] == -FLT_MAX
    np.testing.assert_array_equal(blobs["pool1"].numpy(), y.astype(np.float32))
    np.testing.assert_array_equal(blobs["mask"].numpy(), m)
    assert blobs["mask"][0, 0, 2, 2] == -1
    proto, _ = write_model(tmp_path, _proto(x.shape, "pool: AVE kernel_size: 1 stride: 2"))
    ours = _forward(caffenorm.load(proto), x)["pool1"].numpy()
    np.testing.assert_allclose(ours, ref_pool(x, "AVE", (1, 1), (2, 2), (0, 0))[0], rtol=1e-6)
    assert np.isnan(ours[0, 0, 2, 2]) and np.isnan(ours[0, 0, 0, 2])


def test_kernel_larger_than_the_input(tmp_path):
    """Caffe's ``ceil((1 - 2) / 2) + 1 == 1`` window for a 1x1 input and a 2x2 kernel (OpenCV refuses)."""
    x = np.random.default_rng(6).normal(size=(2, 3, 1, 1)).astype(np.float32)
    for method in ("MAX", "AVE"):
        proto, _ = write_model(tmp_path, _proto(x.shape, f"pool: {method} kernel_size: 2 stride: 2"))
        ours = _forward(caffenorm.load(proto), x)["pool1"].numpy()
        np.testing.assert_allclose(ours, ref_pool(x, method, (2, 2), (2, 2), (0, 0))[0], rtol=1e-6)


# (body, kernel, stride, pad, shape)
MASK_CASES = [
    pytest.param("kernel_size: 3 stride: 2 pad: 1", (3, 3), (2, 2), (1, 1), (2, 3, 7, 6), id="pad"),
    pytest.param("kernel_size: 2 stride: 2", (2, 2), (2, 2), (0, 0), (1, 2, 5, 7), id="ceil-overhang"),
    pytest.param("kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 pad_h: 2 pad_w: 1", (3, 2), (1, 2), (2, 1),
                 (1, 2, 4, 5), id="hw-fields"),
]


@pytest.mark.parametrize("body, kernel, stride, pad, shape", MASK_CASES)
def test_max_mask_top(tmp_path, body, kernel, stride, pad, shape):
    """The second top of MAX pooling: ``h * W + w`` of each window's first maximum, as a float."""
    proto, _ = write_model(tmp_path, _proto(shape, f"pool: MAX {body}", tops=("pool1", "mask")))
    net = caffenorm.load(proto)
    rng = np.random.default_rng(7)
    # Rounded values so that ties occur: Caffe's strict '>' keeps the first maximum.
    x = np.round(rng.normal(size=shape), 0).astype(np.float32)
    blobs = _forward(net, x)
    y, m = ref_pool(x, "MAX", kernel, stride, pad)
    np.testing.assert_array_equal(blobs["pool1"].numpy(), y.astype(np.float32))
    np.testing.assert_array_equal(blobs["mask"].numpy(), m)
    assert blobs["mask"].dtype == torch.float32 and not blobs["mask"].requires_grad
    cv2 = pytest.importorskip("cv2")
    peer = cv2.dnn.readNetFromCaffe(str(proto))
    peer.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    peer.enableFusion(False)
    peer.setInput(x, "data")
    theirs = peer.forwardAndRetrieve(["pool1"])[0]
    np.testing.assert_array_equal(theirs[0], blobs["pool1"].numpy())
    np.testing.assert_array_equal(theirs[1], blobs["mask"].numpy())


def test_any_batch_size(tmp_path):
    proto, _ = write_model(tmp_path, _proto((2, 3, 6, 6), "pool: AVE kernel_size: 3 stride: 2 pad: 1"))
    net = caffenorm.load(proto)
    rng = np.random.default_rng(8)
    for shape in [(1, 3, 6, 6), (5, 3, 6, 6), (3, 3, 9, 4), (0, 3, 6, 6)]:
        x = rng.normal(size=shape).astype(np.float32)
        np.testing.assert_allclose(_forward(net, x)["pool1"].numpy(), ref_pool(x, "AVE", (3, 3), (2, 2), (1, 1))[0],
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("body", ["pool: AVE kernel_size: 3 stride: 2 pad: 1", "pool: MAX kernel_size: 3 stride: 2"])
def test_gradients(tmp_path, body):
    proto, _ = write_model(tmp_path, _proto((1, 2, 5, 6), body))
    module = caffenorm.load(proto).layer("pool1")
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,))


def test_max_gradient_goes_to_the_first_maximum(tmp_path):
    """Caffe's Backward_cpu routes each top diff to the mask index: the first maximum (row-major)."""
    proto, _ = write_model(tmp_path, _proto((1, 1, 4, 4), "pool: MAX kernel_size: 2 stride: 2"))
    x = torch.ones(1, 1, 4, 4, requires_grad=True)
    caffenorm.load(proto)(x)["pool1"].sum().backward()
    expected = torch.zeros(4, 4)
    expected[0::2, 0::2] = 1
    assert torch.equal(x.grad[0, 0], expected)


def test_save_and_reload_round_trip(tmp_path):
    proto, _ = write_model(tmp_path, _proto((1, 2, 7, 7), "pool: MAX kernel_size: 3 stride: 2 pad: 1",
                                            tops=("pool1", "mask")))
    net = caffenorm.load(proto)
    assert net.params == {}
    x = torch.randn(1, 2, 7, 7)
    before = net(x)
    net.save(tmp_path / "saved.prototxt", tmp_path / "saved.caffemodel")
    after = caffenorm.load(tmp_path / "saved.prototxt", tmp_path / "saved.caffemodel")(x)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_extra_repr_names_every_setting(tmp_path):
    proto, _ = write_model(tmp_path, _proto((1, 2, 7, 7), "pool: AVE kernel_h: 3 kernel_w: 2 stride: 2 pad: 1 "
                                            "round_mode: FLOOR"))
    text = repr(caffenorm.load(proto).layer("pool1"))
    for part in ("pool=AVE", "kernel_size=(3, 2)", "stride=(2, 2)", "pad=(1, 1)", "round_mode=FLOOR",
                 "global_pooling=False", "top_mask=False"):
        assert part in text


# ------------------------------------------------------------------------------- rejected settings

REJECTED = [
    pytest.param("pool: STOCHASTIC kernel_size: 2", ("pool1",), UnsupportedLayerError, "STOCHASTIC", id="stochastic"),
    pytest.param("pool: AVE kernel_size: 2", ("pool1", "mask"), NetDefinitionError, "2 tops.*only MAX",
                 id="ave-with-mask-top"),
    pytest.param("pool: MAX kernel_size: 2", ("a", "b", "c"), NetDefinitionError, "3 tops", id="three-tops"),
    pytest.param("pool: MAX", ("pool1",), LayerConfigError, "no kernel size", id="no-kernel"),
    pytest.param("pool: MAX kernel_h: 2", ("pool1",), LayerConfigError, "kernel_h=2 is set without kernel_w",
                 id="lone-kernel_h"),
    pytest.param("pool: MAX kernel_size: 0", ("pool1",), LayerConfigError, "kernel_size=0", id="kernel-0"),
    pytest.param("pool: MAX kernel_size: 2 pad: 1 pad_h: 1 pad_w: 1", ("pool1",), LayerConfigError,
                 "pad=1 is set together", id="pad-and-pad_h"),
    pytest.param("pool: MAX kernel_size: 2 stride_h: 2", ("pool1",), LayerConfigError, "stride_h=2 is set without",
                 id="lone-stride_h"),
    pytest.param("pool: MAX kernel_size: 2 stride: 0", ("pool1",), LayerConfigError, "stride=0", id="stride-0"),
    pytest.param("pool: AVE kernel_size: 2 pad: 2", ("pool1",), LayerConfigError, "pad < kernel",
                 id="pad-not-below-kernel"),
    pytest.param("pool: MAX global_pooling: true kernel_size: 2", ("pool1",), LayerConfigError, "must not be set",
                 id="global-with-kernel"),
    pytest.param("pool: MAX global_pooling: true stride: 2", ("pool1",), LayerConfigError, "stride = 1",
                 id="global-with-stride"),
    pytest.param("pool: MAX kernel_size: 9", ("pool1",), InputShapeError, "kernel must fit", id="kernel-too-large"),
]


@pytest.mark.parametrize("body, tops, error, match", REJECTED)
def test_rejected_settings_name_the_layer(tmp_path, body, tops, error, match):
    proto, _ = write_model(tmp_path, _proto((1, 2, 5, 5), body, tops=tops))
    with pytest.raises(error, match=match) as info:
        caffenorm.load(proto)
    assert "'pool1'" in str(info.value) and "(Pooling)" in str(info.value)


def test_wrong_bottoms(tmp_path):
    proto, _ = write_model(tmp_path, _proto((1, 2, 5, 5), "pool: MAX kernel_size: 2", bottoms=("data", "data")))
    with pytest.raises(NetDefinitionError, match=r"'pool1'.*2 bottoms"):
        caffenorm.load(proto)
    proto, _ = write_model(tmp_path, _proto((1, 2, 5), "pool: MAX kernel_size: 2"))
    with pytest.raises(InputShapeError, match=r"'pool1'.*needs 4"):
        caffenorm.load(proto)
    proto, _ = write_model(tmp_path, _proto((1, 2, 5, 5), "pool: MAX kernel_size: 3"))
    with pytest.raises(InputShapeError, match=r"'pool1'.*kernel must fit"):
        caffenorm.load(proto)(torch.zeros(1, 2, 1, 5))
