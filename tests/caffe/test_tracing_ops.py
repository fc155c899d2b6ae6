"""Tracing and export of the ``caffe/ops`` layers: AVE Pooling, PriorBox and DetectionOutput.

* AVE pooling must not rely on ``divisor_override`` (ONNX has no such attribute; the
  TorchScript-based ``torch.onnx.export`` drops it, so an exported open_nsfw divided twice). Its
  result is checked against that ``divisor_override`` formulation, written here independently,
  to float32 rounding, and the Pooling module under ``torch.jit.trace``, ``torch.export`` (dynamic
  batch) and ``torch.onnx.export`` + onnxruntime against eager.
* PriorBox / DetectionOutput are ``torch.library`` custom ops: a small SSD-like chain ending in
  DetectionOutput is exported, traced and compiled, and run on inputs with different batch sizes
  and numbers of detections; ``torch.library.opcheck`` checks the ops' registrations.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

if importlib.util.find_spec("caffenorm") is None:  # not installed: use the src/ checkout
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "src"))

from caffenorm.caffe.layers.detection import DetectionOutput, PriorBox  # noqa: E402
from caffenorm.caffe.layers.pooling import Pooling  # noqa: E402
from caffenorm.caffe.ops.detection import detection_output, detection_output_op, prior_box, prior_box_op  # noqa: E402
from caffenorm.caffe.ops.pooling import caffe_pool2d  # noqa: E402

# torch.jit.trace still works in torch 2.13 but announces its deprecation at every call.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.trace.* is deprecated:DeprecationWarning")

# ---------------------------------------------------------------------------------------
# AVE pooling
# ---------------------------------------------------------------------------------------


def _caffe_out(size: int, k: int, s: int, p: int, mode: str, any_pad: bool) -> int:
    """pooling_layer.cpp Reshape(): ceil/floor((size + 2p - k) / s) + 1, then the padding drop rule."""
    q = (size + 2 * p - k) / s
    out = (math.ceil(q) if mode == "CEIL" else math.floor(q)) + 1
    if any_pad and (out - 1) * s >= size + p:
        out -= 1
    return out


def divisor_override_reference(x: Tensor, k, s, p, mode: str = "CEIL") -> Tensor:
    """The formulation caffe_pool2d used before: window sums via ``divisor_override=1`` over the
    explicitly padded input, divided by Caffe's ``pool_size = (min(hs+kh, H+ph) - hs) * (...)``."""
    H, W = x.shape[2:]
    any_pad = p != (0, 0)
    oh, ow = _caffe_out(H, k[0], s[0], p[0], mode, any_pad), _caffe_out(W, k[1], s[1], p[1], mode, any_pad)
    eh, ew = (oh - 1) * s[0] + k[0], (ow - 1) * s[1] + k[1]
    sums = F.avg_pool2d(F.pad(x, (p[1], ew - p[1] - W, p[0], eh - p[0] - H)), k, s, divisor_override=1)
    def size(i: int, axis: int) -> int:  # Caffe's pool_size factor: taken before clipping to the image
        start = i * s[axis] - p[axis]
        return min(start + k[axis], x.shape[2 + axis] + p[axis]) - start

    pool_size = torch.tensor([[size(i, 0) * size(j, 1) for j in range(ow)] for i in range(oh)], dtype=x.dtype)
    return sums / pool_size


