"""Caffe's Convolution and Deconvolution layers (base_conv_layer.cpp, conv_layer.cpp,
deconv_layer.cpp, im2col.cpp) as built by ``caffenorm.load``.

Each test pins one Caffe behaviour against a numpy reference written from Caffe's formulas
(``ref_conv`` reads input pixel ``o*stride - pad + k*dilation`` and zero outside the image, as
im2col does; ``ref_deconv`` scatters each input pixel to ``i*stride - pad + k*dilation``, as
col2im does), and against OpenCV dnn 4.x where OpenCV is right.  Where OpenCV differs:

* a dilated kernel that overhangs the padded input by less than the stride: Caffe's truncating
  division gives one output (reading zeros), OpenCV computes 0 outputs and refuses the net;
* Deconvolution with ``dilation``: OpenCV ignores the dilation in its output size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

import caffenorm
from caffenorm import BlobError, InputShapeError, LayerConfigError, NetDefinitionError, UnsupportedLayerError
from netutil import opencv_forward, write_model

# ------------------------------------------------------------------------------- the reference


def _out_conv(size, k, s, p, d):
    # C's int division truncates toward zero; Python's int() of the float quotient does too.
    return int((size + 2 * p - (d * (k - 1) + 1)) / s) + 1


def ref_conv(x, w, b, stride, pad, dilation, group):
    """Caffe's convolution: im2col (zeros outside the image) times the weight, per group."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    N, C, H, W = x.shape
    O, _, KH, KW = w.shape
    OH = _out_conv(H, KH, stride[0], pad[0], dilation[0])
    OW = _out_conv(W, KW, stride[1], pad[1], dilation[1])
    y = np.zeros((N, O, OH, OW))
    cg, og = C // group, O // group
    for kh in range(KH):
        rows = np.arange(OH) * stride[0] - pad[0] + kh * dilation[0]
        for kw in range(KW):
            cols = np.arange(OW) * stride[1] - pad[1] + kw * dilation[1]
            ok = (rows[:, None] >= 0) & (rows[:, None] < H) & (cols[None, :] >= 0) & (cols[None, :] < W)
            patch = x[:, :, np.clip(rows, 0, H - 1)][:, :, :, np.clip(cols, 0, W - 1)] * ok
            for g in range(group):
                y[:, g * og:(g + 1) * og] += np.einsum(
                    "nchw,oc->nohw", patch[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og, :, kh, kw]
                )
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y


