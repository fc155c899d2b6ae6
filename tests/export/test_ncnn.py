"""ncnn export (``caffenorm.export.ncnn``): every layer mapping on one-layer nets, the zoo and real
nets, and the error paths.

Every ``to_ncnn`` call checks itself: the written model runs in the ncnn package (fp16/bf16 and
the packed layout off) image by image, for batch sizes 1 and 2 here, and every output and every
blob that keeps its Caffe name is compared with caffenorm's eager net
(``max |ncnn - caffenorm| <= 1e-5 + 1e-4 * max |caffenorm|``; the rest of the suite pins the eager
net against a float64 Caffe oracle and OpenCV).  The tests check that the report covers the
outputs, add inputs the seeded normal data would not produce (zero vectors, real photos, the
zoo's input scales), and pin the refusals.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
import zoo
from netutil import write_model

import caffenorm
from caffenorm import ExportError
from caffenorm.export.verify import ExportReport

ncnn = pytest.importorskip("ncnn")

from caffenorm.export.ncnn import (
    NcnnRunner,
    _registry,
    check_ncnn,
    mapping_table,
    to_ncnn,
)
from caffenorm.export.ncnn._writer import format_float

RTOL, ATOL = 1e-4, 1e-5  # to_ncnn's defaults

Weights = Callable[[np.random.Generator], Mapping[str, list[np.ndarray]]]

# ----------------------------------------------------------------------------------- helpers


def _prototxt(inputs: Mapping[str, tuple[int, ...]], layers: str) -> str:
    text = 'name: "one_layer"\n'
    for name, shape in inputs.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        text += f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'
    return text + layers


def _net(directory: Path, inputs: Mapping[str, tuple[int, ...]], layers: str, weights: Weights | None = None,
         **load: object) -> caffenorm.Net:
    blobs = weights(np.random.default_rng(12345)) if weights else None  # not to_ncnn's input seed (0)
    proto, model = write_model(directory, _prototxt(inputs, layers), blobs)
    return caffenorm.load(proto, model, **load)


def _export(net: caffenorm.Net, directory: Path, batch_sizes: tuple[int, ...] = (1, 2)) -> ExportReport:
    """to_ncnn (which raises on a mismatch) and the checks every export must contain."""
    report = to_ncnn(net, directory / "net.param", batch_sizes=batch_sizes)
    compared = {(c.batch, c.name) for c in report.checks}
    for output in (o for o in net.outputs if o not in net.inputs):  # an unread input is an output too
        for batch in batch_sizes:
            assert (batch, output) in compared, f"output {output!r} not compared at batch {batch}"
    assert report.ok
    assert any("default options" in note for note in report.notes)
    return report


def _run_case(tmp_path: Path, inputs: Mapping[str, tuple[int, ...]], layers: str, weights: Weights | None,
              **load: object) -> ExportReport:
    net = _net(tmp_path, inputs, layers, weights, **load)
    return _export(net, tmp_path)


def _rand(*shape: int, low: float | None = None, high: float | None = None) -> Callable[[np.random.Generator], np.ndarray]:
    def make(rng: np.random.Generator) -> np.ndarray:
        if low is not None and high is not None:
            return rng.uniform(low, high, shape).astype(np.float32)
        return rng.standard_normal(shape).astype(np.float32)

    return make


def _blobs(**layers: list[Callable[[np.random.Generator], np.ndarray] | np.ndarray]) -> Weights:
    def make(rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
        return {name: [b(rng) if callable(b) else np.asarray(b, np.float32) for b in blobs]
                for name, blobs in layers.items()}

    return make


X4 = {"data": (1, 3, 4, 5)}


def _layer(kind: str, param: str = "", name: str = "out", bottoms: tuple[str, ...] = ("data",),
           tops: tuple[str, ...] | None = None) -> str:
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    t = " ".join(f'top: "{x}"' for x in (tops or (name,)))
    return f'layer {{ name: "{name}" type: "{kind}" {b} {t} {param} }}\n'


# ----------------------------------------------------------------------------------- the norm family

LRN_CASES = [
    pytest.param((1, 7, 5, 6), "local_size: 5 alpha: 2.0 beta: 0.75 k: 2", id="across-5-k2"),
    pytest.param((1, 8, 4, 4), "local_size: 3 alpha: 0.5 beta: 0.6 k: 1", id="across-3"),
    pytest.param((1, 3, 5, 4), "local_size: 5 alpha: 1.5 beta: 1.2 k: 0.5", id="across-channels<size"),
    pytest.param((1, 2, 3, 3), "local_size: 7 alpha: 3.0 beta: 0.75 k: 1.5", id="across-7-on-2-channels"),
    pytest.param((1, 4, 3, 5), "local_size: 1 alpha: 3.0 beta: 0.75 k: 1.5", id="across-1"),
    pytest.param((1, 3, 5, 6), "local_size: 3 alpha: 1.0 beta: 0.75 k: 2 norm_region: WITHIN_CHANNEL",
                 id="within-3-k2-ignored"),
    pytest.param((1, 2, 4, 4), "local_size: 5 alpha: 2.0 beta: 0.5 norm_region: WITHIN_CHANNEL", id="within-5"),
    pytest.param((1, 2, 3, 5), "local_size: 7 alpha: 0.3 beta: 0.75 k: 0.5 norm_region: WITHIN_CHANNEL",
                 id="within-window>image"),
    pytest.param((1, 3, 4, 4), "local_size: 1 alpha: 0.5 beta: 1.0 norm_region: WITHIN_CHANNEL", id="within-1"),
    # Windows far past the channels / the image: written narrower, alpha rescaled (fuzzing found
    # ncnn spending seconds walking a 2**31 - 1 window).
    pytest.param((1, 4, 3, 5), "local_size: 17 alpha: 3.0 beta: 0.75 k: 2", id="across-17-on-4-channels"),
    pytest.param((1, 3, 3, 4), "local_size: 13 alpha: 20.0 beta: 0.75 norm_region: WITHIN_CHANNEL",
                 id="within-13-on-3x4"),
    pytest.param((1, 4, 3, 3), "local_size: 2147483647 alpha: 1e9 beta: 0.75 k: 2", id="across-2**31-1"),
]


@pytest.mark.parametrize(("shape", "param"), LRN_CASES)
def test_lrn_matches_caffe_in_ncnn(tmp_path: Path, shape: tuple[int, ...], param: str) -> None:
    _run_case(tmp_path, {"data": shape}, _layer("LRN", f"lrn_param {{ {param} }}"), None)


def test_lrn_within_channel_writes_bias_1_not_k(tmp_path: Path) -> None:
    """Caffe's WITHIN_CHANNEL ignores k; ncnn's LRN uses its bias there, so the bias is 1."""
    net = _net(tmp_path, {"data": (1, 3, 5, 6)},
               _layer("LRN", "lrn_param { local_size: 3 alpha: 1.0 beta: 0.75 k: 2 norm_region: WITHIN_CHANNEL }"))
    report = _export(net, tmp_path)
    line = next(line for line in (tmp_path / "net.param").read_text().splitlines() if line.startswith("LRN"))
    assert line.split()[4:] == ["data", "out", "0=1", "1=3", "2=1.00000000e+00", "3=7.50000000e-01", "4=1.00000000e+00"]
    assert any("k=2.0" in note for note in report.notes)


def _bn_blobs(channels: int, factor: float) -> list[Callable[[np.random.Generator], np.ndarray] | np.ndarray]:
    return [
        lambda rng: (rng.normal(0, 1, channels) * max(factor, 1)).astype(np.float32),
        lambda rng: (rng.uniform(0.3, 2.0, channels) * max(factor, 1)).astype(np.float32),
        np.array([factor], np.float32),
    ]


@pytest.mark.parametrize("factor", [2.5, 1.0, 0.0], ids=lambda f: f"factor{f}")
@pytest.mark.parametrize("shape", [(1, 4, 3, 5), (1, 6), (1, 4, 7)], ids=lambda s: f"{len(s)}d")
def test_batch_norm_matches_caffe_in_ncnn(tmp_path: Path, shape: tuple[int, ...], factor: float) -> None:
    """Stored sums divided by the scale factor; factor 0 means zero statistics (y = x / sqrt(eps))."""
    layers = _layer("BatchNorm", "batch_norm_param { eps: 0.001 }", name="bn", tops=("data",))
    _run_case(tmp_path, {"data": shape}, layers, _blobs(bn=_bn_blobs(shape[1], factor)))


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "separate"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("shape", [(1, 4, 3, 5), (1, 6)], ids=lambda s: f"{len(s)}d")
def test_batch_norm_scale_matches_caffe_in_ncnn(tmp_path: Path, shape: tuple[int, ...], bias: bool, fuse: bool) -> None:
    c = shape[1]
    layers = (_layer("BatchNorm", "", name="bn", tops=("data",))
              + _layer("Scale", f"scale_param {{ bias_term: {str(bias).lower()} }}", name="scale", tops=("data",)))
    scale = [_rand(c, low=0.5, high=1.5)] + ([_rand(c)] if bias else [])
    net = _net(tmp_path, {"data": shape}, layers, _blobs(bn=_bn_blobs(c, 3.0), scale=scale), fuse=fuse)
    assert any(node.type == "BatchNorm+Scale" for node in net.graph.nodes) == fuse
    _export(net, tmp_path)


SCALE_CASES = [
    # (input shape, scale_param, blob shape)
    pytest.param((1, 4, 3, 5), "bias_term: true", (4,), id="channel-bias"),
    pytest.param((1, 4, 3, 5), "", (4,), id="channel"),
    pytest.param((1, 4, 3, 5), "num_axes: 0 bias_term: true", (), id="scalar-bias"),
    pytest.param((1, 4, 3, 5), "num_axes: 0", (), id="scalar"),
    pytest.param((1, 4, 3, 5), "axis: 1 num_axes: 2 bias_term: true", (4, 3), id="C-H"),
    pytest.param((1, 4, 3, 5), "axis: 2", (3,), id="H"),
    pytest.param((1, 4, 3, 5), "axis: -1", (5,), id="W"),
    pytest.param((1, 4, 3, 5), "axis: 1 num_axes: -1 bias_term: true", (4, 3, 5), id="to-the-end"),
    pytest.param((1, 6), "bias_term: true", (6,), id="2d-channel"),
    pytest.param((1, 4, 7), "axis: 2 bias_term: true", (7,), id="3d-last"),
]


@pytest.mark.parametrize(("shape", "param", "blob"), SCALE_CASES)
def test_scale_matches_caffe_in_ncnn(tmp_path: Path, shape: tuple[int, ...], param: str, blob: tuple[int, ...]) -> None:
    blobs = [_rand(*blob, low=0.5, high=1.5)] + ([_rand(*blob)] if "bias_term: true" in param else [])
    _run_case(tmp_path, {"data": shape}, _layer("Scale", f"scale_param {{ {param} }}"), _blobs(out=blobs))


BIAS_CASES = [
    pytest.param((1, 4, 3, 5), "", (4,), id="channel"),
    pytest.param((1, 4, 3, 5), "num_axes: 0", (), id="scalar"),
    pytest.param((1, 6), "", (6,), id="2d-channel"),
    pytest.param((1, 4, 3, 5), "axis: 1 num_axes: 2", (4, 3), id="C-H"),
    pytest.param((1, 4, 3, 5), "axis: 3", (5,), id="W"),
]


@pytest.mark.parametrize(("shape", "param", "blob"), BIAS_CASES)
def test_bias_matches_caffe_in_ncnn(tmp_path: Path, shape: tuple[int, ...], param: str, blob: tuple[int, ...]) -> None:
    _run_case(tmp_path, {"data": shape}, _layer("Bias", f"bias_param {{ {param} }}"), _blobs(out=[_rand(*blob)]))


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
@pytest.mark.parametrize("gate", [(1, 4), (1, 4, 3)], ids=["per-channel", "per-row"])
def test_two_bottom_scale_and_bias_at_axis_0(tmp_path: Path, kind: str, gate: tuple[int, ...]) -> None:
    """The SE-block form: a per-sample second input spanning the first axes (axis 0)."""
    param = f"{kind.lower()}_param {{ axis: 0 }}"
    _run_case(tmp_path, {"data": (1, 4, 3, 5), "gate": gate}, _layer(kind, param, bottoms=("data", "gate")), None)


def test_two_bottom_scale_with_a_learned_bias_is_refused(tmp_path: Path) -> None:
    """Its bias has the second input's shape, batch axis included: it fixes the batch size."""
    layer = _layer("Scale", "scale_param { axis: 0 bias_term: true }", bottoms=("data", "gate"))
    net = _net(tmp_path, {"data": (1, 4, 3, 5), "gate": (1, 4)}, layer, _blobs(out=[_rand(1, 4)]))
    with pytest.raises(ExportError, match=r"layer 'out' \(Scale\).*batch"):
        to_ncnn(net, tmp_path / "net.param")


