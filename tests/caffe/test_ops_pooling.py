"""Tests for caffenorm.caffe.ops.pooling: Caffe's Pooling layer and the conv/deconv shape rules.

Three independent checks:

* a deliberately simple numpy reference (``ref_pool``) written from the rules of BVLC
  ``src/caffe/layers/pooling_layer.cpp`` (``Reshape`` / ``Forward_cpu`` / ``Backward_cpu``),
  looping over output pixels, itself checked on hand-computed cases;
* PyTorch's own pooling where it is known to agree, and ``torch.autograd.gradcheck``;
* OpenCV dnn 4.x (its Caffe importer) as a peer for Pooling, Convolution and Deconvolution.
  Where OpenCV differs from Caffe the test says so and checks us against the reference instead:

  - ``round_mode: FLOOR`` is ignored by OpenCV (it always rounds up);
  - OpenCV applies the "drop a last window that starts in the padding" rule per axis, only on a
    padded axis; Caffe applies it to both axes as soon as either pad is non-zero;
  - a MAX window lying wholly outside the image (no padding, ceil mode, stride > kernel) is 0 in
    OpenCV and ``-FLT_MAX`` in Caffe;
  - a kernel larger than the padded input (Caffe: ``ceil((size + 2*pad - kernel)/stride) + 1``
    windows, e.g. one for size 1, kernel 2, stride 2) is rejected by OpenCV;
  - OpenCV's Deconvolution ignores ``dilation`` in the output size.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import pathlib
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

if importlib.util.find_spec("caffenorm") is None:  # not installed: use the src/ checkout
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "src"))

from caffenorm.caffe import schema  # noqa: E402
from caffenorm.caffe.layers.conv import resolve_convolution_param  # noqa: E402
from caffenorm.caffe.layers.pooling import resolve_pooling_param  # noqa: E402
from caffenorm.caffe.ops.pooling import (  # noqa: E402
    caffe_pool2d,
    conv_output_size,
    deconv_output_size,
    pooled_size,
)
from caffenorm.errors import InputShapeError, LayerConfigError  # noqa: E402

FLT_MAX = float(np.finfo(np.float32).max)


# ---------------------------------------------------------------------------------------------
# The numpy reference, written from pooling_layer.cpp's rules
# ---------------------------------------------------------------------------------------------


def ref_out_size(size, kernel, stride, pad, round_mode, any_pad):
    """Reshape(): ceil/floor of a float division, +1; with padding drop a window starting >= size+pad."""
    q = (size + 2 * pad - kernel) / stride
    out = (math.ceil(q) if round_mode == "CEIL" else math.floor(q)) + 1
    if any_pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def ref_pool(x, method, kernel, stride, pad, round_mode="CEIL"):
    """Caffe's Pooling forward, one output pixel at a time (all of N and C at once)."""
    x = np.asarray(x, dtype=np.float64)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph_, pw_) = kernel, stride, pad
    any_pad = ph_ != 0 or pw_ != 0
    OH = ref_out_size(H, kh, sh, ph_, round_mode, any_pad)
    OW = ref_out_size(W, kw, sw, pw_, round_mode, any_pad)
    y = np.zeros((N, C, OH, OW))
    for oh in range(OH):
        for ow in range(OW):
            hs, ws = oh * sh - ph_, ow * sw - pw_
            if method == "MAX":
                he, we = min(hs + kh, H), min(ws + kw, W)
                hs, ws = max(hs, 0), max(ws, 0)
                window = x[:, :, hs:max(he, hs), ws:max(we, ws)]
                # the running maximum starts at -FLT_MAX; an empty window leaves it there
                y[:, :, oh, ow] = np.maximum(window.max(axis=(2, 3)), -FLT_MAX) if window.size else -FLT_MAX
            else:
                he, we = min(hs + kh, H + ph_), min(ws + kw, W + pw_)
                pool_size = (he - hs) * (we - ws)  # before clipping to the image
                hs, ws = max(hs, 0), max(ws, 0)
                he, we = min(he, H), min(we, W)
                total = x[:, :, hs:max(he, hs), ws:max(we, ws)].sum(axis=(2, 3))
                with np.errstate(invalid="ignore", divide="ignore"):
                    y[:, :, oh, ow] = total / pool_size
    return y


def ref_pool_backward(x, top_diff, method, kernel, stride, pad, round_mode="CEIL"):
    """Caffe's Backward_cpu: MAX to the first strict maximum (row-major), AVE as top_diff / pool_size."""
    x = np.asarray(x, dtype=np.float64)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph_, pw_) = kernel, stride, pad
    OH, OW = top_diff.shape[2:]
    dx = np.zeros_like(x)
    for n, c, oh, ow in itertools.product(range(N), range(C), range(OH), range(OW)):
        hs, ws = oh * sh - ph_, ow * sw - pw_
        g = top_diff[n, c, oh, ow]
        if method == "MAX":
            he, we = min(hs + kh, H), min(ws + kw, W)
            best, idx = -FLT_MAX, None
            for h in range(max(hs, 0), he):
                for w in range(max(ws, 0), we):
                    if x[n, c, h, w] > best:
                        best, idx = x[n, c, h, w], (h, w)
            if idx is not None:
                dx[n, c, idx[0], idx[1]] += g
        else:
            he, we = min(hs + kh, H + ph_), min(ws + kw, W + pw_)
            pool_size = (he - hs) * (we - ws)
            for h in range(max(hs, 0), min(he, H)):
                for w in range(max(ws, 0), min(we, W)):
                    dx[n, c, h, w] += g / pool_size
    return dx


