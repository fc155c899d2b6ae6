"""Bring old net definitions to today's form, as Caffe's ``upgrade_proto.cpp`` does on load:
V1 ``layers { type: CONVOLUTION }`` entries become V2 ``layer { type: "Convolution" }`` entries, and
the legacy ``input:`` / ``input_dim:`` / ``input_shape`` header becomes an ``Input`` layer."""

from __future__ import annotations

from google.protobuf.message import Message

from caffenorm.caffe import schema
from caffenorm.errors import NetDefinitionError, UnsupportedLayerError

__all__ = ["V1_TYPES", "upgrade_layer", "upgrade_net"]

# V1LayerParameter.LayerType enum name -> V2 type string (Caffe's UpgradeV1LayerType).
V1_TYPES: dict[str, str] = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution",
    "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}


def _v1_to_v2(v1: Message, out: Message, where: str) -> None:
    if v1.HasField("layer"):
        raise UnsupportedLayerError(
            f"{where}: a V0 layer definition (layers {{ layer {{ ... }} }}, Caffe before 2014); upgrade "
            "it once with Caffe's tools/upgrade_net_proto_text and load the result"
        )
    type_name = schema.V1LayerParameter.LayerType.Name(v1.type)
    out.name = v1.name
    out.type = V1_TYPES.get(type_name, type_name)
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    out.blobs.extend(v1.blobs)
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    out.loss_weight.extend(v1.loss_weight)
    n_params = max(len(v1.param), len(v1.blob_share_mode), len(v1.blobs_lr), len(v1.weight_decay))
    for i in range(n_params):
        spec = out.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    # Every V1 *_param message has the same name and message type in LayerParameter.
    for field, value in v1.ListFields():
        if field.name.endswith("_param"):
            getattr(out, field.name).CopyFrom(value)


def upgrade_layer(layer: Message, where: str) -> Message:
    """A V2 ``LayerParameter`` for ``layer`` (returned as is if it already is one)."""
    if layer.DESCRIPTOR.name == "LayerParameter":
        return layer
    out = schema.LayerParameter()
    _v1_to_v2(layer, out, where)
    return out


def _upgrade_input(net: Message, source: str) -> None:
    """Caffe's UpgradeNetInput: ``input`` + ``input_shape``/``input_dim`` -> a leading Input layer."""
    if not net.input:
        if net.input_shape or net.input_dim:
            raise NetDefinitionError(f"{source}: input_shape/input_dim given without any 'input:' name")
        return
    names = list(net.input)
    if net.input_shape:
        if len(net.input_shape) != len(names):
            raise NetDefinitionError(
                f"{source}: {len(names)} inputs but {len(net.input_shape)} input_shape entries; give one per input"
            )
        shapes = [list(s.dim) for s in net.input_shape]
    elif net.input_dim:
        if len(net.input_dim) != 4 * len(names):
            raise NetDefinitionError(
                f"{source}: {len(names)} inputs need {4 * len(names)} input_dim values (N, C, H, W each), "
                f"got {len(net.input_dim)}"
            )
        dims = list(net.input_dim)
        shapes = [dims[4 * i : 4 * i + 4] for i in range(len(names))]
    else:
        shapes = []  # shapes must then come from the caller
    layer = schema.LayerParameter(name="input", type="Input", top=names)
    for dims in shapes:
        layer.input_param.shape.add().dim.extend(dims)
    existing = list(net.layer)
    del net.layer[:]
    net.layer.append(layer)
    net.layer.extend(existing)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


def upgrade_net(net: Message, source: str) -> bool:
    """Upgrade ``net`` in place; return whether anything was changed."""
    changed = False
    if net.layers:
        if net.layer:
            raise NetDefinitionError(
                f"{source}: mixes V1 'layers' and V2 'layer' entries; a net must use one form"
            )
        for i, v1 in enumerate(net.layers):
            _v1_to_v2(v1, net.layer.add(), f"{source}: layer {i} ({v1.name!r})")
        net.ClearField("layers")
        changed = True
    if net.input or net.input_shape or net.input_dim:
        _upgrade_input(net, source)
        changed = True
    return changed
