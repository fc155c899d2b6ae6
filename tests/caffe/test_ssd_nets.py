"""Whole SSD detectors, scaled down, against OpenCV dnn 4.x (the independent peer), blob for blob.

Two nets with the real SSD layouts and random weights (fillers, then random BatchNorm statistics
with ``scale_factor != 1``, Scale and Normalize blobs), written by caffenorm (``net.save``):

* ``vgg_ssd``: SSD300's VGG16 layout (conv blocks, MAX pools, ceil rounding, pool5 3x3/s1,
  dilated fc6, fc7, extra layers), ``conv4_3_norm`` (Normalize, per-channel scales), four
  sources with loc/conf heads (Permute 0 2 3 1 + Flatten) and PriorBoxes (aspect ratio 2, and 3
  on one source), Concat, ``mbox_conf_reshape`` / Softmax axis 2 / Flatten, DetectionOutput.
* ``res_ssd``: the res10_300x300 face detector's layout (``data_bn``; Convolution without bias
  -> BatchNorm -> Scale (bias) -> ReLU in place; Eltwise SUM shortcuts with 1x1 stride-2
  projections; extra layers), Normalize on one source, the same head.

Every layer's output is compared with OpenCV's (fusion and Winograd off, see ``opencv_forward``),
end to end and layer by layer on OpenCV's own bottoms, with a tolerance relative to the blob's
magnitude (1e-5; the largest differences seen are ~2e-6 end to end, ~1e-6 per layer); the detections are compared as sets of rows: OpenCV orders its rows by
score over all classes and pads with all-zero rows, Caffe (and caffenorm) groups them by image,
then label, then descending score, so both sides are sorted by (image, label, -score) first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import caffenorm

cv2 = pytest.importorskip("cv2")

SIZE = 96  # input height = width

# ---------------------------------------------------------------------------------------------
# prototxt building blocks
# ---------------------------------------------------------------------------------------------


def _conv(name, bottom, num_output, kernel, *, top=None, pad=0, stride=1, dilation=1, bias=True, filler="xavier"):
    extra = f" dilation: {dilation}" if dilation != 1 else ""
    bias_part = (
        ' bias_filler { type: "constant" value: 0.05 }' if bias else " bias_term: false"
    )
    return (
        f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top or name}"\n'
        f"  convolution_param {{ num_output: {num_output} kernel_size: {kernel} pad: {pad} stride: {stride}{extra}\n"
        f'    weight_filler {{ type: "{filler}" }}{bias_part} }} }}\n'
    )


def _relu(name, blob, top=None):
    return f'layer {{ name: "{name}" type: "ReLU" bottom: "{blob}" top: "{top or blob}" }}\n'


def _pool(name, bottom, kernel=2, stride=2, pad=0):
    return (
        f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}"\n'
        f"  pooling_param {{ pool: MAX kernel_size: {kernel} stride: {stride} pad: {pad} }} }}\n"
    )


def _bn_scale(bn, scale, bottom, top):
    """BatchNorm then Scale(bias_term) -- in place when ``top == bottom``, as res10 does."""
    return (
        f'layer {{ name: "{bn}" type: "BatchNorm" bottom: "{bottom}" top: "{top}" }}\n'
        f'layer {{ name: "{scale}" type: "Scale" bottom: "{top}" top: "{top}" scale_param {{ bias_term: true }} }}\n'
    )


def _normalize(name, bottom):
    return (
        f'layer {{ name: "{name}" type: "Normalize" bottom: "{bottom}" top: "{name}"\n'
        "  norm_param { across_spatial: false channel_shared: false\n"
        '    scale_filler { type: "constant" value: 20 } } }\n'
    )


def _priors_per_location(max_size, ratios):
    return 1 + (1 if max_size else 0) + 2 * len(ratios)  # flip: true


def _head(source, num_classes, min_size, max_size, ratios, step):
    """SSD's MultiBoxHead for one source: loc and conf 3x3 convs, Permute, Flatten, PriorBox."""
    p = _priors_per_location(max_size, ratios)
    text = ""
    for kind, channels in (("loc", 4 * p), ("conf", num_classes * p)):
        name = f"{source}_mbox_{kind}"
        text += _conv(name, source, channels, 3, pad=1)
        text += (
            f'layer {{ name: "{name}_perm" type: "Permute" bottom: "{name}" top: "{name}_perm"\n'
            "  permute_param { order: 0 order: 2 order: 3 order: 1 } }\n"
            f'layer {{ name: "{name}_flat" type: "Flatten" bottom: "{name}_perm" top: "{name}_flat"\n'
            "  flatten_param { axis: 1 } }\n"
        )
    ars = "".join(f" aspect_ratio: {r}" for r in ratios)
    maxs = f" max_size: {max_size}" if max_size else ""
    text += (
        f'layer {{ name: "{source}_mbox_priorbox" type: "PriorBox" bottom: "{source}" bottom: "data"\n'
        f'  top: "{source}_mbox_priorbox"\n'
        f"  prior_box_param {{ min_size: {min_size}{maxs}{ars} flip: true clip: false\n"
        f"    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: {step} offset: 0.5 }} }}\n"
    )
    return text


