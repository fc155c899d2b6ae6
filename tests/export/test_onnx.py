"""ONNX export (``caffenorm.export.onnx``): every layer mapping, the zoo and real nets, torch.onnx
of user models with caffenorm modules, and the error paths.

Every ``to_onnx`` call verifies itself: onnxruntime (CPU, default graph optimizations) runs the
written file and a copy exposing every intermediate blob at batch sizes 1 and 2, and each blob is
compared with caffenorm's eager net (``max |onnx - caffenorm| <= 1e-5 + 1e-4 * max |caffenorm|``;
the rest of the suite pins the eager net against a float64 Caffe oracle and OpenCV).  The tests
below check that the report covers what it should, compare LRN, BatchNorm and Normalize with that
oracle directly, and add inputs the seeded normal data would not produce (zero vectors, ties,
NaN, real photos).  ``tests/export/conftest.py`` puts ``tests`` and ``tests/caffe`` on sys.path.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zoo
from netutil import write_model
from torch import nn

import caffenorm
from caffenorm import ExportError
from reference import caffe_ref

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from caffenorm.export.onnx import (
    _registry,
    custom_translation_table,
    mapping_table,
    register_torch_onnx,
    to_onnx,
    unregister_torch_onnx,
)

SHAPE = (2, 3, 4, 5)


# ----------------------------------------------------------------------------------- helpers


def _input_layers(inputs: dict[str, tuple[int, ...]]) -> str:
    text = 'name: "one_layer"\n'
    for name, shape in inputs.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        text += f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'
    return text


def load_net(tmp_path: Path, body: str, inputs: dict[str, tuple[int, ...]] | None = None,
             weights: dict[str, list[np.ndarray]] | None = None, **load_kw) -> caffenorm.Net:
    """A net of Input layers (``data`` of SHAPE by default) and ``body``; weights from a caffemodel
    when given, else from the prototxt's fillers."""
    text = _input_layers(inputs or {"data": SHAPE}) + body
    proto, model = write_model(tmp_path, text, weights)
    return caffenorm.load(proto, model if weights else None, **load_kw)


def export(net: caffenorm.Net, tmp_path: Path, name: str = "model.onnx", **kw):
    """``to_onnx`` (which raises on a mismatch); checks that the report covers every blob the net
    writes, at both batch sizes unless told otherwise."""
    path = tmp_path / name
    report = to_onnx(net, path, **kw)
    assert report.ok and report.checks, report.table()
    written = {top for node in net.graph.nodes if not node.is_input for top in node.tops}
    checked = {c.name for c in report.checks}
    assert written <= checked, f"unchecked blobs: {written - checked}"
    if kw.get("dynamic_batch", True):
        assert {c.batch for c in report.checks} == set(kw.get("batch_sizes", (1, 2)))
    return report, path


