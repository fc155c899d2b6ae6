"""Mutation fuzzing of caffenorm's inputs: prototxts and caffemodels derived from known-good nets,
run through ``caffenorm.load`` + one forward (or the ``caffenorm info`` command), where every
outcome must be a success or a :class:`caffenorm.CaffeNormError` -- never another exception.

Used by ``tests/test_fuzz.py`` (a bounded, deterministic run) and ``scripts/fuzz.py`` (long runs
that save the failing inputs).  Everything is seeded by a ``random.Random``:

* seeds (:func:`write_seeds`): the bundled example, the zoo nets of ``tests/caffe/zoo.py`` and
  :data:`KITCHEN`, a small net using (almost) every supported layer type, each with its caffemodel;
* prototxt mutations (:func:`mutate_prototxt`): text edits (numbers to 0/-1/huge/NaN/inf, lines
  deleted, duplicated or swapped, values swapped, layers renamed or retyped, blobs rewired, a
  truncation) and structured edits through protobuf (a random field of a random layer set to an
  interesting value);
* caffemodel mutations (:func:`mutate_caffemodel`): byte flips, truncation, and structured edits
  (blob dims, data length, legacy 4-D shapes, double data, NaN, layers renamed, removed, doubled).

The memory budget (``memory_limit``) keeps every case small: a mutated size that would allocate
more is refused before allocation, which is itself one of the outcomes checked.
"""

from __future__ import annotations

import contextlib
import io as _io
import math
import random
import re
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from google.protobuf import text_format
from google.protobuf.message import DecodeError, Message

import caffenorm
from caffenorm.caffe import schema
from caffenorm.caffe.registry import is_repeated, supported_layers
from caffenorm.errors import MAX_MESSAGE_CHARS

__all__ = [
    "KITCHEN",
    "Case",
    "SeedModel",
    "mutate_caffemodel",
    "mutate_prototxt",
    "run_case",
    "run_cli_case",
    "write_seeds",
]

# Every case must stay this small (parameters + activations at the declared shapes).
DEFAULT_LIMIT = 16 * 2**20