def grid(h, w):
    return np.arange(1, h * w + 1, dtype=np.float64).reshape(1, 1, h, w)


# ---------------------------------------------------------------------------------------------
# The reference on hand-computed cases
# ---------------------------------------------------------------------------------------------


def test_reference_3x3_kernel2_stride2_ceil_overhang():
    x = grid(3, 3)  # 1 2 3 / 4 5 6 / 7 8 9
    # ceil((3 - 2) / 2) + 1 = 2 windows per axis; the second one starts at 2 and overhangs by 1.
    np.testing.assert_array_equal(ref_pool(x, "MAX", (2, 2), (2, 2), (0, 0))[0, 0], [[5, 6], [8, 9]])
    # AVE, no padding: pool_size = (min(start+2, 3) - start) per axis, so 4, 2, 2, 1.
    np.testing.assert_array_equal(
        ref_pool(x, "AVE", (2, 2), (2, 2), (0, 0))[0, 0], [[12 / 4, (3 + 6) / 2], [(7 + 8) / 2, 9 / 1]]
    )
    # FLOOR keeps only the full window.
    np.testing.assert_array_equal(ref_pool(x, "MAX", (2, 2), (2, 2), (0, 0), "FLOOR")[0, 0], [[5]])
    np.testing.assert_array_equal(ref_pool(x, "AVE", (2, 2), (2, 2), (0, 0), "FLOOR")[0, 0], [[3]])


def test_reference_pad1_last_window_in_padding_is_dropped():
    # size 3, kernel 2, stride 2, pad 1: ceil(3/2)+1 = 3, but window 2 would start at 2*2-1 = 3 = size,
    # i.e. in the right padding ((3-1)*2 = 4 >= 3+1), so it is dropped: 2 windows [-1,1) and [1,3).
    assert ref_out_size(3, 2, 2, 1, "CEIL", True) == 2
    x = grid(3, 3)
    np.testing.assert_array_equal(ref_pool(x, "MAX", (2, 2), (2, 2), (1, 1))[0, 0], [[1, 3], [7, 9]])
    # AVE: both windows have pool_size 2 per axis (the first one counts one padded row/col).
    np.testing.assert_array_equal(
        ref_pool(x, "AVE", (2, 2), (2, 2), (1, 1))[0, 0], [[1 / 4, (2 + 3) / 4], [(4 + 7) / 4, (5 + 6 + 8 + 9) / 4]]
    )


def test_reference_ave_divisor_bottom_right_edge():
    # 4x4, kernel 3, stride 2, pad 1: windows start at -1, 1, 3. The last one ends at
    # min(3+3, 4+1) = 5: it counts one padded row (pool_size 2 per axis), not the row beyond 5.
    x = grid(4, 4)  # rows 1..4, 5..8, 9..12, 13..16
    y = ref_pool(x, "AVE", (3, 3), (2, 2), (1, 1))[0, 0]
    assert y.shape == (3, 3)
    assert y[0, 0] == pytest.approx((1 + 2 + 5 + 6) / 9)  # 3x3 window, 5 padded cells counted
    assert y[0, 2] == pytest.approx((4 + 8) / (3 * 2))  # cols [3, 5): one image col + one pad col
    assert y[2, 2] == pytest.approx(16 / 4)  # bottom-right: 2x2 divisor, one image pixel
    assert y[2, 1] == pytest.approx((14 + 15 + 16) / (2 * 3))


def test_reference_empty_windows_without_padding():
    # No padding, ceil mode, stride > kernel: windows may lie wholly outside the image and are kept.
    x = grid(1, 5)
    # width 5, kernel 1, stride 3: ceil(4/3)+1 = 3 windows at 0, 3, 6; the last is empty.
    np.testing.assert_array_equal(ref_pool(x, "MAX", (1, 1), (1, 3), (0, 0))[0, 0], [[1, 4, -FLT_MAX]])
    # AVE: pool_size = 1 * (5 - 6) = -1 -> 0 / -1 = -0.
    np.testing.assert_array_equal(ref_pool(x, "AVE", (1, 1), (1, 3), (0, 0))[0, 0], [[1, 4, 0]])
    # width 4, kernel 1, stride 2: windows at 0, 2, 4; the last starts at 4 = size -> pool_size 0 -> NaN.
    y = ref_pool(grid(1, 4), "AVE", (1, 1), (1, 2), (0, 0))[0, 0]
    assert y[0, :2].tolist() == [1, 3] and np.isnan(y[0, 2])


def test_reference_drop_rule_applies_to_both_axes_when_either_is_padded():
    # width 3, kernel 2, stride 3, pad_w 0: ceil(1/3)+1 = 2 windows; the second starts at 3 = W.
    # With pad_h = 1 Caffe drops it (the check runs for both axes); with no pad at all it stays.
    assert ref_pool(grid(3, 3), "MAX", (2, 2), (3, 3), (1, 0)).shape[2:] == (2, 1)
    assert ref_pool(grid(3, 3), "MAX", (2, 2), (3, 3), (0, 0)).shape[2:] == (2, 2)


