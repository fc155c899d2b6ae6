"""Caffe's protobuf schema (BVLC ``caffe.proto`` plus the SSD fork), built at import time.

A Caffe net is a ``caffe.NetParameter`` message: ``.prototxt`` files hold its protobuf
*text* format and ``.caffemodel`` files its binary *wire* format. Both are read with the
real ``protobuf`` library (``text_format.Parse`` / ``ParseFromString``), never with a
hand-written parser.

Why the schema is built at runtime instead of shipping protoc output: a generated
``caffe_pb2.py`` is pinned to the protobuf runtime that generated it (new runtimes reject
old gencode and old runtimes reject new gencode), and we must work with every protobuf
from 4.21 to the current 7.x. So the schema lives below as a plain table of *facts* --
message and field names, field numbers, labels, types, defaults, enum values, packed-ness.
At import time the table becomes a ``FileDescriptorProto`` (proto2, package ``caffe``),
which is added to a *private* ``DescriptorPool`` (never the process-wide default pool,
so a ``caffe_pb2`` imported by other code cannot clash with ours), and the message classes
come from ``message_factory.GetMessageClass``. Building everything takes a few
milliseconds.

Where the facts come from (field numbers and defaults only; the table is our own):

* BVLC/caffe ``src/caffe/proto/caffe.proto`` (master, 2020): everything reachable from
  ``NetParameter``, including the legacy V1 (``layers``, field 2) and V0 layer formats.
* weiliu89/caffe branch ``ssd``: ``norm_param`` (206), ``permute_param``,
  ``prior_box_param``, ``detection_output_param``, ``detection_evaluate_param``,
  ``multibox_loss_param``, ``annotated_data_param``, ``video_data_param``, the extra
  ``TransformationParameter`` fields and the messages they need.

The two numberings do not collide on any message reachable from ``NetParameter``, so the
table is their union. ``SolverParameter`` / ``SolverState`` are not in this table: BVLC
and SSD give ``SolverParameter`` fields 41/42 different meanings, and nets never contain
solver messages.  They live in :mod:`caffenorm.caffe.solver_schema`, a second table added to
this module's private pool by :func:`extend` (so its ``net_param`` is this ``NetParameter``).

Usage::

    from google.protobuf import text_format
    from caffenorm.caffe import schema

    net = text_format.Parse(prototxt_text, schema.NetParameter())
    weights = schema.NetParameter.FromString(caffemodel_bytes)
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import NamedTuple, Union

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.protobuf.internal import enum_type_wrapper
from google.protobuf.message import Message

try:  # protobuf >= 4.22
    from google.protobuf.message_factory import GetMessageClass as _get_message_class
except ImportError:  # protobuf 4.21: only the (later removed) MessageFactory API exists

    def _get_message_class(descriptor: Descriptor) -> type[Message]:
        cls: type[Message] = message_factory.MessageFactory(descriptor.file.pool).GetPrototype(descriptor)
        return cls


# ---------------------------------------------------------------------------------------
# The table
#
# A message is ``_msg(field, field, ..., EnumName="VALUE=number VALUE=number ...")``.
# A field is ``(number, name, type)`` or ``(number, name, type, default)`` where
#
#   type     is a scalar ("float", "uint32", "string", ...), a message or enum name, or
#            "Outer.Enum" for an enum nested in another message. An enum name is looked
#            up first among the enclosing message's own enums, then at package level.
#            A leading word gives the label: "repeated float", "packed float" (repeated
#            and packed on the wire) or "required float". No word means optional.
#   default  is a Python value (bool / int / float / str); for an enum, the value name.
#
# Fields are listed in field-number order.
# ---------------------------------------------------------------------------------------

_Default = Union[bool, int, float, str]
_Field = Union[tuple[int, str, str], tuple[int, str, str, _Default]]


class _Message(NamedTuple):
    fields: tuple[_Field, ...]
    enums: dict[str, str]


def _msg(*fields: _Field, **enums: str) -> _Message:
    return _Message(fields, enums)


# Enums that several messages declare, each in its own scope.
_ENGINE = "DEFAULT=0 CAFFE=1 CUDNN=2"
_POOL_METHOD = "MAX=0 AVE=1 STOCHASTIC=2"
_DIM_CHECK_MODE = "STRICT=0 PERMISSIVE=1"

# Package-level enums.
_ENUMS: dict[str, str] = {
    "Phase": "TRAIN=0 TEST=1",
}

_MESSAGES: dict[str, _Message] = {
    # -- blobs and nets -----------------------------------------------------------------
    "BlobShape": _msg(
        (1, "dim", "packed int64"),
    ),
    "BlobProto": _msg(
        (1, "num", "int32", 0),  # num/channels/height/width: legacy 4-D shape
        (2, "channels", "int32", 0),
        (3, "height", "int32", 0),
        (4, "width", "int32", 0),
        (5, "data", "packed float"),
        (6, "diff", "packed float"),
        (7, "shape", "BlobShape"),
        (8, "double_data", "packed double"),
        (9, "double_diff", "packed double"),
    ),
    "BlobProtoVector": _msg(
        (1, "blobs", "repeated BlobProto"),
    ),
    "NetParameter": _msg(
        (1, "name", "string"),
        (2, "layers", "repeated V1LayerParameter"),  # legacy V1 layers
        (3, "input", "repeated string"),  # legacy input declaration ...
        (4, "input_dim", "repeated int32"),  # ... 4 numbers (N, C, H, W) per input
        (5, "force_backward", "bool", False),
        (6, "state", "NetState"),
        (7, "debug_info", "bool", False),
        (8, "input_shape", "repeated BlobShape"),  # legacy, one shape per input
        (100, "layer", "repeated LayerParameter"),
    ),
    "NetState": _msg(
        (1, "phase", "Phase", "TEST"),
        (2, "level", "int32", 0),
        (3, "stage", "repeated string"),
    ),
    "NetStateRule": _msg(
        (1, "phase", "Phase"),
        (2, "min_level", "int32"),
        (3, "max_level", "int32"),
        (4, "stage", "repeated string"),
        (5, "not_stage", "repeated string"),
    ),
    "ParamSpec": _msg(
        (1, "name", "string"),
        (2, "share_mode", "DimCheckMode"),
        (3, "lr_mult", "float", 1.0),
        (4, "decay_mult", "float", 1.0),
        DimCheckMode=_DIM_CHECK_MODE,
    ),
    "FillerParameter": _msg(
        (1, "type", "string", "constant"),
        (2, "value", "float", 0.0),
        (3, "min", "float", 0.0),
        (4, "max", "float", 1.0),
        (5, "mean", "float", 0.0),
        (6, "std", "float", 1.0),
        (7, "sparse", "int32", -1),
        (8, "variance_norm", "VarianceNorm", "FAN_IN"),
        VarianceNorm="FAN_IN=0 FAN_OUT=1 AVERAGE=2",
    ),
    # -- the V2 layer -------------------------------------------------------------------
    "LayerParameter": _msg(
        (1, "name", "string"),
        (2, "type", "string"),
        (3, "bottom", "repeated string"),
        (4, "top", "repeated string"),
        (5, "loss_weight", "repeated float"),
        (6, "param", "repeated ParamSpec"),
        (7, "blobs", "repeated BlobProto"),
        (8, "include", "repeated NetStateRule"),
        (9, "exclude", "repeated NetStateRule"),
        (10, "phase", "Phase"),
        (11, "propagate_down", "repeated bool"),
        (100, "transform_param", "TransformationParameter"),
        (101, "loss_param", "LossParameter"),
        (102, "accuracy_param", "AccuracyParameter"),
        (103, "argmax_param", "ArgMaxParameter"),
        (104, "concat_param", "ConcatParameter"),
        (105, "contrastive_loss_param", "ContrastiveLossParameter"),
        (106, "convolution_param", "ConvolutionParameter"),
        (107, "data_param", "DataParameter"),
        (108, "dropout_param", "DropoutParameter"),
        (109, "dummy_data_param", "DummyDataParameter"),
        (110, "eltwise_param", "EltwiseParameter"),
        (111, "exp_param", "ExpParameter"),
        (112, "hdf5_data_param", "HDF5DataParameter"),
        (113, "hdf5_output_param", "HDF5OutputParameter"),
        (114, "hinge_loss_param", "HingeLossParameter"),
        (115, "image_data_param", "ImageDataParameter"),
        (116, "infogain_loss_param", "InfogainLossParameter"),
        (117, "inner_product_param", "InnerProductParameter"),
        (118, "lrn_param", "LRNParameter"),
        (119, "memory_data_param", "MemoryDataParameter"),
        (120, "mvn_param", "MVNParameter"),
        (121, "pooling_param", "PoolingParameter"),
        (122, "power_param", "PowerParameter"),
        (123, "relu_param", "ReLUParameter"),
        (124, "sigmoid_param", "SigmoidParameter"),
        (125, "softmax_param", "SoftmaxParameter"),
        (126, "slice_param", "SliceParameter"),
        (127, "tanh_param", "TanHParameter"),
        (128, "threshold_param", "ThresholdParameter"),
        (129, "window_data_param", "WindowDataParameter"),
        (130, "python_param", "PythonParameter"),
        (131, "prelu_param", "PReLUParameter"),
        (132, "spp_param", "SPPParameter"),
        (133, "reshape_param", "ReshapeParameter"),
        # NOTE: ParseNet (weiliu89/caffe branch "fcn") numbers its norm_param 134, which
        # collides with log_param here. We follow BVLC/SSD: 134 is log_param and
        # norm_param is 206 (below). ParseNet binaries need renumbering before loading.
        (134, "log_param", "LogParameter"),
        (135, "flatten_param", "FlattenParameter"),
        (136, "reduction_param", "ReductionParameter"),
        (137, "embed_param", "EmbedParameter"),
        (138, "tile_param", "TileParameter"),
        (139, "batch_norm_param", "BatchNormParameter"),
        (140, "elu_param", "ELUParameter"),
        (141, "bias_param", "BiasParameter"),
        (142, "scale_param", "ScaleParameter"),
        (143, "input_param", "InputParameter"),
        (144, "crop_param", "CropParameter"),
        (145, "parameter_param", "ParameterParameter"),
        (146, "recurrent_param", "RecurrentParameter"),
        (147, "swish_param", "SwishParameter"),
        (148, "clip_param", "ClipParameter"),
        # SSD fork (weiliu89/caffe, branch ssd)
        (200, "annotated_data_param", "AnnotatedDataParameter"),
        (201, "multibox_loss_param", "MultiBoxLossParameter"),
        (202, "permute_param", "PermuteParameter"),
        (203, "prior_box_param", "PriorBoxParameter"),
        (204, "detection_output_param", "DetectionOutputParameter"),
        (205, "detection_evaluate_param", "DetectionEvaluateParameter"),
        (206, "norm_param", "NormalizeParameter"),
        (207, "video_data_param", "VideoDataParameter"),
    ),
    "TransformationParameter": _msg(
        (1, "scale", "float", 1.0),
        (2, "mirror", "bool", False),
        (3, "crop_size", "uint32", 0),
        (4, "mean_file", "string"),
        (5, "mean_value", "repeated float"),
        (6, "force_color", "bool", False),
        (7, "force_gray", "bool", False),
        # SSD additions
        (8, "resize_param", "ResizeParameter"),
        (9, "noise_param", "NoiseParameter"),
        (10, "emit_constraint", "EmitConstraint"),
        (11, "crop_h", "uint32", 0),
        (12, "crop_w", "uint32", 0),
        (13, "distort_param", "DistortionParameter"),
        (14, "expand_param", "ExpansionParameter"),
    ),
    "LossParameter": _msg(
        (1, "ignore_label", "int32"),
        (2, "normalize", "bool"),  # deprecated; presence matters
        (3, "normalization", "NormalizationMode", "VALID"),
        NormalizationMode="FULL=0 VALID=1 BATCH_SIZE=2 NONE=3",
    ),
    # -- BVLC layer parameters, alphabetical --------------------------------------------
    "AccuracyParameter": _msg(
        (1, "top_k", "uint32", 1),
        (2, "axis", "int32", 1),
        (3, "ignore_label", "int32"),
    ),
    "ArgMaxParameter": _msg(
        (1, "out_max_val", "bool", False),
        (2, "top_k", "uint32", 1),
        (3, "axis", "int32"),
    ),
    "BatchNormParameter": _msg(
        # No default on purpose: when unset, Caffe uses global stats only in TEST phase.
        (1, "use_global_stats", "bool"),
        (2, "moving_average_fraction", "float", 0.999),
        (3, "eps", "float", 1e-5),
    ),
    "BiasParameter": _msg(
        (1, "axis", "int32", 1),
        (2, "num_axes", "int32", 1),
        (3, "filler", "FillerParameter"),
    ),
    "ClipParameter": _msg(
        (1, "min", "required float"),
        (2, "max", "required float"),
    ),
    "ConcatParameter": _msg(
        (1, "concat_dim", "uint32", 1),  # legacy alias of axis
        (2, "axis", "int32", 1),
    ),
    "ContrastiveLossParameter": _msg(
        (1, "margin", "float", 1.0),
        (2, "legacy_version", "bool", False),
    ),
    "ConvolutionParameter": _msg(
        (1, "num_output", "uint32"),
        (2, "bias_term", "bool", True),
        (3, "pad", "repeated uint32"),
        (4, "kernel_size", "repeated uint32"),
        (5, "group", "uint32", 1),
        (6, "stride", "repeated uint32"),
        (7, "weight_filler", "FillerParameter"),
        (8, "bias_filler", "FillerParameter"),
        (9, "pad_h", "uint32", 0),
        (10, "pad_w", "uint32", 0),
        (11, "kernel_h", "uint32"),
        (12, "kernel_w", "uint32"),
        (13, "stride_h", "uint32"),
        (14, "stride_w", "uint32"),
        (15, "engine", "Engine", "DEFAULT"),
        (16, "axis", "int32", 1),
        (17, "force_nd_im2col", "bool", False),
        (18, "dilation", "repeated uint32"),
        Engine=_ENGINE,
    ),
    "CropParameter": _msg(
        (1, "axis", "int32", 2),
        (2, "offset", "repeated uint32"),
    ),
    "DataParameter": _msg(
        (1, "source", "string"),
        (2, "scale", "float", 1.0),
        (3, "mean_file", "string"),
        (4, "batch_size", "uint32"),
        (5, "crop_size", "uint32", 0),
        (6, "mirror", "bool", False),
        (7, "rand_skip", "uint32", 0),
        (8, "backend", "DB", "LEVELDB"),
        (9, "force_encoded_color", "bool", False),
        (10, "prefetch", "uint32", 4),
        DB="LEVELDB=0 LMDB=1",
    ),
    "DropoutParameter": _msg(
        (1, "dropout_ratio", "float", 0.5),
    ),
    "DummyDataParameter": _msg(
        (1, "data_filler", "repeated FillerParameter"),
        (2, "num", "repeated uint32"),
        (3, "channels", "repeated uint32"),
        (4, "height", "repeated uint32"),
        (5, "width", "repeated uint32"),
        (6, "shape", "repeated BlobShape"),
    ),
    "EltwiseParameter": _msg(
        (1, "operation", "EltwiseOp", "SUM"),
        (2, "coeff", "repeated float"),
        (3, "stable_prod_grad", "bool", True),
        EltwiseOp="PROD=0 SUM=1 MAX=2",
    ),
    "ELUParameter": _msg(
        (1, "alpha", "float", 1.0),
    ),
    "EmbedParameter": _msg(
        (1, "num_output", "uint32"),
        (2, "input_dim", "uint32"),
        (3, "bias_term", "bool", True),
        (4, "weight_filler", "FillerParameter"),
        (5, "bias_filler", "FillerParameter"),
    ),
    "ExpParameter": _msg(
        (1, "base", "float", -1.0),
        (2, "scale", "float", 1.0),
        (3, "shift", "float", 0.0),
    ),
    "FlattenParameter": _msg(
        (1, "axis", "int32", 1),
        (2, "end_axis", "int32", -1),
    ),
    "HDF5DataParameter": _msg(
        (1, "source", "string"),
        (2, "batch_size", "uint32"),
        (3, "shuffle", "bool", False),
    ),
    "HDF5OutputParameter": _msg(
        (1, "file_name", "string"),
    ),
    "HingeLossParameter": _msg(
        (1, "norm", "Norm", "L1"),
        Norm="L1=1 L2=2",
    ),
    "ImageDataParameter": _msg(
        (1, "source", "string"),
        (2, "scale", "float", 1.0),
        (3, "mean_file", "string"),
        (4, "batch_size", "uint32", 1),
        (5, "crop_size", "uint32", 0),
        (6, "mirror", "bool", False),
        (7, "rand_skip", "uint32", 0),
        (8, "shuffle", "bool", False),
        (9, "new_height", "uint32", 0),
        (10, "new_width", "uint32", 0),
        (11, "is_color", "bool", True),
        (12, "root_folder", "string", ""),
    ),
    "InfogainLossParameter": _msg(
        (1, "source", "string"),
        (2, "axis", "int32", 1),
    ),
    "InnerProductParameter": _msg(
        (1, "num_output", "uint32"),
        (2, "bias_term", "bool", True),
        (3, "weight_filler", "FillerParameter"),
        (4, "bias_filler", "FillerParameter"),
        (5, "axis", "int32", 1),
        (6, "transpose", "bool", False),
    ),
    "InputParameter": _msg(
        (1, "shape", "repeated BlobShape"),
    ),
    "LogParameter": _msg(
        (1, "base", "float", -1.0),
        (2, "scale", "float", 1.0),
        (3, "shift", "float", 0.0),
    ),
    "LRNParameter": _msg(
        (1, "local_size", "uint32", 5),
        (2, "alpha", "float", 1.0),
        (3, "beta", "float", 0.75),
        (4, "norm_region", "NormRegion", "ACROSS_CHANNELS"),
        (5, "k", "float", 1.0),
        (6, "engine", "Engine", "DEFAULT"),
        NormRegion="ACROSS_CHANNELS=0 WITHIN_CHANNEL=1",
        Engine=_ENGINE,
    ),
    "MemoryDataParameter": _msg(
        (1, "batch_size", "uint32"),
        (2, "channels", "uint32"),
        (3, "height", "uint32"),
        (4, "width", "uint32"),
    ),
    "MVNParameter": _msg(
        (1, "normalize_variance", "bool", True),
        (2, "across_channels", "bool", False),
        (3, "eps", "float", 1e-9),
    ),
    "ParameterParameter": _msg(
        (1, "shape", "BlobShape"),
    ),
    "PoolingParameter": _msg(
        (1, "pool", "PoolMethod", "MAX"),
        (2, "kernel_size", "uint32"),
        (3, "stride", "uint32", 1),
        (4, "pad", "uint32", 0),
        (5, "kernel_h", "uint32"),
        (6, "kernel_w", "uint32"),
        (7, "stride_h", "uint32"),
        (8, "stride_w", "uint32"),
        (9, "pad_h", "uint32", 0),
        (10, "pad_w", "uint32", 0),
        (11, "engine", "Engine", "DEFAULT"),
        (12, "global_pooling", "bool", False),
        (13, "round_mode", "RoundMode", "CEIL"),  # BVLC master only (not in SSD)
        PoolMethod=_POOL_METHOD,
        Engine=_ENGINE,
        RoundMode="CEIL=0 FLOOR=1",
    ),
    "PowerParameter": _msg(
        (1, "power", "float", 1.0),
        (2, "scale", "float", 1.0),
        (3, "shift", "float", 0.0),
    ),
    "PReLUParameter": _msg(
        (1, "filler", "FillerParameter"),
        (2, "channel_shared", "bool", False),
    ),
    "PythonParameter": _msg(
        (1, "module", "string"),
        (2, "layer", "string"),
        (3, "param_str", "string", ""),
        (4, "share_in_parallel", "bool", False),
    ),
    "RecurrentParameter": _msg(
        (1, "num_output", "uint32", 0),
        (2, "weight_filler", "FillerParameter"),
        (3, "bias_filler", "FillerParameter"),
        (4, "debug_info", "bool", False),
        (5, "expose_hidden", "bool", False),
    ),
    "ReductionParameter": _msg(
        (1, "operation", "ReductionOp", "SUM"),
        (2, "axis", "int32", 0),
        (3, "coeff", "float", 1.0),
        ReductionOp="SUM=1 ASUM=2 SUMSQ=3 MEAN=4",
    ),
    "ReLUParameter": _msg(
        (1, "negative_slope", "float", 0.0),
        (2, "engine", "Engine", "DEFAULT"),
        Engine=_ENGINE,
    ),
    "ReshapeParameter": _msg(
        (1, "shape", "BlobShape"),
        (2, "axis", "int32", 0),
        (3, "num_axes", "int32", -1),
    ),
    "ScaleParameter": _msg(
        (1, "axis", "int32", 1),
        (2, "num_axes", "int32", 1),
        (3, "filler", "FillerParameter"),
        (4, "bias_term", "bool", False),
        (5, "bias_filler", "FillerParameter"),
    ),
    "SigmoidParameter": _msg(
        (1, "engine", "Engine", "DEFAULT"),
        Engine=_ENGINE,
    ),
    "SliceParameter": _msg(
        (1, "slice_dim", "uint32", 1),  # legacy alias of axis
        (2, "slice_point", "repeated uint32"),
        (3, "axis", "int32", 1),
    ),
    "SoftmaxParameter": _msg(
        (1, "engine", "Engine", "DEFAULT"),
        (2, "axis", "int32", 1),
        Engine=_ENGINE,
    ),
    "SPPParameter": _msg(
        (1, "pyramid_height", "uint32"),
        (2, "pool", "PoolMethod", "MAX"),
        (6, "engine", "Engine", "DEFAULT"),
        PoolMethod=_POOL_METHOD,
        Engine=_ENGINE,
    ),
    "SwishParameter": _msg(
        (1, "beta", "float", 1.0),
    ),
    "TanHParameter": _msg(
        (1, "engine", "Engine", "DEFAULT"),
        Engine=_ENGINE,
    ),
    "ThresholdParameter": _msg(
        (1, "threshold", "float", 0.0),
    ),
    "TileParameter": _msg(
        (1, "axis", "int32", 1),
        (2, "tiles", "int32"),
    ),
    "WindowDataParameter": _msg(
        (1, "source", "string"),
        (2, "scale", "float", 1.0),
        (3, "mean_file", "string"),
        (4, "batch_size", "uint32"),
        (5, "crop_size", "uint32", 0),
        (6, "mirror", "bool", False),
        (7, "fg_threshold", "float", 0.5),
        (8, "bg_threshold", "float", 0.5),
        (9, "fg_fraction", "float", 0.25),
        (10, "context_pad", "uint32", 0),
        (11, "crop_mode", "string", "warp"),
        (12, "cache_images", "bool", False),
        (13, "root_folder", "string", ""),
    ),
    # -- legacy layer formats -----------------------------------------------------------
    "V1LayerParameter": _msg(
        (1, "layer", "V0LayerParameter"),  # V0 nets wrap the old layer here
        (2, "bottom", "repeated string"),
        (3, "top", "repeated string"),
        (4, "name", "string"),
        (5, "type", "LayerType"),
        (6, "blobs", "repeated BlobProto"),
        (7, "blobs_lr", "repeated float"),
        (8, "weight_decay", "repeated float"),
        (9, "concat_param", "ConcatParameter"),
        (10, "convolution_param", "ConvolutionParameter"),
        (11, "data_param", "DataParameter"),
        (12, "dropout_param", "DropoutParameter"),
        (13, "hdf5_data_param", "HDF5DataParameter"),
        (14, "hdf5_output_param", "HDF5OutputParameter"),
        (15, "image_data_param", "ImageDataParameter"),
        (16, "infogain_loss_param", "InfogainLossParameter"),
        (17, "inner_product_param", "InnerProductParameter"),
        (18, "lrn_param", "LRNParameter"),
        (19, "pooling_param", "PoolingParameter"),
        (20, "window_data_param", "WindowDataParameter"),
        (21, "power_param", "PowerParameter"),
        (22, "memory_data_param", "MemoryDataParameter"),
        (23, "argmax_param", "ArgMaxParameter"),
        (24, "eltwise_param", "EltwiseParameter"),
        (25, "threshold_param", "ThresholdParameter"),
        (26, "dummy_data_param", "DummyDataParameter"),
        (27, "accuracy_param", "AccuracyParameter"),
        (29, "hinge_loss_param", "HingeLossParameter"),
        (30, "relu_param", "ReLUParameter"),
        (31, "slice_param", "SliceParameter"),
        (32, "include", "repeated NetStateRule"),
        (33, "exclude", "repeated NetStateRule"),
        (34, "mvn_param", "MVNParameter"),
        (35, "loss_weight", "repeated float"),
        (36, "transform_param", "TransformationParameter"),
        (37, "tanh_param", "TanHParameter"),
        (38, "sigmoid_param", "SigmoidParameter"),
        (39, "softmax_param", "SoftmaxParameter"),
        (40, "contrastive_loss_param", "ContrastiveLossParameter"),
        (41, "exp_param", "ExpParameter"),
        (42, "loss_param", "LossParameter"),
        (1001, "param", "repeated string"),
        (1002, "blob_share_mode", "repeated DimCheckMode"),
        LayerType=(
            "NONE=0 ACCURACY=1 BNLL=2 CONCAT=3 CONVOLUTION=4 DATA=5 DROPOUT=6"
            " EUCLIDEAN_LOSS=7 FLATTEN=8 HDF5_DATA=9 HDF5_OUTPUT=10 IM2COL=11"
            " IMAGE_DATA=12 INFOGAIN_LOSS=13 INNER_PRODUCT=14 LRN=15"
            " MULTINOMIAL_LOGISTIC_LOSS=16 POOLING=17 RELU=18 SIGMOID=19 SOFTMAX=20"
            " SOFTMAX_LOSS=21 SPLIT=22 TANH=23 WINDOW_DATA=24 ELTWISE=25 POWER=26"
            " SIGMOID_CROSS_ENTROPY_LOSS=27 HINGE_LOSS=28 MEMORY_DATA=29 ARGMAX=30"
            " THRESHOLD=31 DUMMY_DATA=32 SLICE=33 MVN=34 ABSVAL=35 SILENCE=36"
            " CONTRASTIVE_LOSS=37 EXP=38 DECONVOLUTION=39"
        ),
        DimCheckMode=_DIM_CHECK_MODE,
    ),
    "V0LayerParameter": _msg(
        (1, "name", "string"),
        (2, "type", "string"),  # lower-case type strings: "conv", "lrn", "pool", ...
        (3, "num_output", "uint32"),
        (4, "biasterm", "bool", True),
        (5, "weight_filler", "FillerParameter"),
        (6, "bias_filler", "FillerParameter"),
        (7, "pad", "uint32", 0),
        (8, "kernelsize", "uint32"),
        (9, "group", "uint32", 1),
        (10, "stride", "uint32", 1),
        (11, "pool", "PoolMethod", "MAX"),
        (12, "dropout_ratio", "float", 0.5),
        (13, "local_size", "uint32", 5),
        (14, "alpha", "float", 1.0),
        (15, "beta", "float", 0.75),
        (16, "source", "string"),
        (17, "scale", "float", 1.0),
        (18, "meanfile", "string"),
        (19, "batchsize", "uint32"),
        (20, "cropsize", "uint32", 0),
        (21, "mirror", "bool", False),
        (22, "k", "float", 1.0),
        (50, "blobs", "repeated BlobProto"),
        (51, "blobs_lr", "repeated float"),
        (52, "weight_decay", "repeated float"),
        (53, "rand_skip", "uint32", 0),
        (54, "det_fg_threshold", "float", 0.5),
        (55, "det_bg_threshold", "float", 0.5),
        (56, "det_fg_fraction", "float", 0.25),
        # 57 was retired upstream and is deliberately absent.
        (58, "det_context_pad", "uint32", 0),
        (59, "det_crop_mode", "string", "warp"),
        (60, "new_num", "int32", 0),
        (61, "new_channels", "int32", 0),
        (62, "new_height", "int32", 0),
        (63, "new_width", "int32", 0),
        (64, "shuffle_images", "bool", False),
        (65, "concat_dim", "uint32", 1),
        (1001, "hdf5_output_param", "HDF5OutputParameter"),
        PoolMethod=_POOL_METHOD,
    ),
    # -- SSD fork: data, annotations, augmentation --------------------------------------
    "Datum": _msg(
        (1, "channels", "int32"),
        (2, "height", "int32"),
        (3, "width", "int32"),
        (4, "data", "bytes"),
        (5, "label", "int32"),
        (6, "float_data", "repeated float"),
        (7, "encoded", "bool", False),
    ),
    "LabelMapItem": _msg(
        (1, "name", "string"),
        (2, "label", "int32"),
        (3, "display_name", "string"),
    ),
    "LabelMap": _msg(
        (1, "item", "repeated LabelMapItem"),
    ),
    "Sampler": _msg(
        (1, "min_scale", "float", 1.0),
        (2, "max_scale", "float", 1.0),
        (3, "min_aspect_ratio", "float", 1.0),
        (4, "max_aspect_ratio", "float", 1.0),
    ),
    "SampleConstraint": _msg(
        (1, "min_jaccard_overlap", "float"),
        (2, "max_jaccard_overlap", "float"),
        (3, "min_sample_coverage", "float"),
        (4, "max_sample_coverage", "float"),
        (5, "min_object_coverage", "float"),
        (6, "max_object_coverage", "float"),
    ),
    "BatchSampler": _msg(
        (1, "use_original_image", "bool", True),
        (2, "sampler", "Sampler"),
        (3, "sample_constraint", "SampleConstraint"),
        (4, "max_sample", "uint32"),
        (5, "max_trials", "uint32", 100),
    ),
    "EmitConstraint": _msg(
        (1, "emit_type", "EmitType", "CENTER"),
        (2, "emit_overlap", "float"),
        EmitType="CENTER=0 MIN_OVERLAP=1",
    ),
    "NormalizedBBox": _msg(
        (1, "xmin", "float"),
        (2, "ymin", "float"),
        (3, "xmax", "float"),
        (4, "ymax", "float"),
        (5, "label", "int32"),
        (6, "difficult", "bool"),
        (7, "score", "float"),
        (8, "size", "float"),
    ),
    "Annotation": _msg(
        (1, "instance_id", "int32", 0),
        (2, "bbox", "NormalizedBBox"),
    ),
    "AnnotationGroup": _msg(
        (1, "group_label", "int32"),
        (2, "annotation", "repeated Annotation"),
    ),
    "AnnotatedDatum": _msg(
        (1, "datum", "Datum"),
        (2, "type", "AnnotationType"),
        (3, "annotation_group", "repeated AnnotationGroup"),
        AnnotationType="BBOX=0",
    ),
    "ResizeParameter": _msg(
        (1, "prob", "float", 1.0),
        (2, "resize_mode", "Resize_mode", "WARP"),
        (3, "height", "uint32", 0),
        (4, "width", "uint32", 0),
        (5, "pad_mode", "Pad_mode", "CONSTANT"),
        (6, "pad_value", "repeated float"),
        (7, "interp_mode", "repeated Interp_mode"),
        (8, "height_scale", "uint32", 0),
        (9, "width_scale", "uint32", 0),
        Resize_mode="WARP=1 FIT_SMALL_SIZE=2 FIT_LARGE_SIZE_AND_PAD=3",
        Pad_mode="CONSTANT=1 MIRRORED=2 REPEAT_NEAREST=3",
        Interp_mode="LINEAR=1 AREA=2 NEAREST=3 CUBIC=4 LANCZOS4=5",
    ),
    "SaltPepperParameter": _msg(
        (1, "fraction", "float", 0.0),
        (2, "value", "repeated float"),
    ),
    "NoiseParameter": _msg(
        (1, "prob", "float", 0.0),
        (2, "hist_eq", "bool", False),
        (3, "inverse", "bool", False),
        (4, "decolorize", "bool", False),
        (5, "gauss_blur", "bool", False),
        (6, "jpeg", "float", -1.0),
        (7, "posterize", "bool", False),
        (8, "erode", "bool", False),
        (9, "saltpepper", "bool", False),
        (10, "saltpepper_param", "SaltPepperParameter"),
        (11, "clahe", "bool", False),
        (12, "convert_to_hsv", "bool", False),
        (13, "convert_to_lab", "bool", False),
    ),
    "DistortionParameter": _msg(
        (1, "brightness_prob", "float", 0.0),
        (2, "brightness_delta", "float", 0.0),
        (3, "contrast_prob", "float", 0.0),
        (4, "contrast_lower", "float", 0.0),
        (5, "contrast_upper", "float", 0.0),
        (6, "hue_prob", "float", 0.0),
        (7, "hue_delta", "float", 0.0),
        (8, "saturation_prob", "float", 0.0),
        (9, "saturation_lower", "float", 0.0),
        (10, "saturation_upper", "float", 0.0),
        (11, "random_order_prob", "float", 0.0),
    ),
    "ExpansionParameter": _msg(
        (1, "prob", "float", 1.0),
        (2, "max_expand_ratio", "float", 1.0),
    ),
    # -- SSD fork: layer parameters -----------------------------------------------------
    "AnnotatedDataParameter": _msg(
        (1, "batch_sampler", "repeated BatchSampler"),
        (2, "label_map_file", "string"),
        (3, "anno_type", "AnnotatedDatum.AnnotationType"),
    ),
    "DetectionEvaluateParameter": _msg(
        (1, "num_classes", "uint32"),
        (2, "background_label_id", "uint32", 0),
        (3, "overlap_threshold", "float", 0.5),
        (4, "evaluate_difficult_gt", "bool", True),
        (5, "name_size_file", "string"),
        (6, "resize_param", "ResizeParameter"),
    ),
    "NonMaximumSuppressionParameter": _msg(
        (1, "nms_threshold", "float", 0.3),
        (2, "top_k", "int32"),
        (3, "eta", "float", 1.0),
    ),
    "SaveOutputParameter": _msg(
        (1, "output_directory", "string"),
        (2, "output_name_prefix", "string"),
        (3, "output_format", "string"),
        (4, "label_map_file", "string"),
        (5, "name_size_file", "string"),
        (6, "num_test_image", "uint32"),
        (7, "resize_param", "ResizeParameter"),
    ),
    "DetectionOutputParameter": _msg(
        (1, "num_classes", "uint32"),
        (2, "share_location", "bool", True),
        (3, "background_label_id", "int32", 0),
        (4, "nms_param", "NonMaximumSuppressionParameter"),
        (5, "save_output_param", "SaveOutputParameter"),
        (6, "code_type", "PriorBoxParameter.CodeType", "CORNER"),
        (7, "keep_top_k", "int32", -1),
        (8, "variance_encoded_in_target", "bool", False),
        (9, "confidence_threshold", "float"),
        (10, "visualize", "bool", False),
        (11, "visualize_threshold", "float"),
        (12, "save_file", "string"),
    ),
    "MultiBoxLossParameter": _msg(
        (1, "loc_loss_type", "LocLossType", "SMOOTH_L1"),
        (2, "conf_loss_type", "ConfLossType", "SOFTMAX"),
        (3, "loc_weight", "float", 1.0),
        (4, "num_classes", "uint32"),
        (5, "share_location", "bool", True),
        (6, "match_type", "MatchType", "PER_PREDICTION"),
        (7, "overlap_threshold", "float", 0.5),
        (8, "use_prior_for_matching", "bool", True),
        (9, "background_label_id", "uint32", 0),
        (10, "use_difficult_gt", "bool", True),
        (11, "do_neg_mining", "bool"),  # deprecated in favour of mining_type
        (12, "neg_pos_ratio", "float", 3.0),
        (13, "neg_overlap", "float", 0.5),
        (14, "code_type", "PriorBoxParameter.CodeType", "CORNER"),
        # (no field 15)
        (16, "encode_variance_in_target", "bool", False),
        (17, "map_object_to_agnostic", "bool", False),
        (18, "ignore_cross_boundary_bbox", "bool", False),
        (19, "bp_inside", "bool", False),
        (20, "mining_type", "MiningType", "MAX_NEGATIVE"),
        (21, "nms_param", "NonMaximumSuppressionParameter"),
        (22, "sample_size", "int32", 64),
        (23, "use_prior_for_nms", "bool", False),
        LocLossType="L2=0 SMOOTH_L1=1",
        ConfLossType="SOFTMAX=0 LOGISTIC=1",
        MatchType="BIPARTITE=0 PER_PREDICTION=1",
        MiningType="NONE=0 MAX_NEGATIVE=1 HARD_EXAMPLE=2",
    ),
    "NormalizeParameter": _msg(
        # ParseNet ("fcn" branch) has fix_scale=4 and eps=5 instead; we follow SSD.
        (1, "across_spatial", "bool", True),
        (2, "scale_filler", "FillerParameter"),
        (3, "channel_shared", "bool", True),
        (4, "eps", "float", 1e-10),
    ),
    "PermuteParameter": _msg(
        (1, "order", "repeated uint32"),
    ),
    "PriorBoxParameter": _msg(
        (1, "min_size", "repeated float"),
        (2, "max_size", "repeated float"),
        (3, "aspect_ratio", "repeated float"),
        (4, "flip", "bool", True),
        (5, "clip", "bool", False),
        (6, "variance", "repeated float"),
        (7, "img_size", "uint32"),
        (8, "img_h", "uint32"),
        (9, "img_w", "uint32"),
        (10, "step", "float"),
        (11, "step_h", "float"),
        (12, "step_w", "float"),
        (13, "offset", "float", 0.5),
        CodeType="CORNER=1 CENTER_SIZE=2 CORNER_SIZE=3",
    ),
    "VideoDataParameter": _msg(
        (1, "video_type", "VideoType", "WEBCAM"),
        (2, "device_id", "int32", 0),
        (3, "video_file", "string"),
        (4, "skip_frames", "uint32", 0),
        VideoType="WEBCAM=0 VIDEO=1",
    ),
}

# ---------------------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------------------

_PACKAGE = "caffe"
_FILE_NAME = "caffenorm/caffe/caffe.proto"  # a name in our private pool, not a real file

_FDP = descriptor_pb2.FieldDescriptorProto
_SCALAR_TYPES: dict[str, _FDP.Type.ValueType] = {
    "double": _FDP.TYPE_DOUBLE,
    "float": _FDP.TYPE_FLOAT,
    "int64": _FDP.TYPE_INT64,
    "uint64": _FDP.TYPE_UINT64,
    "int32": _FDP.TYPE_INT32,
    "uint32": _FDP.TYPE_UINT32,
    "bool": _FDP.TYPE_BOOL,
    "string": _FDP.TYPE_STRING,
    "bytes": _FDP.TYPE_BYTES,
}
_LABELS: dict[str, _FDP.Label.ValueType] = {
    "optional": _FDP.LABEL_OPTIONAL,
    "repeated": _FDP.LABEL_REPEATED,
    "packed": _FDP.LABEL_REPEATED,
    "required": _FDP.LABEL_REQUIRED,
}


def _add_enum(proto: descriptor_pb2.EnumDescriptorProto, name: str, values: str) -> None:
    proto.name = name
    for item in values.split():
        value_name, _, number = item.partition("=")
        proto.value.add(name=value_name, number=int(number))


def _resolve_type(
    owner: str,
    ref: str,
    messages: Mapping[str, _Message] | None = None,
    enums: Mapping[str, str] | None = None,
) -> tuple[_FDP.Type.ValueType, str]:
    """Return (field type, fully qualified type name) for a type written in the table.

    ``messages``/``enums`` are every table the name may come from (the file being built and the
    files it depends on; all in package ``caffe``); by default the net schema's own.
    """
    messages = _MESSAGES if messages is None else messages
    enums = _ENUMS if enums is None else enums
    if ref in _SCALAR_TYPES:
        return _SCALAR_TYPES[ref], ""
    if ref in messages[owner].enums:
        return _FDP.TYPE_ENUM, f".{_PACKAGE}.{owner}.{ref}"
    if ref in enums:
        return _FDP.TYPE_ENUM, f".{_PACKAGE}.{ref}"
    if ref in messages:
        return _FDP.TYPE_MESSAGE, f".{_PACKAGE}.{ref}"
    outer, _, inner = ref.partition(".")
    if outer in messages and inner in messages[outer].enums:
        return _FDP.TYPE_ENUM, f".{_PACKAGE}.{ref}"
    raise ValueError(f"caffe schema: {owner} uses unknown type {ref!r}")


def _default_text(value: _Default) -> str:
    """Spell a default the way FieldDescriptorProto.default_value expects it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _add_field(
    proto: descriptor_pb2.FieldDescriptorProto,
    owner: str,
    field: _Field,
    messages: Mapping[str, _Message] | None = None,
    enums: Mapping[str, str] | None = None,
) -> None:
    number, name, spec, *default = field
    words = spec.split()
    label = words[0] if len(words) == 2 else "optional"
    proto.name = name
    proto.number = number
    proto.label = _LABELS[label]
    proto.type, type_name = _resolve_type(owner, words[-1], messages, enums)
    if type_name:
        proto.type_name = type_name
    if label == "packed":
        proto.options.packed = True
    if default:
        proto.default_value = _default_text(default[0])