@pytest.mark.parametrize("across_spatial", [True, False], ids=["across", "per-position"])
@pytest.mark.parametrize("channel_shared", [True, False], ids=["shared", "per-channel"])
@pytest.mark.parametrize("shape", [(1, 5, 3, 4), (1, 6), (1, 4, 5)], ids=lambda s: f"{len(s)}d")
def test_normalize_matches_caffe_in_ncnn(tmp_path: Path, shape: tuple[int, ...], across_spatial: bool,
                                         channel_shared: bool) -> None:
    param = (f"norm_param {{ across_spatial: {str(across_spatial).lower()} "
             f"channel_shared: {str(channel_shared).lower()} }}")
    blob = () if channel_shared else (shape[1],)
    net = _net(tmp_path, {"data": shape}, _layer("Normalize", param), _blobs(out=[_rand(*blob, low=5, high=25)]))
    _export(net, tmp_path)
    # Zero vectors: Caffe's eps inside the sqrt gives 0 (no NaN); a zero image, a zero position.
    zeros = np.random.default_rng(3).standard_normal((3, *shape[1:])).astype(np.float32)
    zeros[0] = 0
    if len(shape) > 2:
        zeros[1][(slice(None),) + (0,) * (len(shape) - 2)] = 0
    checks, _ = check_ncnn(net, tmp_path / "net.param", tmp_path / "net.bin", [{"data": zeros}], rtol=RTOL, atol=ATOL)
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]