# ---------------------------------------------------------------------------------------------
# pooled_size and caffe_pool2d vs the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size,kernel,stride,pad,mode,expected",
    [
        (3, 2, 2, 0, "CEIL", 2),
        (3, 2, 2, 0, "FLOOR", 1),
        (3, 2, 2, 1, "CEIL", 2),  # 3 before the drop
        (3, 2, 2, 1, "FLOOR", 2),
        (4, 3, 2, 1, "CEIL", 3),
        (224, 3, 2, 0, "CEIL", 112),  # e.g. GoogLeNet pool1 on 224 after conv: ceil(221/2)+1
        (112, 3, 2, 0, "CEIL", 56),
        (112, 3, 2, 0, "FLOOR", 55),
        (13, 3, 2, 0, "CEIL", 6),
        (5, 1, 3, 0, "CEIL", 3),  # last window empty, kept (no padding)
        (2, 3, 2, 0, "CEIL", 1),  # kernel larger than the input: ceil(-1/2)+1 = 1
        (2, 3, 1, 0, "CEIL", 0),
    ],
)
def test_pooled_size(size, kernel, stride, pad, mode, expected):
    assert pooled_size(size, kernel, stride, pad, mode) == expected
    assert pooled_size(size, kernel, stride, pad, mode) == ref_out_size(size, kernel, stride, pad, mode, pad > 0)


def test_pooled_size_any_pad_and_enum_numbers():
    assert pooled_size(3, 2, 3, 0) == 2
    assert pooled_size(3, 2, 3, 0, any_pad=True) == 1
    assert pooled_size(3, 2, 2, 0, 1) == 1  # FLOOR = 1
    with pytest.raises(LayerConfigError, match="round_mode"):
        pooled_size(3, 2, 2, 0, "NEAREST")


def _geometries():
    out = []
    for H, W in [(1, 1), (3, 3), (4, 5), (7, 6), (9, 9)]:
        for kh, kw in [(1, 1), (2, 2), (3, 3), (2, 3), (4, 1)]:
            for sh, sw in [(1, 1), (2, 2), (3, 3), (1, 2), (4, 3)]:
                for ph, pw in [(0, 0), (1, 1), (1, 0), (0, 2), (2, 2)]:
                    if ph >= kh or pw >= kw:
                        continue  # Caffe CHECKs pad < kernel
                    out.append(((H, W), (kh, kw), (sh, sw), (ph, pw)))
    return out


GEOMETRIES = _geometries()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("round_mode", ["CEIL", "FLOOR"])
@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_caffe_pool2d_matches_reference(method, round_mode, dtype):
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for (H, W), k, s, p in GEOMETRIES:
        any_pad = p != (0, 0)
        oh = ref_out_size(H, k[0], s[0], p[0], round_mode, any_pad)
        ow = ref_out_size(W, k[1], s[1], p[1], round_mode, any_pad)
        if oh < 1 or ow < 1:
            with pytest.raises(InputShapeError, match="output"):
                caffe_pool2d(torch.zeros(1, 1, H, W, dtype=dtype), method, k, s, p, round_mode)
            continue
        x = torch.randn(2, 3, H, W, generator=gen, dtype=torch.float64).to(dtype)
        got = caffe_pool2d(x, method, k, s, p, round_mode)
        want = ref_pool(x.double().numpy(), method, k, s, p, round_mode)
        assert got.dtype == dtype
        assert got.shape == want.shape, ((H, W), k, s, p)
        tol = 1e-6 if dtype == torch.float32 else 1e-13
        np.testing.assert_allclose(got.double().numpy(), want, rtol=tol, atol=tol, err_msg=str(((H, W), k, s, p)))
        checked += 1
    assert checked > 200


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_caffe_pool2d_backward_matches_caffe_backward(method):
    gen = torch.Generator().manual_seed(1)
    cases = [((5, 5), (3, 3), (2, 2), (1, 1)), ((4, 7), (2, 3), (2, 2), (1, 2)), ((6, 6), (2, 2), (3, 3), (0, 0))]
    for (H, W), k, s, p in cases:
        x = torch.randn(2, 2, H, W, generator=gen, dtype=torch.float64, requires_grad=True)
        y = caffe_pool2d(x, method, k, s, p)
        g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        (dx,) = torch.autograd.grad(y, x, g)
        want = ref_pool_backward(x.detach().numpy(), g.numpy(), method, k, s, p)
        np.testing.assert_allclose(dx.numpy(), want, rtol=1e-12, atol=1e-12)


def test_hand_cases_through_caffe_pool2d():
    x = torch.from_numpy(grid(3, 3))
    assert caffe_pool2d(x, "MAX", 2, 2, 0)[0, 0].tolist() == [[5, 6], [8, 9]]
    assert caffe_pool2d(x, "AVE", 2, 2, 0)[0, 0].tolist() == [[3, 4.5], [7.5, 9]]
    assert caffe_pool2d(x, "AVE", 2, 2, 0, "FLOOR")[0, 0].tolist() == [[3]]
    assert caffe_pool2d(x, "MAX", 2, 2, 1)[0, 0].tolist() == [[1, 3], [7, 9]]
    y = caffe_pool2d(torch.from_numpy(grid(4, 4)), "AVE", 3, 2, 1)[0, 0]
    assert y[2, 2].item() == 4.0 and y[0, 2].item() == pytest.approx(2.0)
    assert caffe_pool2d(torch.from_numpy(grid(1, 5)), "MAX", 1, (1, 3), 0)[0, 0].tolist() == [[1, 4, -FLT_MAX]]
    ave = caffe_pool2d(torch.from_numpy(grid(1, 4)), "AVE", 1, (1, 2), 0)[0, 0, 0]
    assert ave[:2].tolist() == [1, 3] and torch.isnan(ave[2])
    assert caffe_pool2d(x, "MAX", 2, 3, (1, 0)).shape[2:] == (2, 1)