def run_file(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def eager(net: caffenorm.Net, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = net(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()})
    return {k: v.numpy() for k, v in out.items()}


def _layer(type_: str, param: str = "", bottoms=("data",), tops=("out",), name: str = "layer") -> str:
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    t = " ".join(f'top: "{x}"' for x in tops)
    return f'layer {{ name: "{name}" type: "{type_}" {b} {t} {param} }}\n'


GAUSS = 'type: "gaussian" std: 0.5'


def _example():
    """The model bundled with caffenorm (prototxt, caffemodel)."""
    from caffenorm.cli import example_model

    return example_model()


# ----------------------------------------------------------------------------------- normalization layers

LRN_CASES = [
    # (local_size, alpha, beta, k, channels, region)
    (5, 1.0, 0.75, 2.0, 8, "ACROSS_CHANNELS"),
    (3, 2.0, 0.5, 0.5, 6, "ACROSS_CHANNELS"),
    (5, 0.5, 1.3, 1.0, 3, "ACROSS_CHANNELS"),  # channels < local_size
    (7, 1.5, 0.75, 3.0, 2, "ACROSS_CHANNELS"),  # channels < local_size, k != 1
    (1, 1.0, 0.75, 2.0, 4, "ACROSS_CHANNELS"),
    (3, 1.0, 0.75, 5.0, 4, "WITHIN_CHANNEL"),  # k ignored
    (5, 2.0, 0.5, 1.0, 3, "WITHIN_CHANNEL"),  # window larger than H = 4
    (1, 0.5, 1.0, 1.0, 3, "WITHIN_CHANNEL"),
    (7, 4.0, 0.75, 2.0, 2, "WITHIN_CHANNEL"),
    # onnxruntime's LRN refuses alpha <= 0 and beta <= 0, which Caffe takes: composed ops instead
    (5, 0.0, 0.75, 2.0, 8, "ACROSS_CHANNELS"),
    (3, -0.1, 0.75, 4.0, 6, "ACROSS_CHANNELS"),  # k + alpha/n * sum stays positive
    (5, 1.0, 0.0, 2.0, 3, "ACROSS_CHANNELS"),
    (7, 1.5, -0.75, 3.0, 2, "ACROSS_CHANNELS"),  # channels < local_size
]


@pytest.mark.parametrize("n,alpha,beta,k,channels,region", LRN_CASES)
def test_lrn(tmp_path, n, alpha, beta, k, channels, region):
    param = f"lrn_param {{ local_size: {n} alpha: {alpha} beta: {beta} k: {k} norm_region: {region} }}"
    net = load_net(tmp_path, _layer("LRN", param), {"data": (2, channels, 4, 5)})
    _, path = export(net, tmp_path)
    ops = [node.op_type for node in onnx.load(path).graph.node]
    if region == "ACROSS_CHANNELS" and (n - 1) // 2 >= channels - 1:  # the window reaches every channel
        assert "LRN" not in ops and "ReduceSumSquare" in ops
    elif region == "ACROSS_CHANNELS" and alpha > 0 and beta > 0:
        assert ops == ["LRN"]
    elif region == "ACROSS_CHANNELS":
        assert "LRN" not in ops and "AveragePool" in ops
    else:
        assert "LRN" not in ops and "Pad" in ops and "AveragePool" in ops
    # and directly against the float64 Caffe oracle, on data where the normalisation is strong
    x = (np.random.default_rng(8).standard_normal((3, channels, 4, 5)) * 2).astype(np.float32)
    (y,) = run_file(path, {"data": x})
    expected = caffe_ref.lrn(x.astype(np.float64), n, alpha, beta, k, region)
    np.testing.assert_allclose(y, expected, rtol=2e-6, atol=1e-7)


def _bn_weights(channels: int, factor: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    mean, var = rng.normal(0, 0.5, channels), rng.uniform(0.3, 2.0, channels)
    return [mean * factor, var * factor, np.array([factor])]


@pytest.mark.parametrize("factor", [2.5, 0.0])
@pytest.mark.parametrize("shape", [SHAPE, (2, 3), (2, 3, 2, 3, 4)], ids=["4d", "2d", "5d"])
def test_batch_norm(tmp_path, factor, shape):
    """Stored sums over the scale factor; factor 0 gives zero statistics (y = x / sqrt(eps))."""
    body = _layer("BatchNorm", "batch_norm_param { eps: 0.001 }")
    net = load_net(tmp_path, body, {"data": shape}, {"layer": _bn_weights(3, factor)})
    _, path = export(net, tmp_path)
    model = onnx.load(path)
    assert [node.op_type for node in model.graph.node] == ["BatchNormalization"]
    x = np.random.default_rng(9).standard_normal((3, *shape[1:])).astype(np.float32)
    (y,) = run_file(path, {"data": x})
    blobs = _bn_weights(3, factor)
    expected, *_ = caffe_ref.batch_norm(x.astype(np.float64), *blobs[:2], blobs[2][0], use_global_stats=True,
                                        eps=net.layer("layer").eps)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    if factor == 0:
        feeds = {"data": np.ones((2, *shape[1:]), np.float32)}
        (y,) = run_file(path, feeds)
        np.testing.assert_allclose(y, 1 / np.sqrt(np.float32(0.001)), rtol=1e-6)


def test_fused_batch_norm_scale_is_one_node(tmp_path):
    body = _layer("BatchNorm", "", tops=("data",), name="bn") + _layer(
        "Scale", "scale_param { bias_term: true }", bottoms=("data",), tops=("data",), name="scale"
    ) + _layer("ReLU", bottoms=("data",), tops=("out",), name="relu")
    rng = np.random.default_rng(1)
    weights = {"bn": _bn_weights(3, 1.7), "scale": [rng.uniform(0.5, 1.5, 3), rng.normal(0, 0.3, 3)]}
    net = load_net(tmp_path, body, weights=weights)
    assert net.graph.nodes[1].type == "BatchNorm+Scale"
    report, path = export(net, tmp_path)
    assert [n.op_type for n in onnx.load(path).graph.node] == ["BatchNormalization", "Relu"]
    assert {c.name for c in report.checks} == {"data", "out"}  # the in-place blob's last value


SCALE_CASES = [
    # (axis, num_axes, blob shape)
    (1, 1, (3,)),
    (1, 0, ()),
    (1, 2, (3, 4)),
    (1, -1, (3, 4, 5)),
    (2, 1, (4,)),
    (-1, 1, (5,)),
    (2, -1, (4, 5)),
]


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
@pytest.mark.parametrize("axis,num_axes,shape", SCALE_CASES)
def test_scale_and_bias_axes(tmp_path, kind, axis, num_axes, shape):
    rng = np.random.default_rng(2)
    if kind == "Scale":
        param = f"scale_param {{ axis: {axis} num_axes: {num_axes} bias_term: true }}"
        weights = [rng.uniform(0.5, 2.0, shape), rng.normal(0, 1, shape)]
    else:
        param = f"bias_param {{ axis: {axis} num_axes: {num_axes} }}"
        weights = [rng.normal(0, 1, shape)]
    net = load_net(tmp_path, _layer(kind, param), weights={"layer": weights})
    export(net, tmp_path)


def test_scale_with_the_batch_axis_needs_a_fixed_batch(tmp_path):
    """A blob spanning axis 0 has the batch in its shape: refused with a dynamic batch, exported
    with the declared one."""
    rng = np.random.default_rng(3)
    net = load_net(tmp_path, _layer("Scale", "scale_param { axis: 0 num_axes: 2 }"),
                   weights={"layer": [rng.normal(0, 1, (2, 3))]})
    with pytest.raises(ExportError, match="dynamic_batch=False"):
        to_onnx(net, tmp_path / "a.onnx")
    report, _ = export(net, tmp_path, dynamic_batch=False)
    assert {c.batch for c in report.checks} == {2}


SE_GATE = (
    'layer { name: "squeeze" type: "Pooling" bottom: "data" top: "squeeze" pooling_param { pool: AVE global_pooling: true } }\n'
    'layer { name: "flat" type: "Reshape" bottom: "squeeze" top: "flat" reshape_param { shape { dim: 0 dim: -1 } } }\n'
    'layer { name: "gate" type: "Sigmoid" bottom: "flat" top: "gate" }\n'
)


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
def test_two_bottom_forms_with_a_dynamic_batch(tmp_path, kind):
    """SE-block style: the second bottom (N, C) spans axes 0..1 of x (N, C, H, W)."""
    param = "scale_param { axis: 0 }" if kind == "Scale" else "bias_param { axis: 0 }"
    net = load_net(tmp_path, SE_GATE + _layer(kind, param, bottoms=("data", "gate")))
    export(net, tmp_path)


@pytest.mark.parametrize("axis", [1, 2])
def test_two_bottom_scale_with_learned_bias(tmp_path, axis):
    shape = SHAPE[axis:axis + 2]
    rng = np.random.default_rng(4)
    net = load_net(tmp_path, _layer("Scale", f"scale_param {{ axis: {axis} bias_term: true }}", bottoms=("data", "g")),
                   {"data": SHAPE, "g": shape}, {"layer": [rng.normal(0, 1, shape)]})
    export(net, tmp_path, dynamic_batch=False)


@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_normalize_with_zero_vectors(tmp_path, across, shared):
    """eps stays inside the sqrt through onnxruntime's optimizations: zero vectors give 0, not NaN."""
    scale = np.array(20.0) if shared else np.array([1.0, 2.5, 7.0])
    param = f"norm_param {{ across_spatial: {str(across).lower()} channel_shared: {str(shared).lower()} }}"
    net = load_net(tmp_path, _layer("Normalize", param), weights={"layer": [scale]})
    _, path = export(net, tmp_path)
    x = np.random.default_rng(5).standard_normal(SHAPE).astype(np.float32)
    x[1] = 0.0  # a zero sample
    x[0, :, 1, 2] = 0.0  # a zero position
    x[0, :, 2, 3] = 1e-7  # a tiny one: divided by sqrt(sum + eps), not by the norm alone
    (y,) = run_file(path, {"data": x})
    expected = eager(net, {"data": x})["out"]
    assert np.isfinite(y).all()
    assert (y[1] == 0).all() and (y[0, :, 1, 2] == 0).all()
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    oracle = caffe_ref.normalize(x.astype(np.float64), scale, across_spatial=across, eps=net.layer("layer").eps)
    np.testing.assert_allclose(y, oracle, rtol=1e-5, atol=1e-6)


def test_normalize_2d(tmp_path):
    net = load_net(tmp_path, _layer("Normalize", "norm_param { across_spatial: false channel_shared: false }"),
                   {"data": (2, 6)}, {"layer": [np.linspace(0.5, 3, 6)]})
    export(net, tmp_path)


# ----------------------------------------------------------------------------------- convolution, pooling, inner product

CONV_CASES = {
    "group_stride_pad_dilation": ((2, 4, 9, 11), "num_output: 6 kernel_size: 3 group: 2 stride: 2 pad: 1 dilation: 2"),
    "truncating_size": ((2, 3, 4, 5), "num_output: 4 kernel_size: 5 stride: 2"),  # Caffe gives 1x1
    "truncating_with_pad": ((2, 3, 6, 7), "num_output: 4 kernel_h: 7 kernel_w: 5 stride_h: 3 stride_w: 4 pad_h: 0 pad_w: 1"),
    "no_bias_depthwise": ((2, 4, 6, 6), "num_output: 4 kernel_size: 3 group: 4 bias_term: false"),
    "1x1": ((2, 3, 5, 5), "num_output: 2 kernel_size: 1"),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_convolution(tmp_path, case):
    shape, param = CONV_CASES[case]
    body = _layer("Convolution", f"convolution_param {{ {param} weight_filler {{ {GAUSS} }} "
                                 f"bias_filler {{ {GAUSS} }} }}")
    net = load_net(tmp_path, body, {"data": shape})
    _, path = export(net, tmp_path)
    if case.startswith("truncating"):
        assert "Pad" in [n.op_type for n in onnx.load(path).graph.node]


def test_convolution_with_two_bottoms_shares_weights(tmp_path):
    body = _layer("Convolution", f"convolution_param {{ num_output: 2 kernel_size: 3 weight_filler {{ {GAUSS} }} }}",
                  bottoms=("a", "b"), tops=("ya", "yb"))
    net = load_net(tmp_path, body, {"a": SHAPE, "b": SHAPE})
    _, path = export(net, tmp_path)
    assert len(onnx.load(path).graph.initializer) == 2  # weight + bias, once


@pytest.mark.parametrize("param", [
    "num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 2",
    "num_output: 3 kernel_size: 3 dilation: 2",
    "num_output: 2 kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 bias_term: false",
])
def test_deconvolution(tmp_path, param):
    body = _layer("Deconvolution", f"convolution_param {{ {param} weight_filler {{ {GAUSS} }} bias_filler {{ {GAUSS} }} }}")
    export(load_net(tmp_path, body, {"data": (2, 4, 5, 6)}), tmp_path)


POOL_CASES = {
    # name: (input HxW, pooling_param)
    "ceil_overhang": ((6, 7), "kernel_size: 3 stride: 2"),
    "pad_one_axis_only": ((5, 6), "kernel_size: 3 stride: 2 pad_h: 1 pad_w: 0"),
    "pad_over_half_kernel": ((5, 5), "kernel_size: 3 stride: 1 pad: 2"),
    "drop_rule": ((5, 5), "kernel_size: 2 stride: 2 pad: 1"),
    "resnet_border": ((8, 8), "kernel_size: 3 stride: 2 pad: 1"),
    "stride_over_kernel": ((7, 7), "kernel_size: 2 stride: 3"),
    "empty_window": ((5, 5), "kernel_size: 1 stride: 3"),  # a window starts beyond the image
    "floor": ((7, 7), "kernel_size: 2 stride: 2 round_mode: FLOOR"),
    "fits": ((8, 8), "kernel_size: 2 stride: 2"),
    "global": ((5, 7), "global_pooling: true"),
    # Windows past the input are appended as constants, not read from a padded input (a stride of
    # 4096 padded a 16 x 16 input to 4099 x 4099, found by fuzzing).
    "huge_stride": ((16, 13), "kernel_size: 3 stride: 4096"),
    "stride_past_input": ((5, 9), "kernel_h: 2 kernel_w: 1 stride_h: 4 stride_w: 5"),
}


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_pooling(tmp_path, method, case):
    hw, param = POOL_CASES[case]
    net = load_net(tmp_path, _layer("Pooling", f"pooling_param {{ pool: {method} {param} }}"), {"data": (2, 3, *hw)})
    _, path = export(net, tmp_path)
    if case == "huge_stride":
        model = onnx.load(path)
        assert sum(init.ByteSize() for init in model.graph.initializer) < 10_000  # no 4099 x 4099 divisor map
    if case in ("empty_window", "huge_stride", "stride_past_input"):
        y = eager(net, {"data": np.ones((1, 3, *hw), np.float32)})["out"]
        (got,) = run_file(path, {"data": np.ones((1, 3, *hw), np.float32)})
        if method == "MAX":
            assert got[0, 0, -1, -1] == -np.finfo(np.float32).max == y[0, 0, -1, -1]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(y))


@pytest.mark.parametrize("shape,param", [
    ((2, 3, 4, 5), "num_output: 7"),
    ((2, 3, 4, 5), "num_output: 7 axis: 2"),
    ((2, 3, 4, 5), "num_output: 7 axis: -1 transpose: true"),
    ((2, 12), "num_output: 5 bias_term: false"),
])
def test_inner_product(tmp_path, shape, param):
    body = _layer("InnerProduct", f"inner_product_param {{ {param} weight_filler {{ {GAUSS} }} bias_filler {{ {GAUSS} }} }}")
    export(load_net(tmp_path, body, {"data": shape}), tmp_path)


def test_inner_product_over_the_batch_axis_needs_a_fixed_batch(tmp_path):
    net = load_net(tmp_path, _layer("InnerProduct", f"inner_product_param {{ num_output: 3 axis: 0 weight_filler {{ {GAUSS} }} }}"))
    with pytest.raises(ExportError, match=r"layer 'layer' \(InnerProduct\).*dynamic_batch=False"):
        to_onnx(net, tmp_path / "a.onnx")
    export(net, tmp_path, dynamic_batch=False)


# ----------------------------------------------------------------------------------- activations, eltwise

ACTIVATIONS = {
    "relu": ("ReLU", ""),
    "leaky_relu": ("ReLU", "relu_param { negative_slope: 0.1 }"),
    "prelu": ("PReLU", 'prelu_param { filler { type: "uniform" min: -0.5 max: 0.5 } }'),
    "prelu_shared": ("PReLU", 'prelu_param { channel_shared: true filler { type: "constant" value: 0.3 } }'),
    "elu": ("ELU", "elu_param { alpha: 0.5 }"),
    "sigmoid": ("Sigmoid", ""),
    "tanh": ("TanH", ""),
    "absval": ("AbsVal", ""),
    "power": ("Power", "power_param { power: 2 scale: 0.5 shift: 1 }"),
    "power_sqrt": ("Power", "power_param { power: 0.5 scale: 0.5 shift: 5 }"),
    "power_zero": ("Power", "power_param { power: 0 }"),
    "power_scale_zero": ("Power", "power_param { power: 3 scale: 0 shift: 2 }"),
    "power_identity": ("Power", ""),
    "exp": ("Exp", "exp_param { scale: 0.5 shift: 1 }"),
    "exp_base2": ("Exp", "exp_param { base: 2 scale: 1.5 shift: -1 }"),
    "log": ("Log", "log_param { shift: 10 }"),
    "log_base10": ("Log", "log_param { base: 10 scale: 2 shift: 7 }"),
    "bnll": ("BNLL", ""),
    "threshold": ("Threshold", "threshold_param { threshold: 0.3 }"),
    "clip": ("Clip", "clip_param { min: -0.5 max: 0.7 }"),
    "clip_inverted": ("Clip", "clip_param { min: 1 max: -1 }"),
    "swish": ("Swish", ""),
    "swish_beta": ("Swish", "swish_param { beta: 1.7 }"),
    "dropout": ("Dropout", "dropout_param { dropout_ratio: 0.3 }"),
    "softmax": ("Softmax", ""),
    "softmax_last": ("Softmax", "softmax_param { axis: -1 }"),
    "softmax_2": ("Softmax", "softmax_param { axis: 2 }"),
}


@pytest.mark.parametrize("case", list(ACTIVATIONS))
def test_activation(tmp_path, case):
    kind, param = ACTIVATIONS[case]
    export(load_net(tmp_path, _layer(kind, param)), tmp_path)


def test_bnll_does_not_overflow(tmp_path):
    net = load_net(tmp_path, _layer("BNLL"))
    _, path = export(net, tmp_path)
    x = np.linspace(-200, 200, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    (y,) = run_file(path, {"data": x})
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, eager(net, {"data": x})["out"], rtol=1e-6, atol=1e-6)


def test_clip_and_threshold_on_nan(tmp_path):
    """Caffe's std::max(min, std::min(x, max)) gives min for NaN; Threshold gives 0."""
    body = _layer("Clip", "clip_param { min: -0.5 max: 0.7 }", tops=("c",), name="clip")
    body += _layer("Threshold", "threshold_param { threshold: 0.3 }", tops=("t",), name="thr")
    net = load_net(tmp_path, body)
    _, path = export(net, tmp_path)
    x = np.full(SHAPE, np.nan, np.float32)
    c, t = run_file(path, {"data": x})
    assert (c == -0.5).all() and (t == 0).all()


ELTWISE_CASES = {
    "sum": "operation: SUM",
    "sum_coeff": "operation: SUM coeff: 1 coeff: -0.5 coeff: 2",
    "prod": "operation: PROD",
    "max": "operation: MAX",
}


@pytest.mark.parametrize("case", list(ELTWISE_CASES))
def test_eltwise(tmp_path, case):
    body = _layer("Eltwise", f"eltwise_param {{ {ELTWISE_CASES[case]} }}", bottoms=("a", "b", "c"))
    export(load_net(tmp_path, body, {"a": SHAPE, "b": SHAPE, "c": SHAPE}), tmp_path)


def test_eltwise_max_nan_rule(tmp_path):
    """x0 > x1 ? x0 : x1, then strictly greater: NaN in the first input loses, in a later one too."""
    body = _layer("Eltwise", "eltwise_param { operation: MAX }", bottoms=("a", "b", "c"))
    net = load_net(tmp_path, body, {"a": SHAPE, "b": SHAPE, "c": SHAPE})
    _, path = export(net, tmp_path)
    rng = np.random.default_rng(6)
    feeds = {k: rng.standard_normal(SHAPE).astype(np.float32) for k in "abc"}
    feeds["a"][0, 0] = np.nan
    feeds["c"][1, 1] = np.nan
    (y,) = run_file(path, feeds)
    np.testing.assert_array_equal(y, eager(net, feeds)["out"])


# ----------------------------------------------------------------------------------- shape layers

SHAPE_CASES = {
    "concat": ({"a": SHAPE, "b": (2, 2, 4, 5)}, _layer("Concat", "", bottoms=("a", "b"))),
    "concat_last": ({"a": SHAPE, "b": (2, 3, 4, 2)}, _layer("Concat", "concat_param { axis: -1 }", bottoms=("a", "b"))),
    "concat_one": ({"a": SHAPE}, _layer("Concat", "", bottoms=("a",))),
    "slice_points": ({"data": (2, 5, 4, 3)}, _layer("Slice", "slice_param { axis: 1 slice_point: 1 slice_point: 3 }",
                                                    tops=("s0", "s1", "s2"))),
    "slice_equal": ({"data": (2, 3, 4, 6)}, _layer("Slice", "slice_param { axis: -1 }", tops=("s0", "s1"))),
    "split": ({"data": SHAPE}, _layer("Split", "", tops=("s0", "s1")) + _layer("ReLU", bottoms=("s1",), tops=("r",),
                                                                                 name="relu")),
    "silence": ({"data": SHAPE}, _layer("Split", "", tops=("s0", "s1")) + _layer("Silence", bottoms=("s0",), tops=(),
                                                                                   name="silence")),
    "flatten": ({"data": SHAPE}, _layer("Flatten", "")),
    "flatten_middle": ({"data": SHAPE}, _layer("Flatten", "flatten_param { axis: 2 end_axis: 3 }")),
    "flatten_all": ({"data": SHAPE}, _layer("Flatten", "flatten_param { axis: 0 }")),
    "reshape": ({"data": SHAPE}, _layer("Reshape", "reshape_param { shape { dim: 0 dim: -1 dim: 5 } }")),
    "reshape_span": ({"data": SHAPE}, _layer("Reshape", "reshape_param { shape { dim: 12 } axis: 1 num_axes: 2 }")),
    "reshape_append": ({"data": SHAPE}, _layer("Reshape", "reshape_param { shape { dim: 1 } axis: -1 }")),
    "crop": ({"data": (2, 3, 8, 9), "ref": (2, 3, 5, 6)},
             _layer("Crop", "crop_param { axis: 2 offset: 1 offset: 2 }", bottoms=("data", "ref"))),
    "crop_channels": ({"data": (2, 3, 8, 9), "ref": (2, 2, 5, 6)},
                      _layer("Crop", "crop_param { axis: 1 offset: 1 }", bottoms=("data", "ref"))),
    "permute": ({"data": SHAPE}, _layer("Permute", "permute_param { order: 0 order: 2 order: 3 order: 1 }")),
    "permute_batch_inside": ({"data": SHAPE}, _layer("Permute", "permute_param { order: 1 }")),
    "permute_identity": ({"data": SHAPE}, _layer("Permute", "permute_param { order: 0 order: 1 }")),
    "tile": ({"data": SHAPE}, _layer("Tile", "tile_param { axis: 1 tiles: 3 }")),
    "tile_batch": ({"data": SHAPE}, _layer("Tile", "tile_param { axis: 0 tiles: 2 }")),
    "argmax_axis": ({"data": SHAPE}, _layer("ArgMax", "argmax_param { axis: 1 top_k: 2 }")),
    "argmax_axis_values": ({"data": SHAPE}, _layer("ArgMax", "argmax_param { axis: -1 top_k: 3 out_max_val: true }")),
    "argmax_sample": ({"data": SHAPE}, _layer("ArgMax", "argmax_param { top_k: 4 }")),
    "argmax_sample_values": ({"data": SHAPE}, _layer("ArgMax", "argmax_param { top_k: 2 out_max_val: true }")),
    "argmax_2d": ({"data": (2, 7)}, _layer("ArgMax", "argmax_param { top_k: 3 out_max_val: true }")),
}


@pytest.mark.parametrize("case", list(SHAPE_CASES))
def test_shape_layer(tmp_path, case):
    inputs, body = SHAPE_CASES[case]
    export(load_net(tmp_path, body, inputs), tmp_path)


def test_argmax_ties_take_the_larger_index(tmp_path):
    net = load_net(tmp_path, _layer("ArgMax", "argmax_param { axis: 1 top_k: 2 }") +
                   _layer("ArgMax", "argmax_param { top_k: 3 out_max_val: true }", tops=("flat",), name="flat"),
                   {"data": (2, 6, 2, 2)})
    _, path = export(net, tmp_path)
    x = np.round(np.random.default_rng(7).standard_normal((2, 6, 2, 2))).astype(np.float32)  # many ties
    got = run_file(path, {"data": x})
    expected = eager(net, {"data": x})
    for name, array in zip(["out", "flat"], got):
        np.testing.assert_array_equal(array, expected[name])


def test_slice_along_the_batch_axis_needs_a_fixed_batch(tmp_path):
    net = load_net(tmp_path, _layer("Slice", "slice_param { axis: 0 }", tops=("a", "b")))
    with pytest.raises(ExportError, match=r"layer 'layer' \(Slice\).*dynamic_batch=False"):
        to_onnx(net, tmp_path / "a.onnx")
    export(net, tmp_path, dynamic_batch=False)


# ----------------------------------------------------------------------------------- the file itself


def test_the_file_has_the_nets_inputs_and_outputs_with_a_dynamic_batch(tmp_path):
    body = _layer("ReLU", tops=("data",), name="relu") + _layer("Convolution", (
        f"convolution_param {{ num_output: 2 kernel_size: 1 weight_filler {{ {GAUSS} }} }}"), tops=("conv",), name="conv")
    net = load_net(tmp_path, body)
    _, path = export(net, tmp_path)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["data"]
    assert [o.name for o in model.graph.output] == ["conv"]  # intermediates only in the verification copy
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == list(SHAPE[1:])
    assert model.opset_import[0].version == 17 and model.ir_version == 8


def test_outputs_that_are_inputs_or_aliases(tmp_path):
    """Caffe returns an unconsumed input too; an output passed through a Split or Dropout keeps its
    blob's name (an Identity), and an input's name stays the input's."""
    body = _layer("Split", "", tops=("s0", "s1"), name="split") + _layer("Dropout", bottoms=("s0",), tops=("s0",),
                                                                           name="drop")
    body += _layer("Silence", bottoms=("s1",), tops=(), name="silence")
    net = load_net(tmp_path, body, {"data": SHAPE, "extra": (2, 4)})
    assert net.outputs == ["extra", "s0"]
    report, path = export(net, tmp_path)
    assert [o.name for o in onnx.load(path).graph.output] == ["extra_output", "s0"]
    assert any("'extra_output'" in note for note in report.notes)


@pytest.mark.parametrize("opset", [18, 21])
def test_later_opsets(tmp_path, opset):
    """From opset 18 ReduceSumSquare takes its axes as an input."""
    net = caffenorm.load(*_example())
    _, path = export(net, tmp_path, opset=opset)
    assert onnx.load(path).opset_import[0].version == opset


def test_report_table_and_notes(tmp_path):
    net = caffenorm.load(*_example())
    report, _ = export(net, tmp_path)
    text = report.table()
    assert "all blobs agree" in text and "norm1" in text and "opset 17" in text


# ----------------------------------------------------------------------------------- zoo and real nets


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo")


@pytest.mark.parametrize("name", ["example", "alexnet", "zf", "resnet", "ssd_head"])
def test_zoo_nets(zoo_dir, tmp_path, name):
    proto, model, _ = zoo.write(name, zoo_dir)
    net = caffenorm.load(proto, model)
    report, path = export(net, tmp_path)
    # and on the zoo's own input (the scale the net expects)
    for batch in (1, 2):
        x = zoo.example_input(name, batch=batch, seed=3)
        got = run_file(path, {"data": x})
        for (blob, expected), array in zip(eager(net, {"data": x}).items(), got):
            np.testing.assert_allclose(array, expected, rtol=1e-4, atol=1e-5 + 1e-4 * np.abs(expected).max())
    if name == "ssd_head":
        assert any("PriorBox" in n and "fixed" in n for n in report.notes)


def test_zoo_ssd_whole_and_cut_before_detection_output(zoo_dir, tmp_path):
    """The whole SSD exports (DetectionOutput in standard ops, checked in onnxruntime); so does the
    net cut before it, for runtimes that want their own detection step."""
    proto, model, _ = zoo.write("ssd", zoo_dir)
    report = to_onnx(caffenorm.load(proto, model), tmp_path / "ssd.onnx")
    assert report.ok and any(c.name == "detection_out" for c in report.checks)
    net = caffenorm.load(proto, model, outputs=["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"])
    export(net, tmp_path)


def test_open_nsfw_on_a_photo(tmp_path):
    files, photo = zoo.REAL["open_nsfw"]
    net = caffenorm.load(*files())
    _, path = export(net, tmp_path)
    x = photo()
    for batch in (x, np.ascontiguousarray(np.concatenate([x, x[..., ::-1]]))):
        (prob,) = run_file(path, {"data": batch})
        expected = eager(net, {"data": batch})["prob"]
        np.testing.assert_allclose(prob, expected, rtol=0, atol=1e-5)
        assert prob[0, 1] < 0.02  # safe for work, as caffenorm (and Caffe) say


def test_res10_whole_gives_caffes_126_rows_and_exports_cut(tmp_path):
    files, photo = zoo.REAL["res10"]
    whole = caffenorm.load(*files())
    _, path = export(whole, tmp_path)
    (rows,) = run_file(path, {"data": photo()})
    expected = eager(whole, {"data": photo()})["detection_out"]
    assert rows.shape == expected.shape == (1, 1, 126, 7)  # Caffe's rows, not OpenCV's 200
    np.testing.assert_array_equal(rows[..., :2], expected[..., :2])
    np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-5)
    net = caffenorm.load(*files(), outputs=["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"])
    _, path = export(net, tmp_path)
    x = photo()
    got = run_file(path, {"data": x})
    for (name, expected), array in zip(eager(net, {"data": x}).items(), got):
        np.testing.assert_allclose(array, expected, rtol=0, atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_opencv_reads_the_open_nsfw_file(tmp_path):
    """Information, not a requirement: OpenCV dnn 4.x reads the file and gives caffenorm's verdict
    (at the first input shape it sees; see the report about batch changes)."""
    cv2 = pytest.importorskip("cv2")
    files, photo = zoo.REAL["open_nsfw"]
    net = caffenorm.load(*files())
    _, path = export(net, tmp_path)
    reader = cv2.dnn.readNetFromONNX(str(path))
    x = photo()
    reader.setInput(x)
    np.testing.assert_allclose(reader.forward(), eager(net, {"data": x})["prob"], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------- torch.onnx of user models


class UserModel(nn.Module):
    """A user's own model with caffenorm modules in it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.across = caffenorm.LRN(5, alpha=0.5, beta=0.75, k=2.0)
        self.within = caffenorm.LRN(3, alpha=2.0, beta=0.6, k=3.0, norm_region="WITHIN_CHANNEL")
        self.bn = caffenorm.BatchNorm(6)
        self.bn.load_caffe_blobs(_bn_weights(6, 1.5))
        self.scale = caffenorm.Scale((6,), bias_term=True)
        self.scale.load_caffe_blobs([np.linspace(0.5, 1.5, 6), np.linspace(-0.2, 0.3, 6)])
        self.norm_pos = caffenorm.Normalize(6, across_spatial=False, channel_shared=False)
        self.norm_pos.load_caffe_blobs([np.linspace(1, 20, 6)])
        self.norm_all = caffenorm.Normalize(6, across_spatial=True, channel_shared=True, scale=3.0)
        self.bias = caffenorm.Bias((7, 8), axis=2, num_axes=2)
        self.bias.load_caffe_blobs([np.linspace(-1, 1, 56).reshape(7, 8)])
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.within(self.across(self.conv(x)))
        y = self.scale(self.bn(y))
        return self.bias(self.norm_pos(y) + self.norm_all(y))


@pytest.fixture
def torchscript_registered():
    register_torch_onnx()
    yield
    unregister_torch_onnx()


def _check_user_export(path: Path, model: nn.Module) -> None:
    for batch in (2, 3):
        x = torch.randn(batch, 3, 7, 8, generator=torch.Generator().manual_seed(batch)) * 3
        x[0, :, 2, 2] = 0.0
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = run_file(path, {"x": x.numpy()})
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("opset", [17, 18])
def test_torchscript_exporter(tmp_path, torchscript_registered, opset):
    model = UserModel()
    path = tmp_path / "user.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, 7, 8),), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "LRN" in ops and "ReduceSumSquare" in ops and not any("caffenorm" in o for o in ops)
    _check_user_export(path, model)


class RawOps(nn.Module):
    """The ops themselves, both outputs: LRN's S and Normalize's norm must be exact too."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        across = torch.ops.caffenorm.lrn(x, 5, 0.5, 0.75, 2.0, 0)
        within = torch.ops.caffenorm.lrn(x, 3, 2.0, 0.6, 3.0, 1)
        scale = torch.linspace(1.0, 2.0, x.shape[1])
        pos = torch.ops.caffenorm.normalize(x, scale, False, 1e-10, False)
        all_ = torch.ops.caffenorm.normalize(x, torch.tensor(3.0), True, 1e-10, False)
        return (*across, *within, *pos, *all_)


@pytest.mark.parametrize("dynamo", [False, True])
def test_second_outputs_of_the_ops(tmp_path, torchscript_registered, dynamo):
    if dynamo:
        pytest.importorskip("onnxscript")
    model, x = RawOps(), torch.randn(2, 4, 5, 6) * 2
    path = tmp_path / "ops.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), None if dynamo else str(path), dynamo=dynamo, input_names=["x"],
                                    custom_translation_table=custom_translation_table() if dynamo else None,
                                    verbose=False)
    if dynamo:
        program.save(str(path))
    got = run_file(path, {"x": x.numpy()})
    expected = model(x)
    assert len(got) == 8
    for array, tensor in zip(got, expected):
        np.testing.assert_allclose(array, tensor.numpy(), rtol=2e-6, atol=1e-6)


def test_torchscript_exporter_without_registration_names_the_op():
    """Registration is explicit, and unregistering leaves torch as it was: its error names the op."""
    register_torch_onnx()
    unregister_torch_onnx()
    with warnings.catch_warnings(), pytest.raises(Exception, match=r"caffenorm::lrn"):
        warnings.simplefilter("ignore")
        torch.onnx.export(caffenorm.LRN(3), (torch.randn(1, 4, 3, 3),), io.BytesIO(), dynamo=False)


@pytest.mark.parametrize("opset", [18, 20])
def test_dynamo_exporter(tmp_path, opset):
    pytest.importorskip("onnxscript")
    model = UserModel()
    path = tmp_path / "user.onnx"
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (torch.randn(2, 3, 7, 8),), dynamo=True, opset_version=opset,
                                    input_names=["x"], dynamic_shapes=({0: batch},),
                                    custom_translation_table=custom_translation_table(), verbose=False)
    program.save(str(path))
    _check_user_export(path, model)


def test_batch_norm_scale_bias_export_with_plain_torch(tmp_path):
    """BatchNorm (stored statistics, factor 0 too), Scale and Bias need no translation."""
    model = nn.Sequential(caffenorm.BatchNorm(4), caffenorm.Scale((4,), bias_term=True), caffenorm.Bias((), num_axes=0))
    model[0].load_caffe_blobs([[0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4], [0.0]])
    model[1].load_caffe_blobs([[1, 2, 3, 4], [0.5, 0.5, -0.5, 0]])
    model[2].load_caffe_blobs([np.array(0.25)])
    model.eval()
    x = torch.randn(2, 4, 3, 3)
    for dynamo in (False, True):
        path = tmp_path / f"bn_{dynamo}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (x,), None if dynamo else str(path), dynamo=dynamo,
                                        input_names=["x"], verbose=False)
        if dynamo:
            program.save(str(path))
        (got,) = run_file(path, {"x": x.numpy()})
        np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------- errors and registry