def build_file(
    name: str,
    messages: Mapping[str, _Message],
    enums: Mapping[str, str] | None = None,
    *,
    dependencies: Sequence[str] = (),
    known_messages: Mapping[str, _Message] | None = None,
    known_enums: Mapping[str, str] | None = None,
) -> descriptor_pb2.FileDescriptorProto:
    """Turn a table (``messages``, package-level ``enums``) into a proto2 FileDescriptorProto for
    package ``caffe`` named ``name``.

    A table may use the messages and enums of files it depends on (``dependencies``: their file
    names; ``known_messages``/``known_enums``: their tables), e.g. the solver schema's
    ``SolverParameter.net_param`` is the net schema's ``NetParameter``.
    """
    enums = dict(enums or {})
    all_messages = {**(known_messages or {}), **messages}
    all_enums = {**(known_enums or {}), **enums}
    file = descriptor_pb2.FileDescriptorProto(name=name, package=_PACKAGE, syntax="proto2")
    file.dependency.extend(dependencies)
    for enum_name, values in enums.items():
        _add_enum(file.enum_type.add(), enum_name, values)
    for message_name, message in messages.items():
        proto = file.message_type.add(name=message_name)
        for enum_name, values in message.enums.items():
            _add_enum(proto.enum_type.add(), enum_name, values)
        for field in message.fields:
            _add_field(proto.field.add(), message_name, field, all_messages, all_enums)
    return file


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    """Turn the net table into a proto2 FileDescriptorProto for package ``caffe``."""
    return build_file(_FILE_NAME, _MESSAGES, _ENUMS)