# A small net with (almost) every supported layer type, so that mutations reach every converter.
KITCHEN = """name: "kitchen"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" }
    bias_filler { type: "constant" value: 0.1 } } }
layer { name: "prelu" type: "PReLU" bottom: "conv" top: "conv" }
layer { name: "deconv" type: "Deconvolution" bottom: "conv" top: "deconv"
  convolution_param { num_output: 4 kernel_size: 2 stride: 2 group: 2 weight_filler { type: "bilinear" } } }
layer { name: "pool" type: "Pooling" bottom: "deconv" top: "pool"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "lrn" type: "LRN" bottom: "pool" top: "lrn" lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 } }
layer { name: "bn" type: "BatchNorm" bottom: "lrn" top: "bn" }
layer { name: "scale" type: "Scale" bottom: "bn" top: "bn" scale_param { bias_term: true
  filler { type: "uniform" min: 0.5 max: 1.5 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "bias" type: "Bias" bottom: "bn" top: "biased" bias_param { filler { type: "constant" value: 0.2 } } }
layer { name: "norm" type: "Normalize" bottom: "biased" top: "norm"
  norm_param { across_spatial: false scale_filler { type: "constant" value: 20 } } }
layer { name: "elu" type: "ELU" bottom: "norm" top: "elu" elu_param { alpha: 0.5 } }
layer { name: "sig" type: "Sigmoid" bottom: "elu" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "elu" top: "tanh" }
layer { name: "abs" type: "AbsVal" bottom: "tanh" top: "abs" }
layer { name: "power" type: "Power" bottom: "abs" top: "power" power_param { power: 2 scale: 1 shift: 1 } }
layer { name: "log" type: "Log" bottom: "power" top: "log" log_param { base: 2 } }
layer { name: "exp" type: "Exp" bottom: "sig" top: "exp" exp_param { base: 2 scale: 0.5 } }
layer { name: "bnll" type: "BNLL" bottom: "elu" top: "bnll" }
layer { name: "thr" type: "Threshold" bottom: "elu" top: "thr" threshold_param { threshold: 0.1 } }
layer { name: "clip" type: "Clip" bottom: "elu" top: "clip" clip_param { min: -0.5 max: 0.5 } }
layer { name: "swish" type: "Swish" bottom: "elu" top: "swish" swish_param { beta: 1.5 } }
layer { name: "relu" type: "ReLU" bottom: "swish" top: "swish" relu_param { negative_slope: 0.1 } }
layer { name: "drop" type: "Dropout" bottom: "swish" top: "swish" dropout_param { dropout_ratio: 0.3 } }
layer { name: "sum" type: "Eltwise" bottom: "log" bottom: "exp" top: "sum"
  eltwise_param { operation: SUM coeff: 1 coeff: -0.5 } }
layer { name: "prod" type: "Eltwise" bottom: "bnll" bottom: "thr" top: "prod" eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "clip" bottom: "swish" top: "max" eltwise_param { operation: MAX } }
layer { name: "concat" type: "Concat" bottom: "sum" bottom: "prod" bottom: "max" top: "concat"
  concat_param { axis: 1 } }
layer { name: "slice" type: "Slice" bottom: "concat" top: "s1" top: "s2" slice_param { axis: 1 slice_point: 4 } }
layer { name: "split" type: "Split" bottom: "s2" top: "s2a" top: "s2b" }
layer { name: "crop" type: "Crop" bottom: "s1" bottom: "s2a" top: "crop" crop_param { axis: 2 offset: 0 } }
layer { name: "tile" type: "Tile" bottom: "crop" top: "tile" tile_param { axis: 1 tiles: 2 } }
layer { name: "permute" type: "Permute" bottom: "tile" top: "permute" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "reshape" type: "Reshape" bottom: "permute" top: "reshape"
  reshape_param { shape { dim: 0 dim: -1 dim: 8 } } }
layer { name: "flatten" type: "Flatten" bottom: "reshape" top: "flatten" flatten_param { axis: 1 } }
layer { name: "argmax" type: "ArgMax" bottom: "s2b" top: "argmax" argmax_param { top_k: 2 axis: 1 } }
layer { name: "silence" type: "Silence" bottom: "argmax" }
layer { name: "fc" type: "InnerProduct" bottom: "flatten" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "msra" } bias_filler { type: "positive_unitball" } } }
layer { name: "fc2" type: "InnerProduct" bottom: "flatten" top: "fc2"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 sparse: 3 } } }
layer { name: "euclid" type: "EuclideanLoss" bottom: "fc" bottom: "fc2" top: "euclid" }
layer { name: "softmax" type: "Softmax" bottom: "fc" top: "prob" softmax_param { axis: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss"
  loss_param { ignore_label: 4 normalization: VALID } }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" accuracy_param { top_k: 2 } }
"""


# The same kind of net in Caffe's V1 form (``layers { type: CONVOLUTION }``, ``input_dim``), with a
# V1 caffemodel of legacy 4-D blobs, so mutations reach the upgrade path.
LEGACY = """name: "legacy"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 12 input_dim: 12
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2 weight_decay: 1
  weight_decay: 0 convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layers { name: "norm1" type: LRN bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 } }
layers { name: "split" type: SPLIT bottom: "norm1" top: "a" top: "b" }
layers { name: "cat" type: CONCAT bottom: "a" bottom: "b" top: "cat" }
layers { name: "elt" type: ELTWISE bottom: "cat" bottom: "cat" top: "elt" eltwise_param { operation: MAX } }
layers { name: "flat" type: FLATTEN bottom: "elt" top: "flat" }
layers { name: "fc" type: INNER_PRODUCT bottom: "flat" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 1 } } }
layers { name: "drop" type: DROPOUT bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.5 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
"""