# ----------------------------------------------------------------------------------- convolution and pooling


def _conv_blobs(out: int, cin_per_group: int, kh: int, kw: int, bias: bool = True) -> list:
    return [_rand(out, cin_per_group, kh, kw)] + ([_rand(out)] if bias else [])


CONV_CASES = [
    # (input, convolution_param, blobs)
    pytest.param((1, 3, 6, 7), "num_output: 4 kernel_size: 3 pad: 1", _conv_blobs(4, 3, 3, 3), id="k3-p1"),
    pytest.param((1, 3, 8, 7), "num_output: 4 kernel_size: 3 stride: 2", _conv_blobs(4, 3, 3, 3), id="floor-size"),
    pytest.param((1, 2, 4, 4), "num_output: 3 kernel_size: 5 stride: 2", _conv_blobs(3, 2, 5, 5),
                 id="truncated-overhang"),
    pytest.param((1, 3, 9, 7), "num_output: 2 kernel_h: 5 kernel_w: 3 pad_h: 2 pad_w: 0 stride_h: 2 stride_w: 1",
                 _conv_blobs(2, 3, 5, 3), id="hw-fields"),
    pytest.param((1, 4, 6, 6), "num_output: 6 kernel_size: 3 pad: 1 group: 2", _conv_blobs(6, 2, 3, 3), id="group2"),
    pytest.param((1, 4, 6, 6), "num_output: 4 kernel_size: 3 stride: 2 group: 4", _conv_blobs(4, 1, 3, 3),
                 id="depthwise"),
    pytest.param((1, 3, 9, 9), "num_output: 4 kernel_size: 3 pad: 2 dilation: 2", _conv_blobs(4, 3, 3, 3),
                 id="dilation"),
    pytest.param((1, 3, 6, 7), "num_output: 4 kernel_size: 3 bias_term: false", _conv_blobs(4, 3, 3, 3, False),
                 id="no-bias"),
]


@pytest.mark.parametrize(("shape", "param", "blobs"), CONV_CASES)
def test_convolution_matches_caffe_in_ncnn(tmp_path: Path, shape: tuple[int, ...], param: str, blobs: list) -> None:
    _run_case(tmp_path, {"data": shape}, _layer("Convolution", f"convolution_param {{ {param} }}"), _blobs(out=blobs))


DECONV_CASES = [
    pytest.param((1, 3, 4, 5), "num_output: 4 kernel_size: 4 stride: 2 pad: 1", [_rand(3, 4, 4, 4), _rand(4)],
                 id="k4-s2-p1"),
    pytest.param((1, 4, 3, 3), "num_output: 6 kernel_size: 3 group: 2", [_rand(4, 3, 3, 3), _rand(6)], id="group2"),
    pytest.param((1, 4, 3, 3), "num_output: 4 kernel_size: 3 stride: 2 group: 4", [_rand(4, 1, 3, 3), _rand(4)],
                 id="depthwise"),
    pytest.param((1, 2, 4, 4), "num_output: 3 kernel_size: 3 stride: 2 pad: 1 dilation: 2 bias_term: false",
                 [_rand(2, 3, 3, 3)], id="dilation-no-bias"),
    pytest.param((1, 2, 3, 4), "num_output: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1",
                 [_rand(2, 2, 3, 2), _rand(2)], id="hw-fields"),
]


@pytest.mark.parametrize(("shape", "param", "blobs"), DECONV_CASES)
def test_deconvolution_matches_caffe_in_ncnn(tmp_path: Path, shape: tuple[int, ...], param: str, blobs: list) -> None:
    _run_case(tmp_path, {"data": shape}, _layer("Deconvolution", f"convolution_param {{ {param} }}"), _blobs(out=blobs))