def _ssd_tail(sources, num_classes, detection):
    def concat(name, suffix, axis):
        bottoms = "".join(f' bottom: "{s}_mbox_{suffix}"' for s in sources)
        return (
            f'layer {{ name: "{name}" type: "Concat"{bottoms} top: "{name}"\n'
            f"  concat_param {{ axis: {axis} }} }}\n"
        )

    return (
        concat("mbox_loc", "loc_flat", 1)
        + concat("mbox_conf", "conf_flat", 1)
        + concat("mbox_priorbox", "priorbox", 2)
        + 'layer { name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "mbox_conf_reshape"\n'
        f"  reshape_param {{ shape {{ dim: 0 dim: -1 dim: {num_classes} }} }} }}\n"
        'layer { name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" top: "mbox_conf_softmax"\n'
        "  softmax_param { axis: 2 } }\n"
        'layer { name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" top: "mbox_conf_flatten"\n'
        "  flatten_param { axis: 1 } }\n"
        'layer { name: "detection_out" type: "DetectionOutput"\n'
        '  bottom: "mbox_loc" bottom: "mbox_conf_flatten" bottom: "mbox_priorbox" top: "detection_out"\n'
        f"  include {{ phase: TEST }}\n  detection_output_param {{ {detection} }} }}\n"
    )


def _input(name):
    return f'name: "{name}"\nlayer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: {SIZE} dim: {SIZE} }} }} }}\n'


# ---------------------------------------------------------------------------------------------
# the two nets
# ---------------------------------------------------------------------------------------------

VGG_CLASSES = 4
VGG_DETECTION = (
    f"num_classes: {VGG_CLASSES} share_location: true background_label_id: 0\n"
    "    nms_param { nms_threshold: 0.45 top_k: 100 } code_type: CENTER_SIZE keep_top_k: 50\n"
    "    confidence_threshold: 0.01"
)
# (source, min_size, max_size, aspect ratios, step); feature maps 12, 6, 3, 1 for a 96x96 input
VGG_SOURCES = [
    ("conv4_3_norm", 10, 20, (2,), 8),
    ("fc7", 20, 40, (2, 3), 16),
    ("conv6_2", 40, 64, (2, 3), 32),
    ("conv7_2", 64, 90, (2,), 96),
]