# Data layers with a transform_param (TRAIN: Data, whose shapes come from its source; TEST:
# MemoryData, whose shapes are declared).
DATA = """name: "datanet"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.0039 mirror: true crop_size: 8 mean_value: 104 mean_value: 117 mean_value: 123 }
  data_param { source: "train_lmdb" batch_size: 2 backend: LMDB } }
layer { name: "mem" type: "MemoryData" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.5 mean_value: 100 } memory_data_param { batch_size: 2 channels: 3 height: 8 width: 8 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 2 kernel_size: 3 stride: 2 weight_filler { type: "msra" } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 4 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def _v1_caffemodel(v2: bytes) -> bytes:
    """A V2 caffemodel rewritten as Caffe's V1 ``layers`` entries with legacy 4-D blobs."""
    from caffenorm.caffe.upgrade import V1_TYPES

    by_type = {v2_type: v1_type for v1_type, v2_type in V1_TYPES.items()}
    net = schema.NetParameter()
    net.ParseFromString(v2)
    old = schema.NetParameter(name=net.name)
    for layer in net.layer:
        if layer.type not in by_type:
            continue
        entry = old.layers.add(name=layer.name, type=schema.V1LayerParameter.LayerType.Value(by_type[layer.type]))
        for blob in layer.blobs:
            dims = list(blob.shape.dim)
            legacy = [1] * (4 - len(dims)) + dims
            new = entry.blobs.add(num=legacy[0], channels=legacy[1], height=legacy[2], width=legacy[3])
            new.data.extend(blob.data)
    return old.SerializeToString()


@dataclass(frozen=True)
class SeedModel:
    """A known-good net: its name, prototxt text and caffemodel bytes."""

    name: str
    prototxt: str
    caffemodel: bytes


@dataclass(frozen=True)
class Case:
    """One fuzzed input: the seed it came from, what was done to it, and the files' contents."""

    seed: str
    mutations: tuple[str, ...]
    prototxt: str
    caffemodel: bytes | None
    phase: str = "test"
    fold: bool = False
    outputs: tuple[str, ...] | None = None


SEED_NAMES = ("example", "kitchen", "legacy", "data", "alexnet", "resnet", "ssd", "zf")


def write_seeds(directory: Path, names: Sequence[str] = SEED_NAMES) -> list[SeedModel]:
    """Build the seed models (in ``directory``): the bundled example, :data:`KITCHEN`,
    :data:`LEGACY`, :data:`DATA` and zoo nets (``tests/caffe/zoo.py``)."""
    directory.mkdir(parents=True, exist_ok=True)
    seeds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            if name == "example":
                from caffenorm.cli import example_model

                proto, model = example_model()
            elif name == "kitchen":
                proto = directory / "kitchen.prototxt"
                proto.write_text(KITCHEN)
                model = directory / "kitchen.caffemodel"
                net = caffenorm.load(proto, phase="train", seed=5)
                net.eval()
                with torch.no_grad():
                    net(data=torch.randn(2, 3, 8, 8), label=torch.tensor([0.0, 3.0]))
                net.save(directory / "kitchen.saved.prototxt", model)
            elif name in ("legacy", "data"):
                proto = directory / f"{name}.prototxt"
                proto.write_text(LEGACY if name == "legacy" else DATA)
                model = directory / f"{name}.caffemodel"
                caffenorm.load(proto, seed=6).save(directory / f"{name}.saved.prototxt", model)
                if name == "legacy":
                    model.write_bytes(_v1_caffemodel(model.read_bytes()))
            else:
                import sys

                zoo_dir = str(Path(__file__).resolve().parent / "caffe")
                if zoo_dir not in sys.path:
                    sys.path.insert(0, zoo_dir)
                import zoo

                proto, model, _ = zoo.write(name, directory)
            seeds.append(SeedModel(name, Path(proto).read_text(), Path(model).read_bytes()))
    return seeds


# ---------------------------------------------------------------------------------------------
# interesting values
# ---------------------------------------------------------------------------------------------

INTS = [0, 1, -1, 2, 3, 7, 8, 64, 255, 1000, 4096, 65535, 2**31 - 1, -(2**31), 2**31, 2**32, 2**32 + 1,
        2**62, 2**63 - 1, -(2**63), 10**6]
FLOATS = ["0", "-0.0", "1", "-1", "0.5", "1e-45", "1e-8", "1e30", "3.4e38", "-3.4e38", "1e39", "inf", "-inf",
          "nan", "-nan", "1e-300", "2.5", "100"]
NAMES = ["type", "training", "forward", "_modules", "_parameters", "T_destination", "dump_patches", "a.b", ".", "",
         "%", "%2E", "a/b", "conv1.bn", "__class__", "__dict__", "call_super_init", "layers", "x" * 300, "ünï",
         "0", "data", "label", "keys", "items", "update"]