POOL_CASES = [
    pytest.param((1, 2, 6, 6), "pool: MAX kernel_size: 3 stride: 2", id="max-ceil-overhang"),
    pytest.param((1, 2, 6, 6), "pool: AVE kernel_size: 3 stride: 2", id="ave-ceil-overhang"),
    pytest.param((1, 2, 6, 6), "pool: AVE kernel_size: 3 stride: 2 pad: 1", id="ave-pad-overhang"),
    pytest.param((1, 2, 7, 6), "pool: AVE kernel_size: 3 stride: 2 pad_h: 1 pad_w: 0", id="ave-pad-one-axis"),
    pytest.param((1, 2, 7, 6), "pool: MAX kernel_size: 3 stride: 2 pad_h: 1 pad_w: 0", id="max-pad-one-axis"),
    pytest.param((1, 2, 5, 5), "pool: AVE kernel_size: 2 stride: 2 pad: 1", id="ave-drop-rule"),
    pytest.param((1, 2, 8, 8), "pool: AVE kernel_size: 3 stride: 2 pad: 1", id="ave-fits"),
    pytest.param((1, 2, 7, 8), "pool: AVE kernel_size: 3 stride: 2 round_mode: FLOOR", id="ave-floor"),
    pytest.param((1, 2, 5, 6), "pool: AVE kernel_size: 3 stride: 1 pad: 2", id="ave-pad>kernel/2"),
    pytest.param((1, 3, 4, 5), "pool: AVE global_pooling: true", id="global-ave"),
    pytest.param((1, 3, 4, 5), "pool: MAX global_pooling: true", id="global-max"),
    pytest.param((1, 2, 7, 7), "pool: MAX kernel_size: 2 stride: 3", id="max-stride>kernel"),
    pytest.param((1, 2, 4, 4), "pool: MAX kernel_size: 1 stride: 2", id="max-empty-window"),
    pytest.param((1, 2, 4, 4), "pool: AVE kernel_size: 1 stride: 2", id="ave-empty-window-nan"),
    pytest.param((1, 2, 5, 7), "pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1",
                 id="max-hw-fields"),
    # Windows past the input appended by a Padding layer (-FLT_MAX), not read from a padded input.
    pytest.param((1, 3, 16, 13), "pool: MAX kernel_size: 3 stride: 4096", id="max-stride-4096"),
    pytest.param((1, 2, 5, 9), "pool: MAX kernel_h: 2 kernel_w: 1 stride_h: 4 stride_w: 5", id="max-windows-past"),
]


@pytest.mark.parametrize(("shape", "param"), POOL_CASES)
def test_pooling_matches_caffe_in_ncnn(tmp_path: Path, shape: tuple[int, ...], param: str) -> None:
    """Caffe's ceil rounding and drop rule (both axes when one is padded), its AVE border divisor
    (padding counted up to size + pad), empty windows (-FLT_MAX for MAX, 0/0 for AVE)."""
    _run_case(tmp_path, {"data": shape}, _layer("Pooling", f"pooling_param {{ {param} }}"), None)


# ----------------------------------------------------------------------------------- inner product

IP_CASES = [
    pytest.param((1, 3, 4, 5), "num_output: 7", (7, 60), id="4d"),
    pytest.param((1, 10), "num_output: 5", (5, 10), id="2d"),
    pytest.param((1, 4, 6), "num_output: 5", (5, 24), id="3d-flatten"),
    pytest.param((1, 4, 6), "num_output: 5 axis: 2", (5, 6), id="3d-rows"),
    pytest.param((1, 3, 4, 5), "num_output: 6 axis: 2", (6, 20), id="4d-axis2"),
    pytest.param((1, 3, 4, 5), "num_output: 6 axis: -1", (6, 5), id="4d-axis3"),
    pytest.param((1, 3, 4, 5), "num_output: 7 transpose: true", (60, 7), id="transpose"),
    pytest.param((1, 3, 4, 5), "num_output: 7 bias_term: false", (7, 60), id="no-bias"),
]


@pytest.mark.parametrize(("shape", "param", "weight"), IP_CASES)
def test_inner_product_matches_caffe_in_ncnn(tmp_path: Path, shape: tuple[int, ...], param: str,
                                             weight: tuple[int, int]) -> None:
    outputs = weight[0] if "transpose" not in param else weight[1]
    blobs = [_rand(*weight)] + ([] if "bias_term: false" in param else [_rand(outputs)])
    _run_case(tmp_path, {"data": shape}, _layer("InnerProduct", f"inner_product_param {{ {param} }}"),
              _blobs(out=blobs))


# ----------------------------------------------------------------------------------- activations

ACTIVATION_CASES = [
    pytest.param("ReLU", "", None, id="relu"),
    pytest.param("ReLU", "relu_param { negative_slope: 0.1 }", None, id="leaky-relu"),
    pytest.param("PReLU", "", [_rand(3)], id="prelu"),
    pytest.param("PReLU", "prelu_param { channel_shared: true }", [np.array(0.3, np.float32)], id="prelu-shared"),
    pytest.param("Sigmoid", "", None, id="sigmoid"),
    pytest.param("TanH", "", None, id="tanh"),
    pytest.param("AbsVal", "", None, id="absval"),
    pytest.param("BNLL", "", None, id="bnll"),
    pytest.param("ELU", "elu_param { alpha: 0.5 }", None, id="elu"),
    pytest.param("Power", "power_param { power: 2 scale: 0.5 shift: 1 }", None, id="power-square"),
    pytest.param("Power", "power_param { power: 0.5 scale: 0.5 shift: 5 }", None, id="power-sqrt"),
    pytest.param("Power", "power_param { power: 0 scale: 3 }", None, id="power-0"),
    pytest.param("Power", "power_param { power: 3 scale: 0 shift: 2 }", None, id="power-scale-0"),
    pytest.param("Exp", "exp_param { scale: 0.5 shift: 0.2 }", None, id="exp"),
    pytest.param("Exp", "exp_param { base: 2 shift: -1 }", None, id="exp-base2"),
    pytest.param("Log", "log_param { scale: 0.5 shift: 5 }", None, id="log"),
    pytest.param("Log", "log_param { base: 10 shift: 6 }", None, id="log-base10"),
    pytest.param("Clip", "clip_param { min: -0.5 max: 0.7 }", None, id="clip"),
    pytest.param("Clip", "clip_param { min: 0.5 max: -0.5 }", None, id="clip-min>max"),
    pytest.param("Clip", "clip_param { min: -inf max: 0.3 }", None, id="clip-no-min"),
    pytest.param("Clip", "clip_param { min: -0.3 max: inf }", None, id="clip-no-max"),
    pytest.param("Clip", "clip_param { min: -inf max: inf }", None, id="clip-none"),
    pytest.param("Threshold", "threshold_param { threshold: 0.2 }", None, id="threshold"),
    pytest.param("Swish", "", None, id="swish"),
    pytest.param("Swish", "swish_param { beta: 1.5 }", None, id="swish-beta"),
    pytest.param("Dropout", "dropout_param { dropout_ratio: 0.3 }", None, id="dropout-test-phase"),
]