def vgg_ssd_prototxt() -> str:
    t = _input("vgg_ssd")
    t += _conv("conv1_1", "data", 16, 3, pad=1) + _relu("relu1_1", "conv1_1")
    t += _conv("conv1_2", "conv1_1", 16, 3, pad=1) + _relu("relu1_2", "conv1_2")
    t += _pool("pool1", "conv1_2")  # 48
    t += _conv("conv2_1", "pool1", 24, 3, pad=1) + _relu("relu2_1", "conv2_1")
    t += _conv("conv2_2", "conv2_1", 24, 3, pad=1) + _relu("relu2_2", "conv2_2")
    t += _pool("pool2", "conv2_2")  # 24
    t += _conv("conv3_1", "pool2", 32, 3, pad=1) + _relu("relu3_1", "conv3_1")
    t += _conv("conv3_3", "conv3_1", 32, 3, pad=1) + _relu("relu3_3", "conv3_3")
    t += _pool("pool3", "conv3_3")  # 12
    t += _conv("conv4_1", "pool3", 48, 3, pad=1) + _relu("relu4_1", "conv4_1")
    t += _conv("conv4_3", "conv4_1", 48, 3, pad=1) + _relu("relu4_3", "conv4_3")
    t += _pool("pool4", "conv4_3")  # 6
    t += _conv("conv5_1", "pool4", 48, 3, pad=1) + _relu("relu5_1", "conv5_1")
    t += _pool("pool5", "conv5_1", kernel=3, stride=1, pad=1)  # 6, as SSD300's pool5
    t += _conv("fc6", "pool5", 64, 3, pad=3, dilation=3) + _relu("relu6", "fc6")
    t += _conv("fc7", "fc6", 64, 1) + _relu("relu7", "fc7")
    t += _conv("conv6_1", "fc7", 32, 1) + _relu("conv6_1_relu", "conv6_1")
    t += _conv("conv6_2", "conv6_1", 48, 3, pad=1, stride=2) + _relu("conv6_2_relu", "conv6_2")  # 3
    t += _conv("conv7_1", "conv6_2", 24, 1) + _relu("conv7_1_relu", "conv7_1")
    t += _conv("conv7_2", "conv7_1", 32, 3) + _relu("conv7_2_relu", "conv7_2")  # 1
    t += _normalize("conv4_3_norm", "conv4_3")
    for source, mn, mx, ratios, step in VGG_SOURCES:
        t += _head(source, VGG_CLASSES, mn, mx, ratios, step)
    return t + _ssd_tail([s[0] for s in VGG_SOURCES], VGG_CLASSES, VGG_DETECTION)


RES_CLASSES = 3
RES_DETECTION = (
    f"num_classes: {RES_CLASSES} share_location: true background_label_id: 0\n"
    "    nms_param { nms_threshold: 0.45 top_k: 60 } code_type: CENTER_SIZE keep_top_k: 40\n"
    "    confidence_threshold: 0.2"
)
# feature maps 12, 6, 3 for a 96x96 input
RES_SOURCES = [
    ("conv4_3_norm", 12, 24, (2,), 8),
    ("fc7", 24, 48, (2, 3), 16),
    ("conv6_2_h", 48, 80, (2,), 32),
]


def _res_block(name, bottom, channels, stride, pre_activation):
    """res10's block: [BN, Scale, ReLU ->] conv(s) -> BN -> Scale -> ReLU -> conv, + shortcut."""
    t = ""
    if pre_activation:
        pre = f"{name}_bn1"
        t += _bn_scale(pre, f"{name}_scale1", bottom, pre) + _relu(f"{name}_relu1", pre)
    else:
        pre = bottom
    c1, c2 = f"{name}_conv1", f"{name}_conv2"
    t += _conv(c1, pre, channels, 3, pad=1, stride=stride, bias=False, filler="msra")
    t += _bn_scale(f"{name}_bn2", f"{name}_scale2", c1, c1) + _relu(f"{name}_relu2", c1)
    t += _conv(c2, c1, channels, 3, pad=1, bias=False, filler="msra")
    shortcut = bottom
    if stride != 1:
        shortcut = f"{name}_conv_expand"
        t += _conv(shortcut, pre, channels, 1, stride=stride, bias=False, filler="msra")
    t += f'layer {{ name: "{name}_sum" type: "Eltwise" bottom: "{c2}" bottom: "{shortcut}" top: "{name}_sum" }}\n'
    return t, pre