def _value_text(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return str(rng.choice(INTS))
    if rng.random() < 0.1:
        return "9" * rng.choice([20, 400, 5000])
    return rng.choice(FLOATS)


# ---------------------------------------------------------------------------------------------
# prototxt mutations
# ---------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![\w.\"])-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])")
_STRING_FIELD = re.compile(r'\b(name|type|bottom|top)\s*:\s*"([^"]*)"')
_PAIR = re.compile(r"\b(\w+)\s*:\s*([^\s{}\"]+|\"[^\"]*\")")
_ENUMS = ["MAX", "AVE", "STOCHASTIC", "SUM", "PROD", "ACROSS_CHANNELS", "WITHIN_CHANNEL", "CENTER_SIZE", "CORNER",
          "TEST", "TRAIN", "CAFFE", "CUDNN", "VALID", "FULL", "BATCH_SIZE", "NONE", "FAN_IN", "FAN_OUT", "AVERAGE",
          "true", "false", "BOGUS"]
_FILLERS = ["constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear", "bogus"]


def _text_number(text: str, rng: random.Random) -> tuple[str, str]:
    spots = list(_NUMBER.finditer(text))
    if not spots:
        return text, "number:none"
    m = rng.choice(spots)
    if re.fullmatch(r"-?\d+", m.group()) and rng.random() < 0.8:
        new = str(rng.choice(INTS))  # mostly an integer where there was one: fewer mere syntax errors
    else:
        new = _value_text(rng)
    return text[: m.start()] + new + text[m.end():], f"number {m.group()}->{new[:20]}"


def _lines(text: str, rng: random.Random, op: str) -> tuple[str, str]:
    lines = text.split("\n")
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    if op == "delete":
        del lines[i]
    elif op == "duplicate":
        lines.insert(j, lines[i])
    else:
        lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines), f"{op} line {i + 1}"


def _swap_values(text: str, rng: random.Random) -> tuple[str, str]:
    pairs = list(_PAIR.finditer(text))
    if len(pairs) < 2:
        return text, "swap:none"
    a, b = sorted(rng.sample(pairs, 2), key=lambda m: m.start())
    va, vb = a.group(2), b.group(2)
    out = text[: b.start(2)] + va + text[b.end(2):]
    out = out[: a.start(2)] + vb + out[a.end(2):]
    return out, f"swap {a.group(1)}<->{b.group(1)}"


def _strings(text: str, rng: random.Random) -> tuple[str, str]:
    spots = list(_STRING_FIELD.finditer(text))
    if not spots:
        return text, "string:none"
    m = rng.choice(spots)
    field = m.group(1)
    if field == "type":
        layer_types = supported_layers()
        new = rng.choice(layer_types + ["Frobnicate", ""])
    elif field == "name" or rng.random() < 0.2:
        new = rng.choice(NAMES + [s.group(2) for s in spots])
    else:  # rewire a bottom or top to another blob
        new = rng.choice([s.group(2) for s in spots if s.group(1) in ("top", "bottom")] + ["nowhere"])
    return text[: m.start(2)] + new + text[m.end(2):], f"{field} {m.group(2)!r}->{new[:20]!r}"


def _enum(text: str, rng: random.Random) -> tuple[str, str]:
    words = list(re.finditer(r"(?<=:\s)(?:[A-Z][A-Z_]+|true|false)\b", text))
    if not words:
        return text, "enum:none"
    m = rng.choice(words)
    new = rng.choice(_ENUMS)
    return text[: m.start()] + new + text[m.end():], f"enum {m.group()}->{new}"


def _filler(text: str, rng: random.Random) -> tuple[str, str]:
    spots = list(re.finditer(r'type:\s*"(constant|uniform|gaussian|positive_unitball|xavier|msra|bilinear)"', text))
    if not spots:
        return text, "filler:none"
    m = rng.choice(spots)
    extra = rng.choice(["", f" min: {_value_text(rng)}", f" max: {_value_text(rng)}", f" std: {_value_text(rng)}",
                        f" sparse: {_value_text(rng)}", f" value: {_value_text(rng)}", f" mean: {_value_text(rng)}",
                        " variance_norm: AVERAGE", " variance_norm: FAN_OUT"])
    new = f'type: "{rng.choice(_FILLERS)}"{extra}'
    return text[: m.start()] + new + text[m.end():], f"filler -> {new[:40]}"