def _add_file(
    pool: descriptor_pool.DescriptorPool, file_proto: descriptor_pb2.FileDescriptorProto
) -> tuple[FileDescriptor, dict[str, type[Message]]]:
    """Add ``file_proto`` to ``pool``; return its descriptor and one class per message."""
    pool.AddSerializedFile(file_proto.SerializeToString())
    file = pool.FindFileByName(file_proto.name)
    classes = {
        name: _get_message_class(descriptor)
        for name, descriptor in file.message_types_by_name.items()
    }
    return file, classes


def _build_pool() -> tuple[FileDescriptor, dict[str, type[Message]]]:
    """Load the schema into a fresh private DescriptorPool and make one class per message."""
    return _add_file(descriptor_pool.DescriptorPool(), _build_file())


DESCRIPTOR, _CLASSES = _build_pool()


def extend(
    file_name: str, messages: Mapping[str, _Message], enums: Mapping[str, str] | None = None
) -> tuple[FileDescriptor, dict[str, type[Message]]]:
    """Add a second table to the net schema's private pool, as the file ``file_name`` (package
    ``caffe``) depending on the net schema: its messages may use every net message and enum, and
    a net message inside it is the very class of this module (``schema.NetParameter``), so values
    move between the two without conversion.  Returns the new file's descriptor and its classes.

    Used by :mod:`caffenorm.caffe.solver_schema`; a table is written with :func:`msg`.
    """
    proto = build_file(
        file_name, messages, enums, dependencies=[_FILE_NAME], known_messages=_MESSAGES, known_enums=_ENUMS
    )
    return _add_file(DESCRIPTOR.pool, proto)