def ref_deconv(x, w, b, stride, pad, dilation, group):
    """Caffe's deconvolution: every input pixel adds weight * value at ``i*stride - pad + k*dilation``."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    N, C, H, W = x.shape
    _, og, KH, KW = w.shape
    O = og * group
    OH = stride[0] * (H - 1) + dilation[0] * (KH - 1) + 1 - 2 * pad[0]
    OW = stride[1] * (W - 1) + dilation[1] * (KW - 1) + 1 - 2 * pad[1]
    y = np.zeros((N, O, OH, OW))
    cg = C // group
    for g in range(group):
        xs, ws = x[:, g * cg:(g + 1) * cg], w[g * cg:(g + 1) * cg]
        for i in range(H):
            for j in range(W):
                for kh in range(KH):
                    oh = i * stride[0] - pad[0] + kh * dilation[0]
                    for kw in range(KW):
                        ow = j * stride[1] - pad[1] + kw * dilation[1]
                        if 0 <= oh < OH and 0 <= ow < OW:
                            y[:, g * og:(g + 1) * og, oh, ow] += xs[:, :, i, j] @ ws[:, :, kh, kw]
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y


def test_reference_on_a_hand_computed_case():
    # 1x1x3x3 input, 2x2 kernel of ones, stride 1, pad 1: sums of the 2x2 windows of the zero-padded image.
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    y = ref_conv(x, np.ones((1, 1, 2, 2)), None, (1, 1), (1, 1), (1, 1), 1)
    assert y[0, 0].tolist() == [[0, 1, 3, 2], [3, 8, 12, 7], [9, 20, 24, 13], [6, 13, 15, 8]]
    # Deconvolution of a single pixel with stride 2 places the kernel there.
    w = np.arange(4.0).reshape(1, 1, 2, 2)
    y = ref_deconv(np.ones((1, 1, 1, 1)), w, [1.0], (2, 2), (0, 0), (1, 1), 1)
    assert y[0, 0].tolist() == [[1, 2], [3, 4]]


# ------------------------------------------------------------------------------- helpers


def _proto(layer_type, shape, body, name="conv1", extra=""):
    dims = " ".join(f"dim: {d}" for d in shape)
    return (
        f'name: "t"\nlayer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'
        f'layer {{ name: "{name}" type: "{layer_type}" bottom: "data" top: "{name}" '
        f"convolution_param {{ {body} }} }}\n{extra}"
    )


def _weights(rng, layer_type, C, O, group, kernel, bias=True):
    shape = (O, C // group, *kernel) if layer_type == "Convolution" else (C, O // group, *kernel)
    blobs = [rng.normal(size=shape).astype(np.float32)]
    if bias:
        blobs.append(rng.normal(size=O).astype(np.float32))
    return blobs


def _run(net, x):
    return net(torch.from_numpy(np.asarray(x, np.float32)))["conv1"].detach().numpy()


# (body, C, num_output, group, kernel, stride, pad, dilation, input shape)
CASES = [
    pytest.param("num_output: 5 kernel_size: 3", 3, 5, 1, (3, 3), (1, 1), (0, 0), (1, 1), (2, 3, 7, 6), id="plain"),
    pytest.param("num_output: 4 kernel_size: 3 stride: 2 pad: 1", 3, 4, 1, (3, 3), (2, 2), (1, 1), (1, 1),
                 (2, 3, 8, 7), id="stride-pad"),
    pytest.param("num_output: 4 kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", 2, 4, 1,
                 (3, 1), (2, 1), (1, 0), (1, 1), (1, 2, 7, 5), id="hw-fields-asymmetric"),
    pytest.param("num_output: 4 kernel_size: 3 kernel_size: 2 stride: 1 stride: 2 pad: 2 pad: 0", 2, 4, 1,
                 (3, 2), (1, 2), (2, 0), (1, 1), (1, 2, 5, 7), id="repeated-per-axis"),
    pytest.param("num_output: 6 kernel_size: 3 group: 3 pad: 1", 6, 6, 3, (3, 3), (1, 1), (1, 1), (1, 1),
                 (2, 6, 5, 5), id="group"),
    pytest.param("num_output: 4 kernel_size: 3 group: 4 stride: 2 pad: 1", 4, 4, 4, (3, 3), (2, 2), (1, 1), (1, 1),
                 (2, 4, 6, 6), id="depthwise"),
    pytest.param("num_output: 3 kernel_size: 3 dilation: 2 pad: 2", 2, 3, 1, (3, 3), (1, 1), (2, 2), (2, 2),
                 (1, 2, 9, 8), id="dilation"),
    pytest.param("num_output: 3 kernel_size: 3 dilation: 3 dilation: 1 pad_h: 0 pad_w: 1", 2, 3, 1, (3, 3),
                 (1, 1), (0, 1), (3, 1), (1, 2, 9, 6), id="dilation-per-axis"),
    pytest.param("num_output: 4 kernel_size: 1 stride: 2", 3, 4, 1, (1, 1), (2, 2), (0, 0), (1, 1), (2, 3, 5, 5),
                 id="1x1-stride"),
    pytest.param("num_output: 2 kernel_size: 4 stride: 3 pad: 1", 2, 2, 1, (4, 4), (3, 3), (1, 1), (1, 1),
                 (1, 2, 8, 9), id="stride-remainder"),
]


@pytest.mark.parametrize("body, C, O, group, kernel, stride, pad, dilation, shape", CASES)
def test_convolution_matches_reference_and_opencv(tmp_path, body, C, O, group, kernel, stride, pad, dilation, shape):
    """Caffe's geometry in every field form; the weight blob is (num_output, C/group, kh, kw)."""
    rng = np.random.default_rng(1)
    blobs = _weights(rng, "Convolution", C, O, group, kernel)
    proto, model = write_model(tmp_path, _proto("Convolution", shape, body), {"conv1": blobs})
    net = caffenorm.load(proto, model)
    assert [tuple(t.shape) for t in net.params["conv1"]] == [(O, C // group, *kernel), (O,)]
    x = rng.normal(size=shape).astype(np.float32)
    ours = _run(net, x)
    np.testing.assert_allclose(ours, ref_conv(x, *blobs, stride, pad, dilation, group), rtol=1e-5, atol=1e-5)
    pytest.importorskip("cv2")
    theirs = opencv_forward(proto, model, {"data": x}, ["conv1"])["conv1"]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


DECONV_CASES = [
    pytest.param("num_output: 3 kernel_size: 3", 2, 3, 1, (3, 3), (1, 1), (0, 0), (1, 1), (2, 2, 4, 5), id="plain"),
    pytest.param("num_output: 3 kernel_size: 4 stride: 2 pad: 1", 2, 3, 1, (4, 4), (2, 2), (1, 1), (1, 1),
                 (2, 2, 4, 3), id="stride2-upsample"),
    pytest.param("num_output: 2 kernel_size: 3 stride: 3", 3, 2, 1, (3, 3), (3, 3), (0, 0), (1, 1), (1, 3, 3, 2),
                 id="stride-equals-kernel"),
    pytest.param("num_output: 2 kernel_size: 2 stride: 3", 2, 2, 1, (2, 2), (3, 3), (0, 0), (1, 1), (1, 2, 3, 3),
                 id="stride-gt-kernel-gaps"),
    pytest.param("num_output: 4 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", 2, 4, 1, (3, 2),
                 (2, 1), (1, 0), (1, 1), (1, 2, 3, 4), id="hw-fields"),
    pytest.param("num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2", 4, 6, 2, (4, 4), (2, 2), (1, 1), (1, 1),
                 (1, 4, 3, 3), id="group"),
    pytest.param("num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 4 bias_term: false", 4, 4, 4, (4, 4),
                 (2, 2), (1, 1), (1, 1), (2, 4, 3, 3), id="depthwise-no-bias"),
]


@pytest.mark.parametrize("body, C, O, group, kernel, stride, pad, dilation, shape", DECONV_CASES)
def test_deconvolution_matches_reference_and_opencv(tmp_path, body, C, O, group, kernel, stride, pad, dilation,
                                                    shape):
    """Caffe's transposed convolution; the weight blob is (C, num_output/group, kh, kw)."""
    rng = np.random.default_rng(2)
    bias = "bias_term: false" not in body
    blobs = _weights(rng, "Deconvolution", C, O, group, kernel, bias)
    proto, model = write_model(tmp_path, _proto("Deconvolution", shape, body), {"conv1": blobs})
    net = caffenorm.load(proto, model)
    assert [tuple(t.shape) for t in net.params["conv1"]] == [(C, O // group, *kernel)] + [(O,)] * bias
    x = rng.normal(size=shape).astype(np.float32)
    ours = _run(net, x)
    expected = ref_deconv(x, *blobs, *([None] if not bias else []), stride, pad, dilation, group)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    pytest.importorskip("cv2")
    theirs = opencv_forward(proto, model, {"data": x}, ["conv1"])["conv1"]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_deconvolution_dilation_matches_reference(tmp_path):
    """Output ``stride*(in-1) + dilation*(k-1) + 1 - 2*pad``.  OpenCV ignores the dilation in its
    output size, so only the reference is compared."""
    rng = np.random.default_rng(3)
    blobs = _weights(rng, "Deconvolution", 2, 3, 1, (3, 3))
    proto, model = write_model(
        tmp_path, _proto("Deconvolution", (1, 2, 4, 3), "num_output: 3 kernel_size: 3 stride: 2 dilation: 2 pad: 1"),
        {"conv1": blobs},
    )
    x = rng.normal(size=(1, 2, 4, 3))
    ours = _run(caffenorm.load(proto, model), x)
    assert ours.shape == (1, 3, 2 * 3 + 5 - 2, 2 * 2 + 5 - 2)
    np.testing.assert_allclose(ours, ref_deconv(x, *blobs, (2, 2), (1, 1), (2, 2), 1), rtol=1e-5, atol=1e-5)


def test_convolution_kernel_overhanging_the_input_gives_one_output(tmp_path):
    """Caffe's ``(in + 2*pad - extent) / stride + 1`` truncates toward zero: 2x2 input, kernel 3,
    stride 2 gives 1x1 (im2col reads zeros beyond the input) where F.conv2d and OpenCV refuse."""
    rng = np.random.default_rng(4)
    blobs = _weights(rng, "Convolution", 2, 3, 1, (3, 3))
    proto, model = write_model(tmp_path, _proto("Convolution", (2, 2, 2, 2), "num_output: 3 kernel_size: 3 stride: 2"),
                               {"conv1": blobs})
    net = caffenorm.load(proto, model)
    assert net.blob_shapes["conv1"] == (2, 3, 1, 1)
    x = rng.normal(size=(2, 2, 2, 2))
    np.testing.assert_allclose(_run(net, x), ref_conv(x, *blobs, (2, 2), (0, 0), (1, 1), 1), rtol=1e-5, atol=1e-5)
    # Overhang on one axis only, with dilation 2 (extent 5): H gives (4 - 5) / 3 -> 0, +1 = 1 output;
    # W gives (9 - 5) / 3 = 1, +1 = 2.
    blobs = _weights(rng, "Convolution", 2, 3, 1, (3, 3))
    proto, model = write_model(
        tmp_path, _proto("Convolution", (1, 2, 4, 9), "num_output: 3 kernel_size: 3 stride: 3 dilation: 2"),
        {"conv1": blobs},
    )
    x = rng.normal(size=(1, 2, 4, 9))
    ours = _run(caffenorm.load(proto, model), x)
    assert ours.shape == (1, 3, 1, 2)
    np.testing.assert_allclose(ours, ref_conv(x, *blobs, (3, 3), (0, 0), (2, 2), 1), rtol=1e-5, atol=1e-5)


def test_kernel_larger_than_input_by_the_stride_is_rejected(tmp_path):
    """``(2 - 4) / 2 + 1 == 0`` outputs: Caffe would make an empty top; refused as a shape error."""
    proto, _ = write_model(tmp_path, _proto("Convolution", (1, 1, 2, 2), "num_output: 1 kernel_size: 4 stride: 2"))
    with pytest.raises(InputShapeError, match=r"'conv1'.*gives 0 outputs"):
        caffenorm.load(proto)


def test_bias_term_false_has_one_blob(tmp_path):
    rng = np.random.default_rng(5)
    blobs = _weights(rng, "Convolution", 2, 3, 1, (2, 2), bias=False)
    proto, model = write_model(tmp_path, _proto("Convolution", (1, 2, 4, 4), "num_output: 3 kernel_size: 2 "
                                                "bias_term: false"), {"conv1": blobs})
    net = caffenorm.load(proto, model)
    assert [tuple(t.shape) for t in net.params["conv1"]] == [(3, 2, 2, 2)]
    x = rng.normal(size=(1, 2, 4, 4))
    np.testing.assert_allclose(_run(net, x), ref_conv(x, blobs[0], None, (1, 1), (0, 0), (1, 1), 1), rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(BlobError, match="got 2 blobs, expected 1"):
        net.layer("conv1").load_caffe_blobs([blobs[0], np.zeros(3)])


@pytest.mark.parametrize("layer_type", ["Convolution", "Deconvolution"])
def test_any_batch_and_spatial_size(tmp_path, layer_type):
    """Nothing about N, H, W is baked in: the layer runs on other sizes than the declared one."""
    rng = np.random.default_rng(6)
    blobs = _weights(rng, layer_type, 4, 6, 2, (3, 3))
    body = "num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 2"
    proto, model = write_model(tmp_path, _proto(layer_type, (2, 4, 8, 8), body), {"conv1": blobs})
    net = caffenorm.load(proto, model)
    ref = ref_conv if layer_type == "Convolution" else ref_deconv
    for shape in [(1, 4, 8, 8), (3, 4, 5, 11), (0, 4, 6, 6)]:
        x = rng.normal(size=shape)
        np.testing.assert_allclose(_run(net, x), ref(x, *blobs, (2, 2), (1, 1), (1, 1), 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer_type", ["Convolution", "Deconvolution"])
def test_several_bottoms_share_the_weights(tmp_path, layer_type):
    """Caffe's conv layers take N bottoms of one shape and give N tops, all with the same weights."""
    rng = np.random.default_rng(7)
    blobs = _weights(rng, layer_type, 2, 3, 1, (2, 2))
    text = (
        'layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }\n'
        f'layer {{ name: "conv1" type: "{layer_type}" bottom: "a" bottom: "b" top: "ya" top: "yb" '
        "convolution_param { num_output: 3 kernel_size: 2 } }\n"
    )
    proto, model = write_model(tmp_path, text, {"conv1": blobs})
    net = caffenorm.load(proto, model)
    a, b = rng.normal(size=(2, 1, 2, 4, 4)).astype(np.float32)
    out = net(a=torch.from_numpy(a), b=torch.from_numpy(b))
    ref = ref_conv if layer_type == "Convolution" else ref_deconv
    for name, x in (("ya", a), ("yb", b)):
        np.testing.assert_allclose(out[name].detach().numpy(), ref(x, *blobs, (1, 1), (0, 0), (1, 1), 1),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(InputShapeError, match="same shape"):
        net(a=torch.from_numpy(a), b=torch.zeros(1, 2, 5, 4))


@pytest.mark.parametrize("layer_type", ["Convolution", "Deconvolution"])
def test_gradients(tmp_path, layer_type):
    """Autograd through input, weight and bias (float64 gradcheck on a tiny grouped, strided layer)."""
    body = "num_output: 4 kernel_size: 2 stride: 2 pad: 1 group: 2 dilation: 1 weight_filler { type: 'gaussian' } " \
           "bias_filler { type: 'gaussian' }"
    proto, _ = write_model(tmp_path, _proto(layer_type, (1, 2, 3, 3), body))
    module = caffenorm.load(proto).layer("conv1").double()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    w = module.weight.detach().clone().requires_grad_(True)
    b = module.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, w, b: functional_call(module, {"weight": w, "bias": b}, (x,)),
                                    (x, w, b))


def test_overhang_gradient(tmp_path):
    """The explicit zero padding of the overhang case is differentiable too."""
    proto, _ = write_model(tmp_path, _proto("Convolution", (1, 1, 2, 2), "num_output: 1 kernel_size: 3 stride: 2 "
                                            "weight_filler { type: 'gaussian' }"))
    module = caffenorm.load(proto).layer("conv1").double()
    x = torch.randn(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,))


def test_fillers(tmp_path):
    """Caffe always runs both fillers, and an unset FillerParameter (or one without ``type``) is
    constant 0; ``xavier`` on the conv weight uses fan_in = C/group * kh * kw."""
    text = _proto("Convolution", (1, 4, 5, 5), "num_output: 8 kernel_size: 3 group: 2 "
                  "weight_filler { type: 'xavier' } bias_filler { type: 'constant' value: 0.25 }")
    text += ('layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "out2" '
             "convolution_param { num_output: 2 kernel_size: 1 weight_filler { std: 0.1 } } }\n")
    text += ('layer { name: "deconv" type: "Deconvolution" bottom: "out2" top: "out3" '
             "convolution_param { num_output: 2 kernel_size: 2 weight_filler { type: 'constant' value: 1.5 } } }\n")
    proto, _ = write_model(tmp_path, text)
    params = caffenorm.load(proto, seed=3).params
    w, b = params["conv1"]
    bound = np.sqrt(3.0 / (2 * 3 * 3))
    assert w.abs().max() <= bound and w.abs().max() > 0.5 * bound and w.std() > 0
    assert torch.all(b == 0.25)
    assert all(torch.all(t == 0) for t in params["conv2"])
    assert torch.all(params["deconv"][0] == 1.5) and torch.all(params["deconv"][1] == 0)
    assert tuple(params["deconv"][0].shape) == (2, 2, 2, 2)


def test_save_and_reload_round_trip(tmp_path):
    rng = np.random.default_rng(8)
    text = _proto("Convolution", (1, 3, 6, 6), "num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: 'msra' } "
                  "bias_filler { type: 'uniform' }")
    text += ('layer { name: "up" type: "Deconvolution" bottom: "conv1" top: "up" '
             "convolution_param { num_output: 2 kernel_size: 4 stride: 2 pad: 1 group: 2 "
             "weight_filler { type: 'gaussian' } } }\n")
    proto, _ = write_model(tmp_path, text)
    net = caffenorm.load(proto, seed=11)
    x = torch.from_numpy(rng.normal(size=(2, 3, 6, 6)).astype(np.float32))
    before = net(x)["up"]
    net.save(tmp_path / "saved.prototxt", tmp_path / "saved.caffemodel")
    again = caffenorm.load(tmp_path / "saved.prototxt", tmp_path / "saved.caffemodel")
    assert torch.equal(again(x)["up"], before)
    assert [tuple(t.shape) for t in again.params["up"]] == [(4, 1, 4, 4), (2,)]


def test_legacy_v1_layer(tmp_path):
    """A V1 ``layers { type: CONVOLUTION }`` entry is upgraded and builds the same module."""
    text = (
        'input: "data" input_dim: 1 input_dim: 2 input_dim: 5 input_dim: 5\n'
        'layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" '
        "convolution_param { num_output: 3 kernel_size: 3 stride: 2 } }\n"
    )
    proto, _ = write_model(tmp_path, text)
    net = caffenorm.load(proto)
    assert net.blob_shapes["conv1"] == (1, 3, 2, 2)


# ------------------------------------------------------------------------------- rejected settings

REJECTED = [
    pytest.param("Convolution", (1, 2, 5, 5), "kernel_size: 3", LayerConfigError, "num_output=0", id="no-num_output"),
    pytest.param("Convolution", (1, 2, 5, 5), "num_output: 2", LayerConfigError, "kernel_size", id="no-kernel"),
    pytest.param("Convolution", (1, 2, 5, 5), "num_output: 2 kernel_h: 3", LayerConfigError, "kernel_size=",
                 id="lone-kernel_h"),
    pytest.param("Convolution", (1, 2, 5, 5), "num_output: 2 kernel_size: 3 pad: 1 pad_h: 1 pad_w: 1",
                 LayerConfigError, "pad", id="pad-and-pad_h"),
    pytest.param("Convolution", (1, 2, 5, 5), "num_output: 2 kernel_size: 1 kernel_size: 2 kernel_size: 3",
                 LayerConfigError, "3 times", id="kernel-three-values"),
    pytest.param("Convolution", (1, 3, 5, 5), "num_output: 2 kernel_size: 3 group: 2", LayerConfigError,
                 "group=2", id="channels-not-multiple-of-group"),
    pytest.param("Deconvolution", (1, 2, 5, 5), "num_output: 3 kernel_size: 3 group: 2", LayerConfigError,
                 "num_output=3 is not a multiple", id="num_output-not-multiple-of-group"),
    pytest.param("Convolution", (1, 2, 5, 5), "num_output: 2 kernel_size: 3 stride: 0", LayerConfigError,
                 "stride", id="stride-0"),
    pytest.param("Convolution", (1, 2, 5, 5), "num_output: 2 kernel_size: 3 dilation: 0", LayerConfigError,
                 "dilation", id="dilation-0"),
    pytest.param("Convolution", (1, 2, 5, 5), "num_output: 2 kernel_size: 3 axis: 2", UnsupportedLayerError,
                 "axis=2", id="axis-2"),
    pytest.param("Convolution", (1, 2, 5, 5), "num_output: 2 kernel_size: 3 axis: 4", LayerConfigError,
                 "out of range", id="axis-out-of-range"),
    pytest.param("Convolution", (1, 2, 5, 5, 5), "num_output: 2 kernel_size: 3", UnsupportedLayerError,
                 "N-D convolution", id="3d-conv"),
    pytest.param("Deconvolution", (1, 2, 5), "num_output: 2 kernel_size: 3", UnsupportedLayerError,
                 "N-D convolution", id="1d-deconv"),
    pytest.param("Convolution", (1, 2, 5, 5), "num_output: 2 kernel_size: 6", InputShapeError, "gives 0 outputs",
                 id="kernel-too-large"),
    pytest.param("Deconvolution", (1, 2, 1, 1), "num_output: 2 kernel_size: 2 pad: 1", InputShapeError,
                 "gives 0 outputs", id="deconv-pad-too-large"),
    pytest.param("Convolution", (1, 2, 5, 5), "num_output: 2 kernel_size: 3 weight_filler { type: 'nope' }",
                 LayerConfigError, "nope", id="bad-filler"),
]


@pytest.mark.parametrize("layer_type, shape, body, error, match", REJECTED)
def test_rejected_settings_name_the_layer(tmp_path, layer_type, shape, body, error, match):
    proto, _ = write_model(tmp_path, _proto(layer_type, shape, body))
    with pytest.raises(error, match=match) as info:
        caffenorm.load(proto)
    assert "'conv1'" in str(info.value) and layer_type in str(info.value)


def test_wiring_errors(tmp_path):
    data = 'layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } ' \
           'shape { dim: 1 dim: 2 dim: 5 dim: 4 } } }\n'
    two_tops = data + ('layer { name: "conv1" type: "Convolution" bottom: "a" top: "x" top: "y" '
                       "convolution_param { num_output: 1 kernel_size: 1 } }\n")
    proto, _ = write_model(tmp_path, two_tops)
    with pytest.raises(NetDefinitionError, match=r"'conv1'.*1 bottom\(s\) and 2 top\(s\)"):
        caffenorm.load(proto)
    mismatched = data + ('layer { name: "conv1" type: "Convolution" bottom: "a" bottom: "b" top: "x" top: "y" '
                         "convolution_param { num_output: 1 kernel_size: 1 } }\n")
    proto, _ = write_model(tmp_path, mismatched)
    with pytest.raises(NetDefinitionError, match=r"'conv1'.*same shape"):
        caffenorm.load(proto)


def test_wrong_input_at_forward(tmp_path):
    proto, _ = write_model(tmp_path, _proto("Convolution", (1, 2, 5, 5), "num_output: 2 kernel_size: 3"))
    net = caffenorm.load(proto)
    with pytest.raises(InputShapeError, match=r"'conv1'.*3 channels.*set up for 2"):
        net(torch.zeros(1, 3, 5, 5))
    with pytest.raises(InputShapeError, match=r"'conv1'.*gives 0 outputs"):
        net(torch.zeros(1, 2, 2, 5))


def test_wrong_blob_shape_on_load(tmp_path):
    rng = np.random.default_rng(9)
    proto, model = write_model(tmp_path, _proto("Convolution", (1, 4, 5, 5), "num_output: 2 kernel_size: 3 group: 2"),
                               {"conv1": [rng.normal(size=(2, 4, 3, 3)), np.zeros(2)]})
    with pytest.raises(BlobError, match=r"'conv1'.*\(2, 4, 3, 3\), expected \(2, 2, 3, 3\)"):
        caffenorm.load(proto, model)


def test_extra_repr_names_every_setting(tmp_path):
    proto, _ = write_model(tmp_path, _proto("Deconvolution", (1, 2, 5, 5), "num_output: 4 kernel_h: 3 kernel_w: 2 "
                                            "stride: 2 pad: 1 dilation: 2 group: 2 bias_term: false"))
    text = repr(caffenorm.load(proto).layer("conv1"))
    for part in ("channels=2", "num_output=4", "kernel_size=(3, 2)", "stride=(2, 2)", "pad=(1, 1)",
                 "dilation=(2, 2)", "group=2", "bias_term=False"):
        assert part in text