def _truncate(text: str, rng: random.Random) -> tuple[str, str]:
    at = rng.randrange(len(text) + 1)
    return text[:at], f"truncate at {at}"


# -- structured (protobuf) mutations -----------------------------------------------------------

def _param_field(layer_type: str) -> str | None:
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", layer_type).lower()
    special = {"Deconvolution": "convolution_param", "Normalize": "norm_param", "SoftmaxWithLoss": "loss_param",
               "ArgMax": "argmax_param", "PReLU": "prelu_param", "LRN": "lrn_param", "ELU": "elu_param",
               "TanH": "tanh_param", "BNLL": None, "AbsVal": None, "InnerProduct": "inner_product_param"}
    if layer_type in special:
        return special[layer_type]
    name = f"{snake}_param"
    return name if name in schema.LayerParameter.DESCRIPTOR.fields_by_name else None


def _scalar_value(field: object, rng: random.Random) -> object:
    kind = field.cpp_type  # type: ignore[attr-defined]
    if field.enum_type is not None:  # type: ignore[attr-defined]
        values = [v.number for v in field.enum_type.values]  # type: ignore[attr-defined]
        return rng.choice(values)
    if kind == field.CPPTYPE_BOOL:  # type: ignore[attr-defined]
        return rng.random() < 0.5
    if kind in (field.CPPTYPE_FLOAT, field.CPPTYPE_DOUBLE):  # type: ignore[attr-defined]
        return float(rng.choice(FLOATS))
    if kind == field.CPPTYPE_STRING:  # type: ignore[attr-defined]
        return rng.choice(NAMES + _FILLERS)
    return rng.choice(INTS)


def _mutate_message(msg: Message, rng: random.Random, depth: int = 0) -> str:
    """Set one random field (possibly inside a sub-message) of ``msg``; return what was done."""
    fields = list(msg.DESCRIPTOR.fields)
    for _ in range(10):
        field = rng.choice(fields)
        repeated = is_repeated(field)
        if field.message_type is not None:
            if depth >= 3 or field.name == "blobs":
                continue
            if repeated:
                container = getattr(msg, field.name)
                if len(container) and rng.random() < 0.3:
                    del container[rng.randrange(len(container))]
                    return f"{field.name}: removed one"
                sub = container[rng.randrange(len(container))] if len(container) and rng.random() < 0.6 else container.add()
            else:
                sub = getattr(msg, field.name)
            return f"{field.name}.{_mutate_message(sub, rng, depth + 1)}"
        try:
            value = _scalar_value(field, rng)
            if repeated:
                container = getattr(msg, field.name)
                choice = rng.random()
                if choice < 0.3 and len(container):
                    container[rng.randrange(len(container))] = value
                elif choice < 0.45:
                    del container[:]
                else:
                    container.append(value)
            else:
                setattr(msg, field.name, value)
        except (ValueError, TypeError):
            continue  # out of the field's range: protobuf refuses it, try another field
        return f"{field.name}={str(value)[:20]}"
    return "nothing"


def _structured(text: str, rng: random.Random) -> tuple[str, str]:
    net = schema.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError:
        return text, "structured:unparsable"
    if not len(net.layer):
        return text, "structured:no layers"
    layer = rng.choice(list(net.layer))
    roll = rng.random()
    if roll < 0.6:
        field = _param_field(layer.type)
        target = getattr(layer, field) if field and rng.random() < 0.85 else layer
        what = _mutate_message(target, rng)
    elif roll < 0.75:
        what = _mutate_message(layer, rng)
    elif roll < 0.85:
        other = rng.choice(list(net.layer))
        layer.ClearField("bottom")
        layer.bottom.extend(list(other.top) or ["data"])
        what = f"bottoms <- tops of {other.name}"
    else:
        spec = layer.param.add()
        spec.name = rng.choice(["shared", "w", ""])
        spec.lr_mult = rng.choice([0.0, 1.0, 2.0])
        what = "param sharing"
    return text_format.MessageToString(net), f"{layer.name}: {what}"