@pytest.mark.parametrize(("kind", "param", "blobs"), ACTIVATION_CASES)
@pytest.mark.parametrize("shape", [(1, 3, 4, 5), (1, 3)], ids=["4d", "2d"])
def test_activation_matches_caffe_in_ncnn(tmp_path: Path, shape: tuple[int, ...], kind: str, param: str,
                                          blobs: list | None) -> None:
    _run_case(tmp_path, {"data": shape}, _layer(kind, param), _blobs(out=blobs) if blobs else None)


@pytest.mark.parametrize(("shape", "axis"), [((1, 3, 4, 5), 1), ((1, 3, 4, 5), -1), ((1, 3, 4, 5), 2),
                                             ((1, 4, 6), 2), ((1, 10), 1), ((1, 2, 3, 4, 5), 2)])
def test_softmax_axis_maps_without_the_batch_axis(tmp_path: Path, shape: tuple[int, ...], axis: int) -> None:
    _run_case(tmp_path, {"data": shape}, _layer("Softmax", f"softmax_param {{ axis: {axis} }}"), None)


def test_five_axis_blobs_are_four_axis_images(tmp_path: Path) -> None:
    layers = _layer("Sigmoid", name="sig") + _layer("Permute", "permute_param { order: 0 order: 4 order: 1 }",
                                                    bottoms=("sig",))
    _run_case(tmp_path, {"data": (1, 2, 3, 4, 5)}, layers, None)


# ----------------------------------------------------------------------------------- shape and eltwise

TWO = {"a": (1, 2, 3, 4), "b": (1, 3, 3, 4)}


@pytest.mark.parametrize(
    ("inputs", "axis"),
    [
        (TWO, 1),
        ({"a": (1, 2, 3, 4), "b": (1, 2, 5, 4)}, 2),
        ({"a": (1, 2, 3, 4), "b": (1, 2, 3, 2)}, -1),
        ({"a": (1, 3), "b": (1, 4)}, 1),
        ({"a": (1, 2, 3), "b": (1, 1, 3), "c": (1, 4, 3)}, 1),
    ],
    ids=["channels", "height", "width", "2d", "three"],
)
def test_concat_matches_caffe_in_ncnn(tmp_path: Path, inputs: dict, axis: int) -> None:
    _run_case(tmp_path, inputs, _layer("Concat", f"concat_param {{ axis: {axis} }}", bottoms=tuple(inputs)), None)


@pytest.mark.parametrize(
    ("param", "tops"),
    [("axis: 1 slice_point: 1 slice_point: 3", 3), ("axis: 3", 2), ("axis: -2 slice_point: 2", 2)],
    ids=["channels-points", "width-equal", "height-negative-axis"],
)
def test_slice_matches_caffe_in_ncnn(tmp_path: Path, param: str, tops: int) -> None:
    layers = _layer("Slice", f"slice_param {{ {param} }}", tops=tuple(f"part{i}" for i in range(tops)))
    _run_case(tmp_path, {"data": (1, 5, 4, 4)}, layers, None)


def test_split_matches_caffe_in_ncnn(tmp_path: Path) -> None:
    report = _run_case(tmp_path, X4, _layer("Split", tops=("first", "second")), None)
    assert {c.name for c in report.checks} == {"first", "second"}


@pytest.mark.parametrize(
    ("shape", "layer"),
    [
        ((1, 3, 4, 5), _layer("Flatten")),
        ((1, 3, 4, 5), _layer("Flatten", "flatten_param { axis: 2 }")),
        ((1, 3, 4, 5), _layer("Flatten", "flatten_param { axis: 1 end_axis: 2 }")),
        ((1, 4, 3, 5), _layer("Reshape", "reshape_param { shape { dim: 0 dim: -1 } }")),
        ((1, 4, 3, 5), _layer("Reshape", "reshape_param { shape { dim: 0 dim: 2 dim: -1 dim: 5 } }")),
        ((1, 4, 3, 5), _layer("Reshape", "reshape_param { shape { dim: 2 dim: 2 } axis: 1 num_axes: 1 }")),
        ((1, 12), _layer("Reshape", "reshape_param { shape { dim: 0 dim: 3 dim: 2 dim: 2 } }")),
    ],
    ids=["flatten", "flatten-axis2", "flatten-end2", "reshape-0-1", "reshape-4d", "reshape-5d", "reshape-2d-4d"],
)
def test_flatten_and_reshape_match_caffe_in_ncnn(tmp_path: Path, shape: tuple[int, ...], layer: str) -> None:
    _run_case(tmp_path, {"data": shape}, layer, None)


@pytest.mark.parametrize(
    ("shape", "order"),
    [((1, 2, 3, 4), o) for o in [(0, 2, 3, 1), (0, 1, 3, 2), (0, 3, 1, 2), (0, 3, 2, 1), (0, 2, 1, 3), (0, 1, 2, 3)]]
    + [((1, 3, 4), (0, 2, 1)), ((1, 2, 3, 4, 5), (0, 4, 2, 1, 3))],
    ids=lambda v: "-".join(map(str, v)),
)
def test_permute_matches_caffe_in_ncnn(tmp_path: Path, shape: tuple[int, ...], order: tuple[int, ...]) -> None:
    param = "permute_param { " + " ".join(f"order: {o}" for o in order) + " }"
    _run_case(tmp_path, {"data": shape}, _layer("Permute", param), None)


@pytest.mark.parametrize(
    ("shape", "param"),
    [((1, 2, 3, 4), "tiles: 3"), ((1, 2, 3, 4), "axis: 2 tiles: 2"), ((1, 2, 3, 4), "axis: -1 tiles: 2"),
     ((1, 5), "tiles: 2")],
    ids=["channels", "height", "width", "2d"],
)
def test_tile_matches_caffe_in_ncnn(tmp_path: Path, shape: tuple[int, ...], param: str) -> None:
    _run_case(tmp_path, {"data": shape}, _layer("Tile", f"tile_param {{ {param} }}"), None)


@pytest.mark.parametrize(
    ("ref", "param"),
    [((1, 3, 5, 4), "axis: 2 offset: 1 offset: 2"), ((1, 2, 5, 4), "axis: 1 offset: 1"),
     ((1, 3, 8, 4), "axis: 3 offset: 3"), ((1, 3, 4, 4), "axis: 2 offset: 2")],
    ids=["hw", "chw-one-offset", "w", "hw-one-offset"],
)
def test_crop_matches_caffe_in_ncnn(tmp_path: Path, ref: tuple[int, ...], param: str) -> None:
    inputs = {"data": (1, 3, 8, 9), "ref": ref}
    _run_case(tmp_path, inputs, _layer("Crop", f"crop_param {{ {param} }}", bottoms=("data", "ref")), None)


