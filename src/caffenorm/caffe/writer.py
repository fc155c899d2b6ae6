"""Write a :class:`~caffenorm.caffe.graph.Graph` back to Caffe's files: what the modules hold now
(settings and tensors), not what was read.

Each layer is written from a copy of the definition it was read from, with its module's current
settings written over it by the writer registered for the module's class (fields the module does
not model, such as fillers, ``param`` specs or ``engine``, are kept), and, in a caffemodel, with
its current blobs.  Layers of other phases are kept as they were read; layers a pass removed
(folded into a convolution) are left out.
"""

from __future__ import annotations

import os

import numpy as np
from google.protobuf.message import Message

from caffenorm.caffe import io, schema
from caffenorm.caffe import layers as _layers  # noqa: F401 - registers the layer families
from caffenorm.caffe.graph import Graph, Node
from caffenorm.caffe.registry import get_writer, is_repeated
from caffenorm.errors import CaffeNormError

__all__ = ["graph_to_net_parameter", "save"]

PathLike = str | os.PathLike[str]

_NET_LEVEL_SKIP = ("layer", "layers", "input", "input_shape", "input_dim")


def _layer_parameter(node: Node, definition: Message, with_blobs: bool) -> Message:
    layer = schema.LayerParameter()
    layer.CopyFrom(definition)
    layer.ClearField("blobs")
    layer.name = node.name
    del layer.bottom[:]
    layer.bottom.extend(node.bottoms)
    del layer.top[:]
    layer.top.extend(node.tops)
    writer = get_writer(node.module)
    if writer is not None:
        try:
            writer(node.module, layer)
        except CaffeNormError as err:
            raise err.at(node.location) from None
    if with_blobs:
        for blob in node.module.caffe_blobs():
            io.array_to_blob(np.asarray(blob.detach().float().cpu().numpy()), layer.blobs.add())
    return layer


def graph_to_net_parameter(graph: Graph, *, with_blobs: bool = False, other_phases: bool = True) -> Message:
    """The graph as a ``NetParameter``.

    Args:
        with_blobs: include every layer's blobs (a caffemodel) or not (a prototxt).
        other_phases: keep the layers of the definition that this phase does not run (e.g. a
            TEST-only Accuracy layer when the net was loaded for TRAIN), as they were read.
    """
    net = schema.NetParameter()
    for field, value in graph.definition.ListFields():
        if field.name not in _NET_LEVEL_SKIP:
            if is_repeated(field):
                getattr(net, field.name).extend(value)
            elif field.message_type is not None:
                getattr(net, field.name).CopyFrom(value)
            else:
                setattr(net, field.name, value)
    written: dict[int, list[Message]] = {}
    orphans: list[Message] = []
    for node in graph.nodes:
        layers = node.layers()
        for part in layers:
            definition = part.definitions[0] if part.definitions else schema.LayerParameter(type=part.type)
            layer = _layer_parameter(part, definition, with_blobs)
            if part.indices:
                written.setdefault(part.indices[0], []).append(layer)
            else:
                orphans.append(layer)
    for i, original in enumerate(graph.definition.layer):
        if i in written:
            net.layer.extend(written[i])
        elif other_phases and i not in graph.phase_indices:
            net.layer.add().CopyFrom(original)
    net.layer.extend(orphans)
    return net


def save(graph: Graph, prototxt: PathLike, caffemodel: PathLike | None = None) -> None:
    """Write the graph as a prototxt and (optionally) a caffemodel with every layer's blobs."""
    io.write_prototxt(graph_to_net_parameter(graph), prototxt)
    if caffemodel is not None:
        io.write_caffemodel(graph_to_net_parameter(graph, with_blobs=True, other_phases=False), caffemodel)