PROTOTXT_MUTATIONS: dict[str, Callable[[str, random.Random], tuple[str, str]]] = {
    "number": _text_number,
    "delete": lambda t, r: _lines(t, r, "delete"),
    "duplicate": lambda t, r: _lines(t, r, "duplicate"),
    "swap_lines": lambda t, r: _lines(t, r, "swap"),
    "swap_values": _swap_values,
    "string": _strings,
    "enum": _enum,
    "filler": _filler,
    "truncate": _truncate,
    "structured": _structured,
}
_PROTOTXT_WEIGHTS = {"number": 6, "delete": 2, "duplicate": 2, "swap_lines": 1, "swap_values": 2, "string": 4,
                     "enum": 2, "filler": 2, "truncate": 0.3, "structured": 8}


def mutate_prototxt(text: str, rng: random.Random, count: int = 1) -> tuple[str, list[str]]:
    """``count`` random mutations of prototxt ``text``; returns the text and what was done."""
    done = []
    names, weights = list(_PROTOTXT_WEIGHTS), list(_PROTOTXT_WEIGHTS.values())
    for _ in range(count):
        op = rng.choices(names, weights)[0]
        text, what = PROTOTXT_MUTATIONS[op](text, rng)
        done.append(what)
    return text, done


# ---------------------------------------------------------------------------------------------
# caffemodel mutations
# ---------------------------------------------------------------------------------------------

BLOB_DIMS = [0, 1, 2, 3, -1, 2**31, 2**32, 2**62, 2**63 - 1, 2**31 - 1, 10**6]


def _blob_mutation(net: Message, rng: random.Random) -> str:
    layers = [layer for layer in net.layer if len(layer.blobs)]
    if not layers:
        return "blob:none"
    layer = rng.choice(layers)
    index = rng.randrange(len(layer.blobs))
    blob = layer.blobs[index]
    roll = rng.random()
    where = f"{layer.name} blob {index}"
    if roll < 0.25:
        dims = list(blob.shape.dim)
        if dims and rng.random() < 0.7:
            dims[rng.randrange(len(dims))] = rng.choice(BLOB_DIMS)
        else:
            dims = [rng.choice(BLOB_DIMS) for _ in range(rng.choice([0, 1, 4, 5, 40]))]
        blob.shape.ClearField("dim")
        blob.shape.dim.extend(dims)
        return f"{where} dims {dims[:6]}"
    if roll < 0.35:
        count = len(blob.data)
        blob.ClearField("shape")
        blob.num, blob.channels, blob.height, blob.width = rng.choice([(1, 1, 1, count), (count, 1, 1, 1),
                                                                       (-1, 1, 1, -count), (0, 0, 0, 0)])
        return f"{where} legacy shape"
    if roll < 0.5:
        values = list(blob.data)
        cut = rng.randrange(len(values) + 1)
        blob.ClearField("data")
        blob.data.extend(values[:cut] if rng.random() < 0.7 else values + values[:1])
        return f"{where} data length"
    if roll < 0.6:
        values = list(blob.data)
        blob.ClearField("data")
        blob.double_data.extend(values)
        return f"{where} double_data"
    if roll < 0.7:
        if len(blob.data):
            blob.data[rng.randrange(len(blob.data))] = rng.choice([math.nan, math.inf, -math.inf, 3.4e38])
        return f"{where} non-finite value"
    if roll < 0.8:
        del layer.blobs[index]
        return f"{where} removed"
    layer.blobs.add().CopyFrom(blob)
    return f"{where} doubled"


def _layer_mutation(net: Message, rng: random.Random) -> str:
    layers = list(net.layer)
    if not layers:
        return "layer:none"
    i = rng.randrange(len(layers))
    roll = rng.random()
    if roll < 0.3:
        other = rng.choice(layers).name
        layers[i].name = rng.choice([other, *NAMES])
        return f"layer {i} renamed {layers[i].name[:20]!r}"
    if roll < 0.5:
        del net.layer[i]
        return f"layer {i} removed"
    if roll < 0.6:
        net.layer.add().CopyFrom(layers[i])
        return f"layer {i} doubled"
    if roll < 0.8:
        for layer in net.layer:
            layer.name = layer.name + "_x"
        return "every layer renamed"
    layers[i].type = rng.choice(supported_layers())
    return f"layer {i} retyped {layers[i].type}"