def test_pad_larger_than_half_kernel_and_kernel_larger_than_input():
    # PyTorch rejects pad > kernel/2 and kernels larger than the padded input; Caffe does not.
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 5, 5, generator=gen, dtype=torch.float64)
    for method in ("MAX", "AVE"):
        got = caffe_pool2d(x, method, 3, 2, 2)
        np.testing.assert_allclose(got.numpy(), ref_pool(x.numpy(), method, (3, 3), (2, 2), (2, 2)), rtol=1e-13)
        x2 = torch.randn(1, 2, 2, 2, generator=gen, dtype=torch.float64)
        got = caffe_pool2d(x2, method, 3, 2, 0)
        assert got.shape == (1, 2, 1, 1)
        np.testing.assert_allclose(got.numpy(), ref_pool(x2.numpy(), method, (3, 3), (2, 2), (0, 0)), rtol=1e-13)


def test_torch_ceil_mode_count_include_pad_agrees_where_it_accepts_the_arguments():
    # Documented finding (torch 2.13, CPU): avg_pool2d(ceil_mode=True, count_include_pad=True) uses
    # Caffe's divisor rule (min(start+k, size+pad) before clipping) and the same drop rule, so where
    # torch accepts the arguments (pad <= k/2, pad > 0 or no empty window) it matches Caffe;
    # count_include_pad=False does not at the padded borders.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 4, 4, generator=gen, dtype=torch.float64)
    ours = caffe_pool2d(x, "AVE", 3, 2, 1)
    torch.testing.assert_close(F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=True), ours)
    assert not torch.allclose(F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), ours)
    # PyTorch's default floor mode loses Caffe's last (overhanging) window.
    assert F.avg_pool2d(x, 3, 2, 0).shape[2:] == (1, 1) and caffe_pool2d(x, "AVE", 3, 2, 0).shape[2:] == (2, 2)