msg = _msg  # the table's message constructor, for other tables (see :func:`extend`)


def message_class(name: str) -> type[Message]:
    """Return the message class for a Caffe message name (``"LRNParameter"`` or ``"caffe.LRNParameter"``)."""
    short = name[len(_PACKAGE) + 1 :] if name.startswith(_PACKAGE + ".") else name
    try:
        return _CLASSES[short]
    except KeyError:
        close = difflib.get_close_matches(short, _CLASSES, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no Caffe message named {name!r}{hint}") from None


def _package_enums(file: FileDescriptor) -> dict[str, object]:
    """For each package-level enum: a wrapper (``Phase``) and its values (``TRAIN``, ``TEST``)."""
    names: dict[str, object] = {}
    for enum in file.enum_types_by_name.values():
        names[enum.name] = enum_type_wrapper.EnumTypeWrapper(enum)
        names.update((value.name, value.number) for value in enum.values)
    return names


# Module-level names: one class per message (schema.NetParameter, ...) plus the
# package-level enums (schema.Phase, schema.TRAIN, schema.TEST).
_ENUM_EXPORTS = _package_enums(DESCRIPTOR)
globals().update(_CLASSES)
globals().update(_ENUM_EXPORTS)

__all__ = ["DESCRIPTOR", "message_class", *_ENUM_EXPORTS, *_CLASSES]


def __getattr__(name: str) -> type[Message]:
    # NOTE: never reached for the names above (they are real module globals). It exists
    # so that type checkers accept ``schema.NetParameter`` & co. as ``type[Message]``.
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