# (H, W), kernel, stride, pad, round_mode: all have border divisors != kh*kw somewhere, except
# where noted.
AVE_CASES = [
    ((6, 6), (3, 3), (2, 2), (1, 1), "CEIL"),  # pad, ceil-mode overhang at bottom/right
    ((5, 7), (3, 2), (2, 3), (1, 1), "CEIL"),  # non-square, overhang on both axes
    ((4, 4), (3, 3), (2, 2), (1, 1), "CEIL"),  # the hand case of test_ops_pooling
    ((7, 7), (3, 3), (2, 2), (1, 1), "CEIL"),  # windows fit: torch's padded avg_pool2d (divisor 9)
    ((3, 3), (2, 2), (2, 2), (0, 0), "CEIL"),  # overhang without padding
    ((7, 9), (3, 3), (2, 2), (0, 0), "CEIL"),  # overhang without padding
    ((8, 8), (3, 3), (1, 1), (1, 1), "CEIL"),  # kernel > stride, padded borders
    ((5, 5), (3, 3), (2, 2), (2, 2), "CEIL"),  # pad > kernel/2: torch's padded avg_pool2d refuses
    ((6, 5), (3, 2), (2, 3), (2, 1), "CEIL"),  # pad >= kernel/2 on both axes
    ((7, 6), (2, 3), (2, 2), (1, 0), "FLOOR"),  # FLOOR with pad (windows fit)
    ((9, 8), (3, 3), (5, 5), (2, 2), "FLOOR"),  # FLOOR, pad > kernel/2, crops input no window reads
    ((2, 2), (3, 3), (2, 2), (0, 0), "CEIL"),  # kernel larger than the input
    ((1, 4), (1, 1), (1, 2), (0, 0), "CEIL"),  # last window starts at W: pool_size 0 -> NaN
    ((1, 2), (1, 1), (1, 3), (0, 0), "CEIL"),  # last window starts beyond W: pool_size < 0 -> -0
]
GLOBAL_CASE = ((5, 7), None, (1, 1), (0, 0), "CEIL")


def _ulps(a: Tensor, b: Tensor) -> int:
    """Largest distance in float32 units in the last place (same NaN positions and zero signs required)."""
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    nan = torch.isnan(a)
    assert torch.equal(nan, torch.isnan(b))
    zero = (a == 0) & ~nan
    assert torch.equal(torch.signbit(a[zero]), torch.signbit(b[zero]))
    ia = a[~nan].numpy().view(np.int32).astype(np.int64)
    ib = b[~nan].numpy().view(np.int32).astype(np.int64)
    return int(np.abs(ia - ib).max()) if ia.size else 0


def _pool_module(case) -> Pooling:
    (_, _), k, s, p, mode = case
    return Pooling("AVE", k, s, p, mode, global_pooling=k is None)