def test_global_pooling():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(caffe_pool2d(x, "AVE", global_pooling=True), x.mean(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(caffe_pool2d(x, "MAX", global_pooling=True), x.amax(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(caffe_pool2d(x, "MAX", (5, 7), global_pooling=True), x.amax(dim=(2, 3), keepdim=True))
    with pytest.raises(LayerConfigError, match="pad=0 and stride=1"):
        caffe_pool2d(x, "MAX", stride_hw=2, global_pooling=True)
    with pytest.raises(LayerConfigError, match="kernel"):
        caffe_pool2d(x, "MAX", 3, global_pooling=True)


def test_half_precision_and_enum_numbers():
    x = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(5))
    y16 = caffe_pool2d(x.half(), 1, 3, 2, 1)  # AVE = 1
    assert y16.dtype == torch.float16
    torch.testing.assert_close(y16.float(), caffe_pool2d(x.half().float(), "ave", 3, 2, 1), atol=1e-3, rtol=1e-3)


def test_caffe_pool2d_errors():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(LayerConfigError, match="STOCHASTIC.*NOT_IMPLEMENTED"):
        caffe_pool2d(x, "STOCHASTIC", 2, 2)
    with pytest.raises(LayerConfigError, match="STOCHASTIC"):
        caffe_pool2d(x, 2, 2, 2)
    with pytest.raises(LayerConfigError, match="pool='SUM'"):
        caffe_pool2d(x, "SUM", 2, 2)
    with pytest.raises(LayerConfigError, match="pad_h=2 .*kernel_h=2"):
        caffe_pool2d(x, "MAX", 2, 1, (2, 0))
    with pytest.raises(LayerConfigError, match="stride"):
        caffe_pool2d(x, "MAX", 2, 0)
    with pytest.raises(LayerConfigError, match="kernel is required"):
        caffe_pool2d(x, "MAX")
    with pytest.raises(InputShapeError, match="4 .N, C, H, W"):
        caffe_pool2d(torch.zeros(1, 4, 4), "MAX", 2)
    with pytest.raises(InputShapeError, match="floating"):
        caffe_pool2d(torch.zeros(1, 1, 4, 4, dtype=torch.int64), "MAX", 2)


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,k,s,p,mode",
    [
        ((1, 2, 5, 5), (3, 3), (2, 2), (1, 1), "CEIL"),  # last window overhangs the padding
        ((1, 1, 3, 3), (2, 2), (2, 2), (0, 0), "CEIL"),  # overhang without padding
        ((2, 1, 6, 5), (3, 2), (2, 3), (2, 1), "CEIL"),  # pad > kernel/2
        ((1, 2, 7, 6), (2, 3), (2, 2), (1, 0), "FLOOR"),
    ],
)
@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_gradcheck(method, shape, k, s, p, mode):
    n = math.prod(shape)
    # distinct values at least 1/n apart, so the MAX winner does not change under eps perturbation
    x = (torch.randperm(n, generator=torch.Generator().manual_seed(6)).double() / n).reshape(shape)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: caffe_pool2d(t, method, k, s, p, mode), (x,), eps=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# Parameter messages
# ---------------------------------------------------------------------------------------------


def pool_param(text: str):
    return text_format.Parse(text, schema.PoolingParameter())


def conv_param(text: str):
    return text_format.Parse(text, schema.ConvolutionParameter())


def test_resolve_pooling_param_forms():
    assert resolve_pooling_param(pool_param("kernel_size: 3 stride: 2"), (8, 8)) == {
        "method": "MAX",
        "kernel_hw": (3, 3),
        "stride_hw": (2, 2),
        "pad_hw": (0, 0),
        "round_mode": "CEIL",
        "global_pooling": False,
    }
    r = resolve_pooling_param(
        pool_param("pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 round_mode: FLOOR")
    )
    assert (r["method"], r["kernel_hw"], r["stride_hw"], r["pad_hw"], r["round_mode"]) == (
        "AVE",
        (3, 2),
        (2, 1),
        (1, 0),
        "FLOOR",
    )
    g = resolve_pooling_param(pool_param("pool: AVE global_pooling: true"), (7, 5))
    assert g["kernel_hw"] == (7, 5) and g["global_pooling"] and g["pad_hw"] == (0, 0) and g["stride_hw"] == (1, 1)
    assert resolve_pooling_param(pool_param("global_pooling: true"))["kernel_hw"] is None
    # Caffe's own check lets kernel_size plus a lone kernel_h through; kernel_size is used.
    assert resolve_pooling_param(pool_param("kernel_size: 3 kernel_h: 5"))["kernel_hw"] == (3, 3)
    # The kwargs feed caffe_pool2d directly.
    x = torch.randn(1, 1, 6, 6, dtype=torch.float64)
    kw = resolve_pooling_param(pool_param("pool: AVE kernel_size: 3 stride: 2 pad: 1"), (6, 6))
    np.testing.assert_allclose(caffe_pool2d(x, **kw).numpy(), ref_pool(x.numpy(), "AVE", (3, 3), (2, 2), (1, 1)))


@pytest.mark.parametrize(
    "text,match",
    [
        ("stride: 2", "no kernel size"),
        ("kernel_h: 3", "kernel_h=3 is set without kernel_w"),
        ("kernel_w: 3", "kernel_w=3 is set without kernel_h"),
        ("kernel_size: 0", "kernel_size=0 is not allowed"),
        ("kernel_h: 0 kernel_w: 2", "kernel_h=0"),
        ("kernel_size: 3 pad: 1 pad_h: 1 pad_w: 1", "pad=1 is set together with pad_h/pad_w"),
        ("kernel_size: 3 pad_h: 1", "pad_h=1 is set without pad_w"),
        ("kernel_size: 3 stride: 2 stride_w: 1", "stride=2 is set together with stride_h/stride_w"),
        ("kernel_size: 3 stride_w: 2", "stride_w=2 is set without stride_h"),
        ("kernel_size: 3 stride: 0", "stride=0 is not allowed"),
        ("kernel_size: 2 pad: 2", "pad=2 is not allowed with kernel_size=2.*pad < kernel"),
        ("kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 2", "pad_w=2 is not allowed with kernel_w=2"),
        ("pool: STOCHASTIC kernel_size: 3 pad: 1", "STOCHASTIC with pad .* only for MAX and AVE"),
        ("global_pooling: true kernel_size: 3", "kernel_size must not be set"),
        ("global_pooling: true stride: 2", "only pad = 0 and stride = 1"),
        ("global_pooling: true pad: 1", "only pad = 0 and stride = 1"),
    ],
)
def test_resolve_pooling_param_errors(text, match):
    with pytest.raises(LayerConfigError, match=match):
        resolve_pooling_param(pool_param(text), (8, 8), layer_name="pool1")


def test_resolve_pooling_param_names_layer_and_checks_output():
    with pytest.raises(LayerConfigError, match="Pooling layer 'pool5'"):
        resolve_pooling_param(pool_param("stride: 2"), layer_name="pool5")
    with pytest.raises(InputShapeError, match="output of 0x"):
        resolve_pooling_param(pool_param("kernel_size: 3"), (2, 8))
    # STOCHASTIC without padding is accepted at setup (as in Caffe) and rejected when run.
    kw = resolve_pooling_param(pool_param("pool: STOCHASTIC kernel_size: 2 stride: 2"), (4, 4))
    with pytest.raises(LayerConfigError, match="STOCHASTIC"):
        caffe_pool2d(torch.zeros(1, 1, 4, 4), **kw)


def test_resolve_convolution_param_forms():
    r = resolve_convolution_param(conv_param("num_output: 8 kernel_size: 3"))
    assert r == {
        "num_output": 8,
        "bias_term": True,
        "group": 1,
        "kernel_size": (3, 3),
        "stride": (1, 1),
        "pad": (0, 0),
        "dilation": (1, 1),
        "axis": 1,
    }
    r = resolve_convolution_param(
        conv_param(
            "num_output: 4 kernel_size: 3 kernel_size: 5 stride: 2 pad: 1 pad: 2 dilation: 2 group: 2 "
            "bias_term: false force_nd_im2col: true"
        ),
        in_channels=6,
    )
    assert (r["kernel_size"], r["stride"], r["pad"], r["dilation"], r["group"], r["bias_term"]) == (
        (3, 5),
        (2, 2),
        (1, 2),
        (2, 2),
        2,
        False,
    )
    r = resolve_convolution_param(conv_param("num_output: 2 kernel_h: 1 kernel_w: 3 stride_h: 2 stride_w: 1 pad_w: 1"))
    assert (r["kernel_size"], r["stride"], r["pad"]) == ((1, 3), (2, 1), (0, 1))  # missing pad_h is 0, as in Caffe
    r = resolve_convolution_param(conv_param("num_output: 2 kernel_size: 3 dilation: 1 dilation: 2 axis: -3"))
    assert r["dilation"] == (1, 2) and r["axis"] == 1
    r3 = resolve_convolution_param(conv_param("num_output: 2 kernel_size: 3 kernel_size: 1 kernel_size: 2"), 3)
    assert r3["kernel_size"] == (3, 1, 2) and r3["stride"] == (1, 1, 1)


@pytest.mark.parametrize(
    "text,kwargs,match",
    [
        ("kernel_size: 3", {}, "num_output=0"),
        ("num_output: 4", {}, "kernel_size is given 0 times"),
        ("num_output: 4 kernel_size: 3 kernel_size: 3 kernel_size: 3", {}, "kernel_size is given 3 times"),
        ("num_output: 4 kernel_size: 3 kernel_h: 3 kernel_w: 3", {}, "kernel_size=.* together with kernel_h/kernel_w"),
        ("num_output: 4 kernel_h: 3", {}, "kernel_size=\\(3, 0\\) is not allowed"),
        ("num_output: 4 kernel_size: 0", {}, "kernel_size=\\(0, 0\\)"),
        ("num_output: 4 kernel_size: 3 stride: 1 stride_h: 2", {}, "stride=.* together with stride_h/stride_w"),
        ("num_output: 4 kernel_size: 3 stride_h: 2", {}, "stride=\\(2, 0\\) is not allowed"),
        ("num_output: 4 kernel_size: 3 stride: 0", {}, "stride=\\(0, 0\\)"),
        ("num_output: 4 kernel_size: 3 pad: 1 pad_w: 1", {}, "pad=.* together with pad_h/pad_w"),
        ("num_output: 4 kernel_size: 3 pad: 1 pad: 1 pad: 1", {}, "pad is given 3 times"),
        ("num_output: 4 kernel_size: 3 dilation: 1 dilation: 1 dilation: 1", {}, "dilation is given 3 times"),
        ("num_output: 4 kernel_size: 3 dilation: 0", {}, "dilation=\\(0, 0\\)"),
        ("num_output: 4 kernel_size: 3 group: 3", {}, "num_output=4 is not a multiple of group=3"),
        ("num_output: 4 kernel_size: 3 group: 0", {}, "group=0"),
        ("num_output: 4 kernel_size: 3 group: 2", {"in_channels": 3}, "3 channels, not a multiple of group=2"),
        ("num_output: 4 kernel_size: 3 axis: 2", {}, "axis=2 is not supported"),
        ("num_output: 4 kernel_h: 3 kernel_w: 3", {"num_spatial_axes": 3}, "2-D"),
    ],
)
def test_resolve_convolution_param_errors(text, kwargs, match):
    with pytest.raises(LayerConfigError, match=match):
        resolve_convolution_param(conv_param(text), layer_name="conv1", **kwargs)


def test_conv_and_deconv_output_sizes():
    assert conv_output_size(224, 7, 2, 3) == 112
    assert conv_output_size(10, 3, 1, 0, dilation=2) == 6
    assert conv_output_size(7, 3, 2, 1) == 4
    # C++ truncates toward zero: (2 - 3) / 2 + 1 = 0 + 1 = 1 (Python's // would give 0).
    assert conv_output_size(2, 3, 2, 0) == 1
    assert conv_output_size(1, 3, 1, 0) == -1
    assert deconv_output_size(4, 4, 2, 1) == 8
    assert deconv_output_size(5, 3, 2, 1, dilation=2) == 11
    for size, k, s, p, d in itertools.product([3, 8], [1, 3], [1, 2], [0, 1], [1, 2]):
        if d * (k - 1) + 1 > size + 2 * p:
            continue
        x = torch.zeros(1, 1, size, size)
        w = torch.zeros(1, 1, k, k)
        assert F.conv2d(x, w, stride=s, padding=p, dilation=d).shape[-1] == conv_output_size(size, k, s, p, d)
        if deconv_output_size(size, k, s, p, d) > 0 and p <= d * (k - 1):
            assert F.conv_transpose2d(x, w, stride=s, padding=p, dilation=d).shape[-1] == deconv_output_size(
                size, k, s, p, d
            )


# ---------------------------------------------------------------------------------------------
# OpenCV dnn (Caffe importer) as a peer
# ---------------------------------------------------------------------------------------------


def _opencv_forward(tmp_path, prototxt: str, x: np.ndarray, caffemodel: bytes | None = None) -> np.ndarray:
    cv2 = pytest.importorskip("cv2")
    proto = tmp_path / "net.prototxt"
    proto.write_text(prototxt)
    if caffemodel is None:
        net = cv2.dnn.readNetFromCaffe(str(proto))
    else:
        model = tmp_path / "net.caffemodel"
        model.write_bytes(caffemodel)
        net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.setInput(x)
    return np.asarray(net.forward())


def _input_layer(shape) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'


def _pool_prototxt(shape, method, k, s, p, round_mode="CEIL") -> str:
    rm = "" if round_mode == "CEIL" else " round_mode: FLOOR"
    return _input_layer(shape) + (
        f'layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param {{ pool: {method} '
        f"kernel_h: {k[0]} kernel_w: {k[1]} stride_h: {s[0]} stride_w: {s[1]} pad_h: {p[0]} pad_w: {p[1]}{rm} }} }}\n"
    )


def _opencv_pool_deviates(H, W, k, s, p, method) -> bool:
    """True where OpenCV 4.x is known to differ from Caffe (CEIL mode): see the module docstring."""
    any_pad = p != (0, 0)
    for size, kk, ss, pp in ((H, k[0], s[0], p[0]), (W, k[1], s[1], p[1])):
        if kk > size + 2 * pp:
            return True  # kernel larger than the padded input: OpenCV fails, Caffe pools what is there
        caffe_out = ref_out_size(size, kk, ss, pp, "CEIL", any_pad)
        if pp == 0 and any_pad and caffe_out != ref_out_size(size, kk, ss, pp, "CEIL", False):
            return True  # Caffe drops on the unpadded axis too
        if method == "MAX" and not any_pad and (caffe_out - 1) * ss >= size:
            return True  # empty MAX window: OpenCV 0, Caffe -FLT_MAX
    return False


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_vs_opencv(tmp_path, method):
    pytest.importorskip("cv2")
    rng = np.random.default_rng(7)
    compared = 0
    for (H, W), k, s, p in GEOMETRIES:
        if _opencv_pool_deviates(H, W, k, s, p, method):
            continue
        if ref_out_size(H, k[0], s[0], p[0], "CEIL", p != (0, 0)) < 1:
            continue
        if ref_out_size(W, k[1], s[1], p[1], "CEIL", p != (0, 0)) < 1:
            continue
        x = rng.standard_normal((2, 3, H, W)).astype(np.float32)
        cv_out = _opencv_forward(tmp_path, _pool_prototxt(x.shape, method, k, s, p), x)
        ours = caffe_pool2d(torch.from_numpy(x), method, k, s, p).numpy()
        assert cv_out.shape == ours.shape, ((H, W), k, s, p)
        np.testing.assert_allclose(cv_out, ours, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=str(((H, W), k, s, p)))
        compared += 1
    assert compared > 150


def test_pooling_opencv_known_disagreements(tmp_path):
    """Where OpenCV differs from Caffe we follow the reference; OpenCV's value is shown, not required."""
    pytest.importorskip("cv2")
    rng = np.random.default_rng(8)
    cases = [
        # (H, W), k, s, p, method, round_mode
        ((3, 3), (2, 2), (3, 3), (1, 0), "MAX", "CEIL"),  # Caffe drops on the unpadded W axis too
        ((6, 7), (1, 1), (2, 2), (0, 0), "MAX", "CEIL"),  # empty window: Caffe -FLT_MAX
        ((5, 5), (2, 2), (2, 2), (0, 0), "AVE", "FLOOR"),  # OpenCV ignores round_mode
        ((1, 1), (2, 2), (2, 2), (0, 0), "AVE", "CEIL"),  # kernel larger than the input: OpenCV fails
    ]
    for (H, W), k, s, p, method, mode in cases:
        x = rng.standard_normal((1, 2, H, W)).astype(np.float32)
        ours = caffe_pool2d(torch.from_numpy(x), method, k, s, p, mode).numpy()
        np.testing.assert_allclose(ours, ref_pool(x, method, k, s, p, mode), rtol=1e-6, atol=1e-6, equal_nan=True)
        try:
            cv_out = _opencv_forward(tmp_path, _pool_prototxt(x.shape, method, k, s, p, mode), x)
        except Exception as exc:  # cv2.error
            print(f"OpenCV fails for {(H, W), k, s, p, method, mode}: {str(exc).splitlines()[0]}")
            continue
        if cv_out.shape == ours.shape and np.allclose(cv_out, ours, equal_nan=True):
            continue  # a later OpenCV may have been fixed; agreeing is fine
        print(f"OpenCV differs from Caffe for {(H, W), k, s, p, method, mode}: {cv_out.shape} vs {ours.shape}")


def _conv_model(kind: str, weight: np.ndarray, bias: np.ndarray | None) -> bytes:
    net = schema.NetParameter()
    layer = net.layer.add()
    layer.name, layer.type = "conv", kind
    for arr in (weight, bias):
        if arr is None:
            continue
        blob = layer.blobs.add()
        blob.shape.dim.extend(arr.shape)
        blob.data.extend(arr.ravel().tolist())
    return net.SerializeToString()


# Not compared: a kernel taller than the padded input by less than the stride (input 2, kernel 3,
# stride 2). Caffe's C++ division gives 1 output row (see test_conv_and_deconv_output_sizes);
# OpenCV computes 0 and fails, and F.conv2d rejects it.
CONV_CASES = [
    # (C, H, W), convolution_param text
    ((3, 9, 8), "num_output: 4 kernel_size: 3"),
    ((4, 9, 8), "num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 2"),
    ((6, 9, 8), "num_output: 4 kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 0 stride_h: 2 stride_w: 1 group: 2 dilation: 2"),
    (
        (3, 10, 11),
        "num_output: 5 kernel_size: 3 kernel_size: 1 pad: 1 pad: 0 stride: 1 stride: 3 dilation: 2 dilation: 1",
    ),
    ((2, 7, 7), "num_output: 3 kernel_size: 5 pad: 4 bias_term: false"),
    ((6, 8, 8), "num_output: 6 kernel_size: 3 pad: 1 group: 6"),  # depthwise
]


@pytest.mark.parametrize("shape,text", CONV_CASES)
def test_convolution_vs_opencv(tmp_path, shape, text):
    pytest.importorskip("cv2")
    rng = np.random.default_rng(9)
    C, H, W = shape
    r = resolve_convolution_param(conv_param(text), in_channels=C)
    weight = rng.standard_normal((r["num_output"], C // r["group"], *r["kernel_size"])).astype(np.float32)
    bias = rng.standard_normal(r["num_output"]).astype(np.float32) if r["bias_term"] else None
    x = rng.standard_normal((2, C, H, W)).astype(np.float32)
    prototxt = _input_layer(x.shape) + (
        f'layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param {{ {text} }} }}\n'
    )
    cv_out = _opencv_forward(tmp_path, prototxt, x, _conv_model("Convolution", weight, bias))
    ours = F.conv2d(
        torch.from_numpy(x),
        torch.from_numpy(weight),
        None if bias is None else torch.from_numpy(bias),
        stride=r["stride"],
        padding=r["pad"],
        dilation=r["dilation"],
        groups=r["group"],
    ).numpy()
    expected_hw = tuple(
        conv_output_size(n, *a) for n, a in zip((H, W), zip(r["kernel_size"], r["stride"], r["pad"], r["dilation"]))
    )
    assert ours.shape[2:] == expected_hw
    assert cv_out.shape == ours.shape
    np.testing.assert_allclose(cv_out, ours, rtol=1e-4, atol=1e-4)


DECONV_CASES = [
    ((4, 5, 4), "num_output: 4 kernel_size: 4 stride: 2 pad: 1"),
    ((6, 5, 4), "num_output: 4 kernel_size: 3 kernel_size: 2 pad: 1 pad: 0 stride: 2 stride: 3 group: 2"),
    ((3, 4, 4), "num_output: 2 kernel_h: 3 kernel_w: 1 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0 bias_term: false"),
]


@pytest.mark.parametrize("shape,text", DECONV_CASES)
def test_deconvolution_vs_opencv(tmp_path, shape, text):
    pytest.importorskip("cv2")
    rng = np.random.default_rng(10)
    C, H, W = shape
    r = resolve_convolution_param(conv_param(text), in_channels=C, layer_type="Deconvolution")
    # Caffe's Deconvolution weight is (channels, num_output / group, kh, kw), as F.conv_transpose2d's.
    weight = rng.standard_normal((C, r["num_output"] // r["group"], *r["kernel_size"])).astype(np.float32)
    bias = rng.standard_normal(r["num_output"]).astype(np.float32) if r["bias_term"] else None
    x = rng.standard_normal((2, C, H, W)).astype(np.float32)
    prototxt = _input_layer(x.shape) + (
        f'layer {{ name: "conv" type: "Deconvolution" bottom: "data" top: "conv" convolution_param {{ {text} }} }}\n'
    )
    cv_out = _opencv_forward(tmp_path, prototxt, x, _conv_model("Deconvolution", weight, bias))
    ours = F.conv_transpose2d(
        torch.from_numpy(x),
        torch.from_numpy(weight),
        None if bias is None else torch.from_numpy(bias),
        stride=r["stride"],
        padding=r["pad"],
        dilation=r["dilation"],
        groups=r["group"],
    ).numpy()
    expected_hw = tuple(
        deconv_output_size(n, *a) for n, a in zip((H, W), zip(r["kernel_size"], r["stride"], r["pad"], r["dilation"]))
    )
    assert ours.shape[2:] == expected_hw
    assert cv_out.shape == ours.shape
    np.testing.assert_allclose(cv_out, ours, rtol=1e-4, atol=1e-4)
    # Not compared: dilated Deconvolution. OpenCV 4.x leaves dilation out of the output size
    # (kernel 2, dilation 2, stride 3, input 4 -> OpenCV 11, Caffe 3*3 + 2*1 + 1 = 12).


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("stride", [(7, 5), (4096, 4096), (1, 4096)])
def test_windows_past_the_input_cost_nothing_and_match_the_reference(method, stride):
    """Windows that start past the input (ceil mode, stride > kernel, no padding) are appended as
    constants instead of read from an input padded out to them, which at stride 4096 meant a
    4099 x 4099 copy per channel (found by fuzzing the exporters).  The values, -0 / +0 / NaN
    included, stay the reference's."""
    x = torch.randn(2, 3, 16, 13, dtype=torch.float64)
    got = caffe_pool2d(x, method, (3, 3), stride, (0, 0))
    want = ref_pool(x.numpy(), method, (3, 3), stride, (0, 0))
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.signbit(got.numpy()), np.signbit(want))  # -0 where Caffe divides by < 0
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-13, atol=0)
    assert got.shape[-1] * got.shape[-2] > 1  # some window lies past the input