@pytest.mark.parametrize(
    ("param", "inputs"),
    [("", 2), ("eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }", 3),
     ("eltwise_param { operation: PROD }", 3), ("eltwise_param { operation: MAX }", 2)],
    ids=["sum", "sum-coeff", "prod", "max"],
)
def test_eltwise_matches_caffe_in_ncnn(tmp_path: Path, param: str, inputs: int) -> None:
    names = tuple("abc"[:inputs])
    _run_case(tmp_path, {n: (1, 3, 4, 5) for n in names}, _layer("Eltwise", param, bottoms=names), None)


@pytest.mark.parametrize(
    "param",
    [
        ("min_size: 10 max_size: 21 aspect_ratio: 2 aspect_ratio: 0.5 aspect_ratio: 3 flip: true "
         "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 offset: 0.5"),
        "min_size: 10.7 max_size: 20.9 aspect_ratio: 2 flip: false clip: true variance: 0.2",
        "min_size: 8 min_size: 16 aspect_ratio: 1 aspect_ratio: 2 img_size: 64 step: 12 offset: 0.3 clip: true",
        "min_size: 12 img_h: 40 img_w: 60 step_h: 9 step_w: 11",
    ],
    ids=["ssd", "truncated-sizes-no-flip", "img-size-step", "img-hw-step-hw"],
)
def test_prior_box_matches_caffe_in_ncnn(tmp_path: Path, param: str) -> None:
    """Caffe's truncated sizes, deduplicated ratios (0.5 is 2 flipped), steps, image size, clip."""
    inputs = {"feature": (1, 4, 3, 5), "image": (1, 3, 30, 50)}
    layer = _layer("PriorBox", f"prior_box_param {{ {param} }}", bottoms=("feature", "image"))
    _run_case(tmp_path, inputs, layer, None)


# ----------------------------------------------------------------------------------- the .param file


def test_param_file_format(tmp_path: Path) -> None:
    """Magic, counts, in-place values renamed (the last keeps the Caffe name), a Split where a value
    has two readers, floats with an exponent, arrays as -(23300+id)=n,..."""
    layers = (
        _layer("Convolution", "convolution_param { num_output: 3 kernel_size: 1 }", name="conv", tops=("conv",))
        + _layer("ReLU", name="relu", bottoms=("conv",), tops=("conv",))
        + _layer("Eltwise", "eltwise_param { coeff: 0.5 coeff: 2 }", name="sum", bottoms=("conv", "conv"))
    )
    net = _net(tmp_path, X4, layers, _blobs(conv=[_rand(3, 3, 1, 1), _rand(3)]))
    report = _export(net, tmp_path)
    lines = (tmp_path / "net.param").read_text().splitlines()
    assert lines[0] == "7767517"
    assert lines[1] == "5 6"  # Input, Convolution, ReLU, Split, Eltwise; data conv@conv conv 2 splits sum
    fields = [line.split() for line in lines[2:]]
    assert [f[0] for f in fields] == ["Input", "Convolution", "ReLU", "Split", "Eltwise"]
    assert fields[1][4:6] == ["data", "conv@conv"] and fields[2][4:6] == ["conv@conv", "conv"]
    assert fields[3][2:] == ["1", "2", "conv", "conv_splitncnn_0", "conv_splitncnn_1"]
    assert fields[4][-1] == "-23301=2,5.00000000e-01,2.00000000e+00"
    assert [c.name for c in report.checks if c.batch == 1] == ["conv", "sum"]
    assert (tmp_path / "net.bin").stat().st_size == 4 + 9 * 4 + 3 * 4  # tag, weights, bias


def test_a_blob_written_in_place_on_the_input_is_compared_under_its_ncnn_name(tmp_path: Path) -> None:
    """The input keeps the name the caller feeds; the last value of that Caffe blob gets another
    ncnn name, which the report gives, and is still compared."""
    net = _net(tmp_path, X4, _layer("TanH", name="squash", tops=("data",)))
    report = _export(net, tmp_path)
    assert "blob 'data' is 'data@squash' in ncnn (the input keeps the name 'data')" in report.notes
    assert [c.name for c in report.checks if c.batch == 1] == ["data"]


def test_inputs_ncnn_cannot_take_are_left_out_unless_read(tmp_path: Path) -> None:
    """A data layer's (N,) labels have no per-image axes: left out of the model when nothing
    exported reads them, refused (naming them) when something does."""
    inputs = 'layer { name: "data" type: "Input" top: "data" top: "label" input_param { shape { dim: 1 dim: 3 dim: 4 ' \
             'dim: 5 } shape { dim: 1 } } }\n'
    proto, model = write_model(tmp_path, 'name: "labels"\n' + inputs + _layer("ReLU"))
    report = _export(caffenorm.load(proto, model), tmp_path)
    assert "label" not in (tmp_path / "net.param").read_text() and report.ok
    proto, model = write_model(tmp_path, 'name: "labels"\n' + inputs + _layer("Power", bottoms=("label",)))
    with pytest.raises(ExportError, match=r"layer 'out' \(Power\).* it reads 'label', which ncnn cannot take"):
        to_ncnn(caffenorm.load(proto, model), tmp_path / "net.param")


@pytest.mark.parametrize("value", [1e-4, 0.75, -3.4028234663852886e38, 1e-10, 1.401298464324817e-45, -0.0, 123456789.0])
def test_floats_are_written_to_read_back_exactly(value: float) -> None:
    text = format_float(value)
    assert len(text) <= 15 and ("e" in text)
    assert np.float32(float(text)) == np.float32(value)


def test_mapping_table_covers_the_layer_modules() -> None:
    rows = mapping_table()
    types = {row[0] for row in rows}
    for caffe_type in ["LRN", "BatchNorm", "BatchNorm+Scale", "Scale", "Bias", "Normalize", "Convolution",
                       "Deconvolution", "Pooling", "InnerProduct", "ReLU", "PReLU", "Softmax", "Concat", "Slice",
                       "Split", "Flatten", "Reshape", "Permute", "Crop", "Eltwise", "Dropout", "PriorBox",
                       "DetectionOutput", "Input", "Tile"]:
        assert caffe_type in types, caffe_type
    assert all(summary for _, _, summary in rows)
    assert next(r for r in rows if r[0] == "DetectionOutput")[2].startswith("CaffeDetectionOutput")