def res_ssd_prototxt() -> str:
    t = _input("res_ssd")
    t += _bn_scale("data_bn", "data_scale", "data", "data_bn")
    t += _conv("conv1_h", "data_bn", 16, 7, pad=3, stride=2, filler="msra")  # 48
    t += _bn_scale("conv1_bn_h", "conv1_scale_h", "conv1_h", "conv1_h") + _relu("conv1_relu", "conv1_h")
    t += _pool("conv1_pool", "conv1_h", kernel=3, stride=2)  # 24 (ceil rounding)
    block, _ = _res_block("layer_64_1", "conv1_pool", 16, 1, pre_activation=False)
    t += block
    block, _ = _res_block("layer_128_1", "layer_64_1_sum", 24, 2, pre_activation=True)  # 12
    t += block
    block, norm_source = _res_block("layer_256_1", "layer_128_1_sum", 32, 2, pre_activation=True)  # 6
    t += block
    t += _bn_scale("last_bn_h", "last_scale_h", "layer_256_1_sum", "layer_256_1_sum")
    t += _relu("last_relu", "layer_256_1_sum", top="fc7")
    t += _conv("conv6_1_h", "fc7", 16, 1) + _relu("conv6_1_relu", "conv6_1_h")
    t += _conv("conv6_2_h", "conv6_1_h", 32, 3, pad=1, stride=2) + _relu("conv6_2_relu", "conv6_2_h")  # 3
    # res10 normalises layer_256_1_bn1 (12x12, after its in-place Scale and ReLU) as conv4_3_norm.
    t += _normalize("conv4_3_norm", norm_source)
    for source, mn, mx, ratios, step in RES_SOURCES:
        t += _head(source, RES_CLASSES, mn, mx, ratios, step)
    return t + _ssd_tail([s[0] for s in RES_SOURCES], RES_CLASSES, RES_DETECTION)


# ---------------------------------------------------------------------------------------------
# random weights, written by caffenorm
# ---------------------------------------------------------------------------------------------