def _input(case, batch: int, seed: int = 0) -> Tensor:
    (H, W) = case[0]
    return torch.randn(batch, 3, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", AVE_CASES + [GLOBAL_CASE], ids=str)
def test_ave_pooling_equals_divisor_override_formulation(case):
    (H, W), k, s, p, mode = case
    x = _input(case, 2) * 10
    kernel = (H, W) if k is None else k
    want = divisor_override_reference(x, kernel, s, p, mode)
    got = caffe_pool2d(x, "AVE", k, s, p, mode, global_pooling=k is None)
    assert _ulps(got, want) <= 2, case  # two roundings (sum / kh*kw, times kh*kw / pool_size)
    torch.testing.assert_close(_pool_module(case)(x), got, rtol=0, atol=0, equal_nan=True)


def test_ave_pooling_keeps_empty_window_results():
    x = torch.arange(1.0, 5.0).view(1, 1, 1, 4)
    ave = caffe_pool2d(x, "AVE", 1, (1, 2), 0)[0, 0, 0]  # windows at 0, 2, 4 (= W: pool_size 0)
    assert ave[:2].tolist() == [1.0, 3.0] and torch.isnan(ave[2])
    ave = caffe_pool2d(x[..., :2], "AVE", 1, (1, 3), 0)[0, 0, 0]  # window at 3 > W: pool_size -1
    assert ave[0].item() == 1.0 and ave[1].item() == 0.0 and torch.signbit(ave[1])


@pytest.mark.parametrize("case", AVE_CASES + [GLOBAL_CASE], ids=str)
def test_ave_pooling_jit_trace_does_not_bake_batch(case):
    module = _pool_module(case)
    with warnings.catch_warnings():
        # H and W are read as ints (the window geometry depends on them, as in Caffe's Reshape),
        # which the tracer reports; the batch size must stay free, which the runs below check.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, (_input(case, 2),))
    for batch, seed in ((2, 1), (5, 2)):
        x = _input(case, batch, seed)
        torch.testing.assert_close(traced(x), module(x), rtol=0, atol=0, equal_nan=True)


EXPORT_CASES = [AVE_CASES[0], AVE_CASES[3], AVE_CASES[5], AVE_CASES[7], AVE_CASES[12], GLOBAL_CASE]


@pytest.mark.parametrize("case", EXPORT_CASES, ids=str)
def test_ave_pooling_torch_export_dynamic_batch(case):
    module = _pool_module(case)
    ep = torch.export.export(module, (_input(case, 2),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    for batch, seed in ((2, 1), (7, 2)):
        x = _input(case, batch, seed)
        torch.testing.assert_close(ep.module()(x), module(x), rtol=0, atol=0, equal_nan=True)


ONNX_CASES = [c for c in EXPORT_CASES if c is not AVE_CASES[12]] + [((7, 7), (7, 7), (1, 1), (0, 0), "CEIL")]


@pytest.mark.parametrize("case", ONNX_CASES, ids=str)
def test_ave_pooling_onnx_export_matches_eager(tmp_path, case):
    """The open_nsfw bug: an exported AVE Pooling must divide once, by Caffe's divisors."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    module = _pool_module(case)
    path = tmp_path / "pool.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of the TorchScript-based exporter
        torch.onnx.export(
            module, (_input(case, 2),), str(path), dynamo=False, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, seed in ((2, 1), (3, 2)):
        x = _input(case, batch, seed) * 10
        (got,) = session.run(None, {"x": x.numpy()})
        np.testing.assert_allclose(got, module(x).numpy(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------
# PriorBox and DetectionOutput
# ---------------------------------------------------------------------------------------

NUM_CLASSES = 3


class TinySSD(nn.Module):
    """One SSD head on a 4x4 feature map: loc / conf convs, Permute + Flatten, softmax over the
    classes, PriorBox on (feature, image), DetectionOutput. Nothing reads the batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.prior = PriorBox(min_sizes=[6], max_sizes=[12], aspect_ratios=[2], clip=True,
                              variances=[0.1, 0.1, 0.2, 0.2])
        p = self.prior.num_priors  # 4
        gen = torch.Generator().manual_seed(0)
        self.loc = nn.Conv2d(3, p * 4, 3, padding=1)
        self.conf = nn.Conv2d(3, p * NUM_CLASSES, 3, padding=1)
        with torch.no_grad():
            for conv, scale in ((self.loc, 0.3), (self.conf, 1.5)):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * scale)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.1)
        self.det = DetectionOutput(NUM_CLASSES, nms_threshold=0.45, top_k=20, keep_top_k=40,
                                   confidence_threshold=0.5)

    def forward(self, x: Tensor) -> Tensor:
        feature = F.avg_pool2d(x, 4)
        loc = self.loc(feature).permute(0, 2, 3, 1).flatten(1)
        conf = self.conf(feature).permute(0, 2, 3, 1).flatten(1).unflatten(1, (-1, NUM_CLASSES))
        conf = conf.softmax(dim=-1).flatten(1)
        return self.det(loc, conf, self.prior(feature, x))


def _images(batch: int, seed: int, scale: float = 1.0) -> Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.fixture(scope="module")
def ssd():
    model = TinySSD()
    # Different batch sizes and numbers of detections; all-zero images give Caffe's "no
    # detection" rows (one [i, -1, ...] per image).
    inputs = [_images(2, 1), _images(3, 2), _images(2, 3, 3.0), torch.zeros(2, 3, 16, 16)]
    eager = [model(x) for x in inputs]
    return model, inputs, eager


def test_ssd_chain_inputs_have_different_row_counts(ssd):
    _, inputs, eager = ssd
    rows = [e.shape[2] for e in eager]
    assert len(set(rows)) == len(rows), rows
    assert torch.equal(eager[-1][0, 0, :, 1:], torch.full((2, 6), -1.0))  # no detection
    assert all(not e.requires_grad for e in eager)  # the op has no gradient, though the convs do


def test_ssd_chain_module_calls_the_plain_functions(ssd):
    model, inputs, eager = ssd
    x = inputs[0]
    feature = F.avg_pool2d(x, 4)
    prior = prior_box((4, 4), (16, 16), **model.prior._settings())
    assert torch.equal(model.prior(feature, x), prior)
    with torch.no_grad():
        loc = model.loc(feature).permute(0, 2, 3, 1).flatten(1)
        conf = model.conf(feature).permute(0, 2, 3, 1).flatten(1).unflatten(1, (-1, NUM_CLASSES)).softmax(-1)
    assert torch.equal(detection_output(loc, conf.flatten(1), prior, **model.det.settings()), eager[0])


def test_ssd_chain_torch_export_dynamic_batch(ssd):
    model, inputs, eager = ssd
    ep = torch.export.export(model, (inputs[0],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    targets = {n.target for n in ep.graph.nodes if n.op == "call_function"}
    assert torch.ops.caffenorm.prior_box.default in targets
    assert torch.ops.caffenorm.detection_output.default in targets
    exported = ep.module()
    for x, want in zip(inputs, eager):
        assert torch.equal(exported(x), want)


def test_ssd_chain_jit_trace_keeps_rows_dynamic(ssd):
    model, inputs, eager = ssd
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # nothing of the chain is baked
        traced = torch.jit.trace(model, (inputs[0],))
    graph = str(traced.inlined_graph)
    assert "caffenorm::prior_box" in graph and "caffenorm::detection_output" in graph
    for x, want in zip(inputs, eager):
        assert torch.equal(traced(x), want)


def test_ssd_chain_torch_compile_fullgraph(ssd):
    model, inputs, eager = ssd
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for x, want in zip(inputs, eager):
        assert torch.equal(compiled(x), want)


def test_prior_box_op_on_meta_and_image_override():
    feature, image = torch.empty(2, 8, 5, 7, device="meta"), torch.empty(2, 3, 50, 70, device="meta")
    layer = PriorBox(min_sizes=[30], max_sizes=[60], aspect_ratios=[2, 3])  # 6 priors per location
    assert layer(feature, image).shape == (1, 2, 5 * 7 * 6 * 4)  # the net's shape inference
    layer = PriorBox(min_sizes=[30], img_hw=(320, 300))
    out = layer(torch.zeros(1, 1, 4, 4), torch.zeros(1, 3, 64, 64))
    assert torch.equal(out, prior_box((4, 4), (320, 300), min_sizes=[30]))


def test_opcheck():
    settings = dict(min_sizes=[6.0], max_sizes=[12.0], aspect_ratios=[2.0], flip=True, clip=True,
                    variances=[0.1, 0.1, 0.2, 0.2], step_h=0.0, step_w=0.0, offset=0.5)
    feature, image = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 16, 20)
    for args in [(feature, image, *settings.values(), 0, 0), (feature.double(), image, *settings.values(), 32, 40)]:
        torch.library.opcheck(prior_box_op, args)
    prior = prior_box_op(feature, image, *settings.values(), 0, 0)  # 4 * 5 * 4 priors
    gen = torch.Generator().manual_seed(4)
    loc = torch.randn(2, 80 * 4, generator=gen) * 0.2
    conf = torch.randn(2, 80, NUM_CLASSES, generator=gen).softmax(-1).flatten(1)
    det = dict(num_classes=NUM_CLASSES, share_location=True, background_label_id=0, nms_threshold=0.45, top_k=-1,
               eta=1.0, keep_top_k=10, confidence_threshold=0.4, code_type="CENTER_SIZE",
               variance_encoded_in_target=False)
    for kwargs in [det, det | dict(confidence_threshold=None, keep_top_k=-1), det | dict(confidence_threshold=0.99)]:
        torch.library.opcheck(detection_output_op, (loc, conf, prior), kwargs)
        want = detection_output(loc, conf, prior, **kwargs)
        assert torch.equal(detection_output_op(loc, conf, prior, **kwargs), want)