def test_registering_a_module_class_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="already has an ncnn emitter"):
        _registry.register_emitter(caffenorm.LRN)(lambda ctx, module, bottoms: [])


def test_the_check_catches_a_wrong_mapping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The converters' classic LRN bug (WITHIN_CHANNEL given k) is caught and named."""
    from caffenorm.export.ncnn import norm

    def k_as_bias(ctx, module, bottoms):  # type: ignore[no-untyped-def]
        params = {norm.LRN_REGION_TYPE: 1, norm.LRN_LOCAL_SIZE: module.local_size, norm.LRN_ALPHA: module.alpha,
                  norm.LRN_BETA: module.beta, norm.LRN_BIAS: module.k}
        return [ctx.layer("LRN", bottoms, params)]

    monkeypatch.setitem(_registry._EMITTERS, caffenorm.LRN, k_as_bias)
    net = _net(tmp_path, {"data": (1, 3, 5, 6)},
               _layer("LRN", "lrn_param { local_size: 3 alpha: 1.0 beta: 0.75 k: 2 norm_region: WITHIN_CHANNEL }",
                      name="norm"))
    with pytest.raises(ExportError, match="first diverging blob 'norm' at batch 1"):
        to_ncnn(net, tmp_path / "net.param")


# ----------------------------------------------------------------------------------- zoo and real nets

ZOO = ["example", "alexnet", "zf", "resnet", "ssd_head"]


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("zoo")
    return {name: zoo.write(name, directory)[:2] for name in [*ZOO, "ssd"]}


@pytest.mark.parametrize("fold", [False, True], ids=["plain", "folded"])
@pytest.mark.parametrize("name", ZOO)
def test_zoo_net_matches_caffe_in_ncnn(zoo_files: dict, tmp_path: Path, name: str, fold: bool) -> None:
    net = caffenorm.load(*zoo_files[name], fold=fold)
    _export(net, tmp_path)
    # The zoo's own input scale (AlexNet's LRN acts on mean-subtracted pixels), a batch of 2.
    data = zoo.example_input(name, batch=2, seed=5)
    checks, _ = check_ncnn(net, tmp_path / "net.param", tmp_path / "net.bin", [{net.inputs[0]: data}],
                           rtol=RTOL, atol=ATOL)
    assert len(checks) > len(net.outputs) and all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_zoo_ssd_cut_before_detection_output_exports(zoo_files: dict, tmp_path: Path) -> None:
    """For a deployment without custom layers: the cut net (the whole net with DetectionOutput is
    in test_ncnn_detection.py)."""
    proto, model = zoo_files["ssd"]
    cut = caffenorm.load(proto, model, outputs=["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"])
    report = _export(cut, tmp_path)
    assert not any("CaffeDetectionOutput" in note for note in report.notes)


def _check_photo(net: caffenorm.Net, directory: Path, photo: np.ndarray) -> None:
    _export(net, directory, batch_sizes=(1,))
    checks, _ = check_ncnn(net, directory / "net.param", directory / "net.bin", [{net.inputs[0]: photo}],
                           rtol=RTOL, atol=ATOL)
    assert len(checks) > 10 and all(c.ok for c in checks), [c for c in checks if not c.ok]


@pytest.mark.parametrize("fold", [False, True], ids=["plain", "folded"])
def test_open_nsfw_on_a_photo(tmp_path: Path, fold: bool) -> None:
    proto, model = zoo.open_nsfw_files()
    _check_photo(caffenorm.load(proto, model, fold=fold), tmp_path, zoo.open_nsfw_photo())


RES10_CUT = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]


def test_res10_cut_before_detection_output_on_a_photo(tmp_path: Path) -> None:
    proto, model = zoo.res10_files()
    _check_photo(caffenorm.load(proto, model, outputs=RES10_CUT), tmp_path, zoo.res10_photo())


def _with_ncnn_detection(param: Path, line: str) -> Path:
    lines = param.read_text().splitlines()
    layers, blobs = map(int, lines[1].split())
    lines[1] = f"{layers + 1} {blobs + 1}"
    out = param.with_name("with_detection.param")
    out.write_text("\n".join([*lines, line]) + "\n")
    return out