def _bytes_mutation(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    buf = bytearray(data)
    roll = rng.random()
    if not buf:
        return bytes([rng.randrange(256)]), "one byte"
    if roll < 0.5:
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        return bytes(buf), "byte flips"
    if roll < 0.8:
        cut = rng.randrange(len(buf))
        return bytes(buf[:cut]), f"truncated at {cut}"
    at = rng.randrange(len(buf))
    return bytes(buf[:at]) + rng.randbytes(rng.randint(1, 16)) + bytes(buf[at:]), "bytes inserted"


def mutate_caffemodel(data: bytes, rng: random.Random, count: int = 1) -> tuple[bytes, list[str]]:
    """``count`` random mutations of caffemodel bytes; returns the bytes and what was done."""
    done = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.3:
            data, what = _bytes_mutation(data, rng)
        else:
            net = schema.NetParameter()
            try:
                net.ParseFromString(data)
            except (DecodeError, RuntimeError, ValueError):
                done.append("unparsable")
                continue
            try:
                what = _blob_mutation(net, rng) if roll < 0.75 else _layer_mutation(net, rng)
            except (TypeError, ValueError):
                done.append("not mutable")  # e.g. a name already made non-UTF-8 by a byte flip
                continue
            data = net.SerializeToString()
        done.append(what)
    return data, done


def random_case(seeds: Sequence[SeedModel], rng: random.Random) -> Case:
    """One random case: a seed, 1-3 mutations of its prototxt and/or caffemodel (or none of it)."""
    seed = rng.choice(seeds)
    prototxt, caffemodel = seed.prototxt, seed.caffemodel
    mutations: list[str] = []
    target = rng.random()
    count = rng.choice([1, 1, 1, 2, 2, 3])
    if target < 0.6:
        prototxt, done = mutate_prototxt(prototxt, rng, count)
        mutations += done
    elif target < 0.9:
        caffemodel, done = mutate_caffemodel(caffemodel, rng, count)
        mutations += [f"model: {d}" for d in done]
    else:
        prototxt, done = mutate_prototxt(prototxt, rng, 1)
        caffemodel, done2 = mutate_caffemodel(caffemodel, rng, 1)
        mutations += done + [f"model: {d}" for d in done2]
    with_model: bytes | None = caffemodel if rng.random() < 0.8 else None
    phase = "train" if rng.random() < 0.15 else "test"
    fold = phase == "test" and rng.random() < 0.1
    outputs = None
    if rng.random() < 0.1:
        tops = re.findall(r'top:\s*"([^"]*)"', prototxt) + ["nowhere"]
        outputs = tuple(rng.sample(tops, min(len(tops), rng.choice([1, 1, 2]))))
    return Case(seed.name, tuple(mutations), prototxt, with_model, phase, fold, outputs)


# ---------------------------------------------------------------------------------------------
# running a case
# ---------------------------------------------------------------------------------------------


def write_case(case: Case, directory: Path, stem: str = "case") -> tuple[Path, Path | None]:
    """Write ``case``'s files into ``directory``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    proto = directory / f"{stem}.prototxt"
    proto.write_text(case.prototxt, encoding="utf-8", errors="surrogateescape")
    model = None
    if case.caffemodel is not None:
        model = directory / f"{stem}.caffemodel"
        model.write_bytes(case.caffemodel)
    return proto, model


def _inputs(net: caffenorm.Net, generator: torch.Generator) -> dict[str, torch.Tensor]:
    feeds = {}
    for name in net.inputs:
        shape = net.input_shapes.get(name) or (1, 3, 8, 8)
        if "label" in name:
            feeds[name] = torch.randint(0, 4, tuple(shape), generator=generator).float()  # type: ignore[arg-type]
        else:
            feeds[name] = torch.randn(tuple(shape), generator=generator)  # type: ignore[arg-type]
    return feeds


def _check_error(err: caffenorm.CaffeNormError) -> str:
    """The outcome of a CaffeNormError: its class, or an escape if the message is unusable."""
    text = str(err)  # must not raise (e.g. a gigantic int in the message)
    if len(text) > MAX_MESSAGE_CHARS + 100:
        return f"ESCAPE:message of {len(text)} characters"
    return type(err).__name__


def run_case(
    proto: Path,
    model: Path | None,
    phase: str = "test",
    memory_limit: float = DEFAULT_LIMIT,
    fold: bool = False,
    outputs: Sequence[str] | None = None,
) -> str:
    """``caffenorm.load`` (with ``fold``/``outputs``) + the inputs' transforms + one forward on
    random inputs of the declared shapes.

    Returns ``"ok"``, the name of the :class:`~caffenorm.CaffeNormError` subclass raised, or
    ``"ESCAPE:<exception type>"`` for anything else.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = caffenorm.load(proto, model, phase, memory_limit=memory_limit, fold=fold, outputs=outputs)
            for name in net.inputs:
                net.input_transform(name)
            generator = torch.Generator().manual_seed(0)
            with torch.no_grad():
                net(**_inputs(net, generator))
    except caffenorm.CaffeNormError as err:
        return _check_error(err)
    except Exception as err:  # noqa: BLE001 - classifying every escape is the point
        return f"ESCAPE:{type(err).__name__}"
    return "ok"


def run_export_case(
    proto: Path, model: Path | None, fmt: str, directory: Path, memory_limit: float = DEFAULT_LIMIT
) -> str:
    """``caffenorm.load`` then ``to_onnx`` / ``to_ncnn`` (``fmt``) with its verification, for a
    net that loads: ``"<fmt> ok"``, ``"<fmt> <CaffeNormError subclass>"`` (a refusal, a mismatch
    found by the check) or ``"<fmt> ESCAPE:<type>"``; ``"<fmt> skip"`` when the net does not load
    or its runtime package is missing (those are other outcomes)."""
    from caffenorm.errors import ExportError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = caffenorm.load(proto, model, memory_limit=memory_limit)
    except Exception:  # noqa: BLE001 - loading is run_case's outcome
        return f"{fmt} skip"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "onnx":
                from caffenorm.export import to_onnx

                to_onnx(net, directory / "case.onnx", batch_sizes=(1, 2))
            else:
                from caffenorm.export.ncnn import to_ncnn

                to_ncnn(net, directory / "case.param", batch_sizes=(1, 2))
    except ExportError as err:
        if "pip install" in str(err):
            return f"{fmt} skip"
        return f"{fmt} {_check_error(err)}"
    except caffenorm.CaffeNormError as err:
        return f"{fmt} {_check_error(err)}"
    except Exception as err:  # noqa: BLE001 - classifying every escape is the point
        return f"{fmt} ESCAPE:{type(err).__name__}"
    return f"{fmt} ok"


def run_cli_case(proto: Path, model: Path | None, memory_limit: float = DEFAULT_LIMIT) -> str:
    """``caffenorm info PROTO [MODEL]`` in-process: ``"rc=N"`` for a return code in {0, 1, 2},
    ``"ESCAPE:..."`` for any other code or an exception."""
    from caffenorm.cli import main

    argv = ["info", str(proto)] + ([str(model)] if model is not None else [])
    out = _io.StringIO()
    import os

    old = os.environ.get("CAFFENORM_MEMORY_LIMIT")
    os.environ["CAFFENORM_MEMORY_LIMIT"] = str(int(memory_limit))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                rc = main(argv)
            except SystemExit as exit_:
                rc = exit_.code if isinstance(exit_.code, int) else 2
    except Exception as err:  # noqa: BLE001
        return f"ESCAPE:{type(err).__name__}"
    finally:
        if old is None:
            os.environ.pop("CAFFENORM_MEMORY_LIMIT", None)
        else:
            os.environ["CAFFENORM_MEMORY_LIMIT"] = old
    return f"rc={rc}" if rc in (0, 1, 2) else f"ESCAPE:rc={rc}"


def save_case(case: Case, outcome: str, directory: Path, index: int) -> Path:
    """Keep a failing case: its files and a note of the seed, mutations and outcome."""
    target = directory / f"{index:05d}_{re.sub(r'[^A-Za-z0-9]+', '_', outcome)[:40]}"
    if target.exists():
        shutil.rmtree(target)
    write_case(case, target)
    (target / "README.txt").write_text(
        f"seed: {case.seed}\nphase: {case.phase}\nfold: {case.fold}\noutputs: {case.outputs}\noutcome: {outcome}\n"
        "mutations:\n"
        + "".join(f"  {m}\n" for m in case.mutations),
        encoding="utf-8",
        errors="replace",
    )
    return target