def test_missing_onnx_says_how_to_install(tmp_path, monkeypatch):
    net = load_net(tmp_path, _layer("ReLU"))
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ExportError, match=r"pip install caffenorm\[onnx\]"):
        to_onnx(net, tmp_path / "a.onnx")


def test_missing_onnxruntime_says_how_to_install(tmp_path, monkeypatch):
    net = load_net(tmp_path, _layer("ReLU"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExportError, match=r"'onnxruntime'.*pip install caffenorm\[onnx\]"):
        to_onnx(net, tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()
    report = to_onnx(net, tmp_path / "b.onnx", verify=False)  # writing needs only onnx
    assert not report.checks and "not verified" in report.table()


def test_missing_onnxscript_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ExportError, match=r"'onnxscript'.*pip install caffenorm\[onnx\] onnxscript"):
        custom_translation_table()


def test_layer_without_exporter(tmp_path):
    class Frobnicate(caffenorm.CaffeLayer):
        caffe_type = "Frobnicate"
        same_shape = True

        def forward(self, x):
            return x

    net = load_net(tmp_path, _layer("ReLU"))
    net.apply_pass(lambda g: g.replace([n.replace(module=Frobnicate(), type="Frobnicate") if n.name == "layer" else n
                                        for n in g.nodes]))
    with pytest.raises(ExportError, match=r"layer 'layer' \(Frobnicate\): has no ONNX exporter.*Frobnicate"):
        to_onnx(net, tmp_path / "a.onnx")


def test_training_mode_is_refused(tmp_path):
    body = _layer("BatchNorm", "", name="bn", tops=("bn",)) + _layer("Dropout", bottoms=("bn",), name="drop")
    net = load_net(tmp_path, body, weights={"bn": _bn_weights(3, 2.0)})
    net.train()
    with pytest.raises(ExportError, match=r"layer 'bn' \(BatchNorm\): normalises with batch statistics.*net.eval\(\)"):
        to_onnx(net, tmp_path / "a.onnx")
    net.eval()
    export(net, tmp_path)
    explicit = load_net(tmp_path, _layer("BatchNorm", "batch_norm_param { use_global_stats: false }"),
                        weights={"layer": _bn_weights(3, 2.0)})
    with pytest.raises(ExportError, match="use_global_stats: false"):
        to_onnx(explicit, tmp_path / "b.onnx")
    dropout = load_net(tmp_path, _layer("Dropout"))
    dropout.train()
    with pytest.raises(ExportError, match=r"\(Dropout\).*training mode"):
        to_onnx(dropout, tmp_path / "c.onnx")


def test_loss_layers_are_refused(tmp_path):
    proto, model, _, _ = zoo.write_train_val("resnet", tmp_path)
    net = caffenorm.load(proto, model)  # the TEST phase: Accuracy and SoftmaxWithLoss
    with pytest.raises(ExportError, match=r"\((Accuracy|SoftmaxWithLoss)\): .*training/evaluation layer"):
        to_onnx(net, tmp_path / "a.onnx")


def test_max_pooling_mask_is_refused(tmp_path):
    net = load_net(tmp_path, _layer("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }",
                                    tops=("out", "mask")))
    with pytest.raises(ExportError, match=r"\(Pooling\): the second top"):
        to_onnx(net, tmp_path / "a.onnx")


def test_bad_arguments(tmp_path):
    net = load_net(tmp_path, _layer("ReLU"))
    with pytest.raises(ExportError, match="opset=13 is not supported"):
        to_onnx(net, tmp_path / "a.onnx", opset=13)
    with pytest.raises(ExportError, match=r"net.float\(\)"):
        to_onnx(net.double(), tmp_path / "a.onnx")


def test_a_wrong_mapping_is_caught_by_the_verification(tmp_path, monkeypatch):
    """The check is real: an exporter that writes the wrong op makes to_onnx raise, naming the blob."""
    from caffenorm.caffe.layers.activation import ReLU

    def wrong(node, ctx):
        ctx.op("Sigmoid", ctx.input(0), top=0)

    monkeypatch.setitem(_registry._EXPORTERS, ReLU, _registry.Registered(wrong))
    net = load_net(tmp_path, _layer("ReLU", tops=("r",), name="relu") + _layer("TanH", bottoms=("r",), name="tanh"))
    with pytest.raises(ExportError, match=r"first diverging blob 'r' at batch 1"):
        to_onnx(net, tmp_path / "a.onnx")


def test_registry():
    rows = mapping_table()
    by_type = {row[0]: row for row in rows}
    assert by_type["LRN"][1] == "LRN" and "LRN(size, alpha, beta, bias=k)" in by_type["LRN"][2]
    assert "NonMaxSuppression" not in by_type["DetectionOutput"][2] and not by_type["DetectionOutput"][2].startswith("Refused")
    assert by_type["BatchNorm+Scale"][1] == "BatchNormScale"
    assert all(summary for _, _, summary in rows)
    with pytest.raises(ValueError, match="already has an ONNX exporter"):
        _registry.register_exporter(caffenorm.LRN)(lambda node, ctx: None)


def test_every_layer_module_has_an_exporter():
    """Each module class a converter can build has an exporter (or a registered refusal)."""
    import caffenorm.caffe.layers  # noqa: F401 - registers the converters
    from caffenorm.nn._base import CaffeLayer

    mapping_table()  # loads the exporters

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    modules = [c for c in subclasses(CaffeLayer) if c.__module__.startswith("caffenorm.") and c.caffe_type
               and not c.__name__.startswith("_")]
    missing = [c.__name__ for c in modules if _registry.get_exporter(c.__new__(c)) is None]
    assert not missing


def test_a_model_onnxruntime_cannot_run_is_an_export_error(tmp_path, monkeypatch):
    """Found by fuzzing: onnxruntime failing inside session.run (there, an LRN window it tried to
    allocate) escaped as its own exception; the check reports it as an ExportError."""
    import onnxruntime

    def fail(self, *args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Failed to allocate memory")

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", fail)
    net = load_net(tmp_path, _layer("ReLU"), {"data": (1, 4, 3, 3)})
    with pytest.raises(ExportError, match="onnxruntime .* could not run the written model .* Failed to allocate"):
        export(net, tmp_path)


@pytest.mark.parametrize("n", [17, 2147483647])
def test_lrn_window_wider_than_the_channels_is_a_reduce_sum(tmp_path, n):
    """A window covering every channel at every channel is a sum over all channels; runtimes size
    their LRN buffers by the window (onnxruntime asked for 3 TB at 2**30 + 1, found by fuzzing)."""
    param = f"lrn_param {{ local_size: {n} alpha: 1.5 beta: 0.75 k: 2 }}"
    net = load_net(tmp_path, _layer("LRN", param), {"data": (2, 4, 3, 5)})
    _, path = export(net, tmp_path)
    ops = [node.op_type for node in onnx.load(path).graph.node]
    assert "LRN" not in ops and "ReduceSumSquare" in ops
    x = (np.random.default_rng(3).standard_normal((2, 4, 3, 5)) * 2).astype(np.float32)
    (y,) = run_file(path, {"data": x})
    np.testing.assert_allclose(y, caffe_ref.lrn(x.astype(np.float64), n, 1.5, 0.75, 2.0, "ACROSS_CHANNELS"),
                               rtol=2e-6, atol=1e-7)