def test_why_ncnns_own_detection_output_is_not_used(tmp_path: Path) -> None:
    """ncnn's own DetectionOutput after the exported res10: on the photo it keeps Caffe's 126 rows
    (in Caffe's order: one foreground class, no ties) but without the image column; on an image
    without detections it outputs nothing (and extracting that crashes ncnn) where Caffe outputs its
    [0, -1, ...] row."""
    proto, model = zoo.res10_files()
    full = caffenorm.load(proto, model)
    photo = zoo.res10_photo()
    with torch.no_grad():
        caffe_rows = full(torch.from_numpy(photo))["detection_out"][0, 0].numpy()
    assert caffe_rows.shape == (126, 7)
    cut = caffenorm.load(proto, model, outputs=RES10_CUT)
    to_ncnn(cut, tmp_path / "net.param", verify=False)
    line = ("DetectionOutput  detection_out 3 1 mbox_loc mbox_conf_flatten mbox_priorbox detection_out "
            "0=2 1=4.49999988e-01 2=400 3=200 4=9.99999978e-03")
    runner = NcnnRunner(_with_ncnn_detection(tmp_path / "net.param", line), tmp_path / "net.bin")
    rows = runner.run({"data": photo[0]}, ["detection_out"])["detection_out"]
    assert rows.shape == (126, 6)
    np.testing.assert_allclose(rows, caffe_rows[:, 1:], rtol=0, atol=1e-5)
    # Nothing detected: Caffe outputs one [image, -1, ...] row; ncnn's layer leaves its top empty
    # and extracting it crashes the process (ncnn 1.0.20261020), hence a subprocess.
    net = _net(tmp_path, {"loc": (1, 8), "conf": (1, 4), "prior": (1, 2, 8)}, _layer(
        "DetectionOutput", "detection_output_param { num_classes: 2 share_location: true background_label_id: 0 "
        "code_type: CENTER_SIZE confidence_threshold: 0.5 nms_param { nms_threshold: 0.45 } }",
        bottoms=("loc", "conf", "prior")))
    feeds = {"loc": np.zeros((1, 8), np.float32), "conf": np.array([[0.9, 0.1, 0.8, 0.2]], np.float32),
             "prior": np.array([[[0.1, 0.1, 0.4, 0.4, 0.5, 0.5, 0.9, 0.9], [0.1] * 8]], np.float32)}
    with torch.no_grad():
        caffe_empty = net(**{k: torch.from_numpy(v) for k, v in feeds.items()})["out"]
    np.testing.assert_array_equal(caffe_empty.numpy(), [[[[0, -1, -1, -1, -1, -1, -1]]]])
    (tmp_path / "det.param").write_text(
        "7767517\n4 4\nInput loc 0 1 loc 0=8\nInput conf 0 1 conf 0=4\nInput prior 0 1 prior 0=8 1=2\n"
        "DetectionOutput det 3 1 loc conf prior out 0=2 1=4.49999988e-01 2=400 3=200 4=5.00000000e-01\n")
    (tmp_path / "det.bin").write_bytes(b"")
    np.savez(tmp_path / "feeds.npz", **{k: v[0] for k, v in feeds.items()})
    script = (
        "import sys, numpy as np\n"
        "from caffenorm.export.ncnn import NcnnRunner\n"
        f"d = {str(tmp_path)!r}\n"
        "feeds = dict(np.load(d + '/feeds.npz'))\n"
        "out = NcnnRunner(d + '/det.param', d + '/det.bin').run(feeds, ['out'])['out']\n"
        "print('rows', out.size // 6)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 or "rows 0" in run.stdout, (run.returncode, run.stdout, run.stderr)


# ----------------------------------------------------------------------------------- refusals and errors


def test_missing_ncnn_package_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = _net(tmp_path, X4, _layer("ReLU"))
    monkeypatch.setitem(sys.modules, "ncnn", None)  # import ncnn now raises ImportError
    with pytest.raises(ExportError, match=r"pip install caffenorm\[ncnn\]"):
        to_ncnn(net, tmp_path / "net.param")
    assert not (tmp_path / "net.param").exists()
    report = to_ncnn(net, tmp_path / "net.param", verify=False)  # writing needs no ncnn
    assert report.checks == [] and (tmp_path / "net.param").exists() and (tmp_path / "net.bin").exists()


def test_unsupported_layer_is_named_with_its_type_and_why(tmp_path: Path) -> None:
    net = _net(tmp_path, X4, _layer("ArgMax", "argmax_param { top_k: 2 }", name="top2"))
    with pytest.raises(ExportError, match=r"layer 'top2' \(ArgMax, module ArgMax\): no ncnn mapping: ncnn's ArgMax"):
        to_ncnn(net, tmp_path / "net.param")


@pytest.mark.parametrize("how", ["net.train()", "use_global_stats: false"])
def test_batch_norm_with_batch_statistics_is_refused(tmp_path: Path, how: str) -> None:
    param = "batch_norm_param { use_global_stats: false }" if how.startswith("use") else ""
    net = _net(tmp_path, X4, _layer("BatchNorm", param, name="bn", tops=("data",)), _blobs(bn=_bn_blobs(3, 2.0)))
    if how == "net.train()":
        net.train()
    with pytest.raises(ExportError, match=r"layer 'bn' \(BatchNorm\): cannot be exported to ncnn exactly: "
                                          r"BatchNorm normalises with batch statistics"):
        to_ncnn(net, tmp_path / "net.param")


def test_batch_norm_dividing_by_zero_is_refused(tmp_path: Path) -> None:
    """eps 0 and a zero variance: Caffe gives inf/NaN, ncnn's BatchNorm substitutes 1e-4."""
    blobs = _blobs(bn=[np.zeros(3, np.float32), np.array([1.0, 0.0, 2.0], np.float32), np.array([1.0], np.float32)])
    net = _net(tmp_path, X4, _layer("BatchNorm", "batch_norm_param { eps: 0 }", name="bn", tops=("data",)), blobs)
    with pytest.raises(ExportError, match="zero variance"):
        to_ncnn(net, tmp_path / "net.param")


def test_dropout_in_training_mode_is_refused(tmp_path: Path) -> None:
    net = _net(tmp_path, X4, _layer("Dropout")).train()
    with pytest.raises(ExportError, match="Dropout is active"):
        to_ncnn(net, tmp_path / "net.param")


@pytest.mark.parametrize(
    ("layer", "match"),
    [
        (_layer("Softmax", "softmax_param { axis: 0 }"), "axis=0 is the batch axis"),
        (_layer("Concat", "concat_param { axis: 0 }", bottoms=("data", "data")), "axis=0 is the batch axis"),
        (_layer("Reshape", "reshape_param { shape { dim: -1 } }"), "batch axis is mixed"),
        (_layer("Flatten", "flatten_param { axis: 0 }"), "batch axis is mixed"),
        (_layer("Permute", "permute_param { order: 1 order: 0 }"), "moves the batch axis"),
        (_layer("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }", tops=("out", "mask")),
         "MAX mask"),
        (_layer("Pooling", "pooling_param { pool: AVE kernel_size: 1 stride: 3 }"), "negative pool size"),
    ],
    ids=["softmax-axis0", "concat-axis0", "reshape-all", "flatten-axis0", "permute-batch", "pool-mask",
         "ave-window-beyond"],
)
def test_layers_touching_the_batch_axis_or_without_ncnn_counterpart_are_refused(tmp_path: Path, layer: str,
                                                                                match: str) -> None:
    net = _net(tmp_path, {"data": (1, 3, 5, 5)}, layer)
    with pytest.raises(ExportError, match=match):
        to_ncnn(net, tmp_path / "net.param")


@pytest.mark.parametrize("layer", ['type: "Flatten"', 'type: "Split"', 'type: "Concat"', 'type: "Softmax"'])
def test_a_layer_reading_an_input_of_unknown_shape_is_refused_not_crashed(tmp_path: Path, layer: str) -> None:
    """Found by fuzzing (scripts/fuzz.py --export-share): the shape inference for batch sizes 1 and
    2 met the input's unknown shape and raised a TypeError; now the layer is refused, naming it."""
    text = f'name: "t"\nlayer {{ name: "data" type: "Input" top: "data" }}\nlayer {{ name: "r" {layer} bottom: "data" top: "r" }}\n'
    proto, model = write_model(tmp_path, text, None)
    with pytest.raises(ExportError, match="layer 'r'") as err:
        to_ncnn(caffenorm.load(proto, model), tmp_path / "net.param", verify=False)
    assert "data" in str(err.value)