def _randomise(net: caffenorm.Net, seed: int, data_std: float, classes: int) -> None:
    """Non-trivial Scale and Normalize blobs, BatchNorm blobs with ``scale_factor != 1`` holding
    (perturbed) statistics of the data as a trained net's do (so activations stay O(1) however
    deep), and conf biases that favour the background so the confidence threshold, top_k, NMS
    and keep_top_k all have work to do."""
    rng = np.random.default_rng(seed)
    types = {s.name: s.type for s in net.layer_specs}
    with torch.no_grad():
        for name, blobs in net.params.items():
            kind = types[name]
            if kind == "Scale":
                c = blobs[0].numel()
                blobs[0].copy_(torch.from_numpy(rng.uniform(0.6, 1.4, c)))
                blobs[1].copy_(torch.from_numpy(rng.normal(0.0, 0.2, c)))
            elif kind == "Normalize":
                blobs[0].copy_(torch.from_numpy(rng.uniform(4.0, 16.0, blobs[0].numel())))
            elif name.endswith("_mbox_conf"):
                bias = np.tile(np.r_[1.0, np.zeros(classes - 1)], blobs[1].numel() // classes)
                blobs[1].copy_(torch.from_numpy(bias + rng.normal(0.0, 0.3, bias.size)))
        # BatchNorm, in order: each one's statistics from what reaches it through the ones before.
        x = torch.from_numpy(np.random.default_rng(seed).standard_normal((1, 3, SIZE, SIZE)) * data_std).float()
        for name in (n for n, kind in types.items() if kind == "BatchNorm"):
            seen = []
            hook = net.layer(name).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
            try:
                net(x)
            finally:
                hook.remove()
            bottom = seen[0].double().transpose(0, 1).reshape(seen[0].shape[1], -1)
            mean, var = bottom.mean(1).numpy(), bottom.var(1).numpy() + 1e-3
            c = mean.size
            mean = mean + rng.normal(0.0, 0.2, c) * np.sqrt(var)
            var = var * rng.uniform(0.6, 1.6, c)
            factor = rng.uniform(0.5, 3.0)
            blobs = net.params[name]
            blobs[0].copy_(torch.from_numpy(mean * factor))
            blobs[1].copy_(torch.from_numpy(var * factor))
            blobs[2].fill_(factor)


NETS = {
    "vgg_ssd": (vgg_ssd_prototxt, VGG_CLASSES, 1.0),
    "res_ssd": (res_ssd_prototxt, RES_CLASSES, 58.0),
}


@pytest.fixture(scope="module", params=sorted(NETS))
def ssd(request, tmp_path_factory):
    """(name, prototxt, caffemodel, net) -- the files written by caffenorm from a seeded net."""
    key = request.param
    build, classes, data_std = NETS[key]
    directory = tmp_path_factory.mktemp(key)
    source = directory / "source.prototxt"
    source.write_text(build())
    net = caffenorm.load(source, seed=7)
    _randomise(net, seed=11, data_std=data_std, classes=classes)
    proto, model = directory / f"{key}.prototxt", directory / f"{key}.caffemodel"
    net.save(proto, model)
    return key, proto, model, caffenorm.load(proto, model)


def _input_for(key: str, seed: int, batch: int = 1) -> np.ndarray:
    """A random input on the scale each net expects: the res net's data_bn takes mean-subtracted
    pixels (std ~58), the VGG net takes them divided by 58."""
    std = NETS[key][2]
    x = np.random.default_rng(seed).standard_normal((batch, 3, SIZE, SIZE)) * std
    return x.astype(np.float32)


def _photo(key: str) -> np.ndarray:
    """scikit-image's astronaut: BGR, resized to SIZE, minus the ImageNet BGR mean (and, for the
    VGG net, divided by 58 as its input scale)."""
    data = pytest.importorskip("skimage.data")
    rgb = data.astronaut()
    bgr = cv2.resize(rgb[:, :, ::-1], (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    bgr -= np.array([104.0, 117.0, 123.0], dtype=np.float32)
    bgr /= np.float32(58.0 / NETS[key][2])
    return np.ascontiguousarray(bgr.transpose(2, 0, 1)[None])


# ---------------------------------------------------------------------------------------------
# comparisons
# ---------------------------------------------------------------------------------------------


def opencv_forward(prototxt: Path, caffemodel: Path, inputs: dict, outputs: list[str]) -> dict[str, np.ndarray]:
    """``netutil.opencv_forward`` (CPU, fusion off) with OpenCV's Winograd convolution off as well:
    OpenCV >= 4.7 computes 3x3 stride-1 convolutions with Winograd F(6x6, 3x3) by default, whose
    float32 error (~5e-6 of the output's range, measured against float64 here) is 20x that of the
    direct summation Caffe does (~2e-7, which caffenorm matches)."""
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableFusion(False)
    if hasattr(net, "enableWinograd"):
        net.enableWinograd(False)
    for name, value in inputs.items():
        net.setInput(np.ascontiguousarray(value, dtype=np.float32), name)
    return {name: np.asarray(r) for name, r in zip(outputs, net.forward(list(outputs)))}


def _run(net: caffenorm.Net, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's first output (by layer name) and the detections, from caffenorm."""
    net.record_layer_outputs = True
    try:
        with torch.no_grad():
            net(torch.from_numpy(x))
    finally:
        net.record_layer_outputs = False
    return {name: outs[0].numpy() for name, outs in net.layer_outputs.items()}


def _compared_layers(net: caffenorm.Net) -> list[str]:
    return [s.name for s in net.layer_specs if s.type not in ("Input", "DetectionOutput")]


def _sorted_rows(det: np.ndarray, opencv: bool = False) -> np.ndarray:
    rows = det.reshape(-1, 7).astype(np.float64)
    if opencv:  # OpenCV pads with all-zero rows up to keep_top_k * N
        rows = rows[~np.all(rows == 0, axis=1)]
    order = np.lexsort((-rows[:, 2], rows[:, 1], rows[:, 0]))
    return rows[order]


def _assert_same_detections(ours: np.ndarray, theirs: np.ndarray, what: str) -> float:
    assert ours.shape[1:] == (7,) and theirs.shape[1:] == (7,)
    assert len(ours) == len(theirs), f"{what}: {len(ours)} detections, OpenCV {len(theirs)}"
    np.testing.assert_array_equal(ours[:, :2], theirs[:, :2], err_msg=f"{what}: image ids / labels differ")
    np.testing.assert_allclose(ours[:, 2:3], theirs[:, 2:3], rtol=0, atol=1e-5, err_msg=f"{what}: scores")
    box_atol = 1e-5 * max(1.0, float(np.abs(theirs[:, 3:]).max(initial=0.0)))  # boxes are not clipped
    np.testing.assert_allclose(ours[:, 3:], theirs[:, 3:], rtol=0, atol=box_atol, err_msg=f"{what}: boxes")
    return float(np.abs(ours[:, 2:] - theirs[:, 2:]).max()) if len(ours) else 0.0


def _bottom_producers(net: caffenorm.Net) -> dict[str, list[str]]:
    """Layer name -> for each bottom, the layer that last wrote that blob before it ("" = input)."""
    writer: dict[str, str] = {}
    out = {}
    for spec in net.layer_specs:
        out[spec.name] = [writer.get(b, "") for b in spec.bottoms]
        for top in spec.tops:
            writer[top] = "" if spec.type == "Input" else spec.name
    return out


_SHAPE_ONLY = {"Flatten", "Permute", "Reshape", "Concat"}  # move values, compute nothing


def _compare_with_opencv(key, proto, model, net, x):
    """Every layer's output against OpenCV's, twice:

    * end to end (each side runs the whole net): ``1e-5`` times the largest output value (+1e-6),
      except where a layer's output is not on the scale of its inputs' errors: float32 rounding
      differences upstream (summation order in the convolutions) reach the Softmax as absolute
      errors in its logits (~10 here), which it passes on unscaled although it outputs at most 1,
      so the Softmax's scale is its logits', and the layers that only move values (Flatten,
      Permute, Reshape, Concat) inherit their inputs' scale;
    * isolated: caffenorm's layer module run on OpenCV's own bottoms, ``1e-5`` times the
      largest output value (+1e-6).
    """
    ours = _run(net, x)
    specs = {s.name: s for s in net.layer_specs}
    names = _compared_layers(net)
    theirs = opencv_forward(proto, model, {"data": x}, [*names, "detection_out"])
    producers = _bottom_producers(net)
    scales: dict[str, float] = {}
    worst = {"end to end": ("", 0.0), "isolated": ("", 0.0)}
    failures = []

    def check(kind, name, a, b, scale):
        diff = float(np.abs(a.astype(np.float64) - b).max(initial=0.0))
        rel = diff / (scale + 1e-6)
        if rel > worst[kind][1]:
            worst[kind] = (name, rel)
        if diff > 1e-5 * scale + 1e-6:
            failures.append(f"{name} ({kind}): max |diff| {diff:.3g} for scale {scale:.3g}")

    for name in names:
        a, b = ours[name], theirs[name]
        if a.size != b.size:
            failures.append(f"{name}: shape {a.shape} vs OpenCV {b.shape}")
            continue
        b = b.reshape(a.shape)
        own = float(np.abs(b).max(initial=0.0))
        kind = specs[name].type
        if kind in _SHAPE_ONLY:
            scale = max([own, *(scales[p] for p in producers[name])])
        elif kind == "Softmax":
            scale = max([own, *(float(np.abs(theirs[p]).max()) for p in producers[name])])
        else:
            scale = own
        scales[name] = scale
        check("end to end", name, a, b, scale)
        bottoms = [torch.from_numpy(theirs[p] if p else x) for p in producers[name]]
        with torch.no_grad():
            alone = net.layer(name)(*bottoms)
        alone = (alone[0] if isinstance(alone, tuple) else alone).numpy()
        check("isolated", name, alone.reshape(a.shape), b, own)
    assert not failures, f"{key}: layers differ from OpenCV (worst relative: {worst}):\n" + "\n".join(failures)
    # DetectionOutput alone, on OpenCV's loc / conf / priors
    with torch.no_grad():
        alone = net.layer("detection_out")(*[torch.from_numpy(theirs[p]) for p in producers["detection_out"]])
    _assert_same_detections(
        _sorted_rows(alone.numpy()), _sorted_rows(theirs["detection_out"], opencv=True), f"{key} DetectionOutput alone"
    )
    det = _sorted_rows(ours["detection_out"])
    det_cv = _sorted_rows(theirs["detection_out"], opencv=True)
    box_diff = _assert_same_detections(det, det_cv, key)
    return det, worst, box_diff


def test_every_layer_and_the_detections_equal_opencv_on_random_input(ssd):
    key, proto, model, net = ssd
    det, worst, box_diff = _compare_with_opencv(key, proto, model, net, _input_for(key, seed=1))
    classes = NETS[key][1]
    # not vacuous: several detections of several foreground classes, some NMS-suppressed
    assert len(det) > 3, det
    assert len(set(det[:, 1].tolist())) > 1 and set(det[:, 1].tolist()) <= set(range(1, classes))
    print(f"\n{key} random: {len(det)} detections, worst {worst}, detections max |diff| {box_diff:.2e}")


def test_every_layer_and_the_detections_equal_opencv_on_a_real_photo(ssd):
    key, proto, model, net = ssd
    det, worst, box_diff = _compare_with_opencv(key, proto, model, net, _photo(key))
    assert len(det) > 3, det
    print(f"\n{key} photo: {len(det)} detections, worst {worst}, detections max |diff| {box_diff:.2e}")


def test_net_shapes_follow_the_ssd_layout(ssd):
    key, _, _, net = ssd
    sources = VGG_SOURCES if key == "vgg_ssd" else RES_SOURCES
    classes = NETS[key][1]
    sides = {"vgg_ssd": [12, 6, 3, 1], "res_ssd": [12, 6, 3]}[key]
    priors = sum(s * s * _priors_per_location(mx, r) for s, (_, _, mx, r, _) in zip(sides, sources))
    shapes = net.blob_shapes
    for side, (source, *_rest) in zip(sides, sources):
        assert shapes[source][2:] == (side, side)
    assert shapes["mbox_loc"] == (1, priors * 4)
    assert shapes["mbox_conf_softmax"] == (1, priors, classes)
    assert shapes["mbox_priorbox"] == (1, 2, priors * 4)
    assert net.outputs == ["detection_out"]
    types = [s.type for s in net.layer_specs]
    assert types.count("PriorBox") == len(sources) and types.count("Normalize") == 1
    if key == "res_ssd":
        assert types.count("BatchNorm") == types.count("Scale") == 8 and types.count("Eltwise") == 3


def _detect(net: caffenorm.Net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x))["detection_out"].numpy().reshape(-1, 7)


def test_save_then_load_gives_identical_detections(ssd, tmp_path):
    key, _, _, net = ssd
    x = _input_for(key, seed=2)
    net.save(tmp_path / "again.prototxt", tmp_path / "again.caffemodel")
    again = caffenorm.load(tmp_path / "again.prototxt", tmp_path / "again.caffemodel")
    first = _detect(net, x)
    assert len(first) > 3
    np.testing.assert_array_equal(_detect(again, x), first)


def test_batch_of_two_equals_single_images_and_opencv(ssd):
    key, proto, model, net = ssd
    x = np.concatenate([_input_for(key, seed=3), _input_for(key, seed=4)])
    batch = _detect(net, x)
    # Caffe's layout: image 0's rows, then image 1's, each grouped by label.
    assert np.all(np.diff(batch[:, 0]) >= 0) and set(batch[:, 0].tolist()) == {0.0, 1.0}
    for i in range(2):
        single = _detect(net, np.ascontiguousarray(x[i : i + 1]))
        assert len(single) > 3
        mine = batch[batch[:, 0] == i]
        np.testing.assert_array_equal(mine[:, 1:2], single[:, 1:2])
        np.testing.assert_allclose(mine[:, 2:], single[:, 2:], rtol=0, atol=1e-6)
    theirs = opencv_forward(proto, model, {"data": x}, ["detection_out"])["detection_out"]
    _assert_same_detections(_sorted_rows(batch), _sorted_rows(theirs, opencv=True), f"{key} batch 2")


def test_no_detection_rows_follow_caffe_not_opencv(ssd, tmp_path):
    """With a threshold no score reaches, Caffe SSD (final ``ssd`` branch) outputs one row
    ``[i, -1, -1, -1, -1, -1, -1]`` per image; OpenCV outputs only its all-zero padding rows.
    caffenorm follows Caffe, so here the two peers are known to disagree."""
    key, proto, model, _ = ssd
    text = proto.read_text()
    threshold = next(line for line in text.splitlines() if "confidence_threshold" in line)
    strict = tmp_path / "strict.prototxt"
    strict.write_text(text.replace(threshold, "    confidence_threshold: 0.99999"))
    net = caffenorm.load(strict, model)
    x = np.concatenate([_input_for(key, seed=5), _input_for(key, seed=6)])
    expected = np.full((2, 7), -1.0, dtype=np.float32)
    expected[:, 0] = [0, 1]
    np.testing.assert_array_equal(_detect(net, x), expected)
    theirs = opencv_forward(strict, model, {"data": x}, ["detection_out"])["detection_out"]
    assert len(_sorted_rows(theirs, opencv=True)) == 0 and theirs.size > 0
