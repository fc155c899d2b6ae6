"""Copy a ``.caffemodel``'s blobs into the layers of a graph, one caffemodel layer at a time (peak
memory stays near the size of the largest layer), matching layers by name as Caffe's
``CopyTrainedLayersFrom`` does."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from google.protobuf.message import Message
from torch import Tensor

from caffenorm.caffe import io
from caffenorm.caffe.fillers import fill
from caffenorm.caffe.graph import Graph
from caffenorm.caffe.upgrade import upgrade_layer
from caffenorm.errors import BlobError, CaffemodelError, Location, summarize

__all__ = ["load_weights", "run_fills"]

PathLike = str | os.PathLike[str]
Fills = Mapping[str, Sequence[tuple[Tensor, Message]]]


def run_fills(graph: Graph, names: Iterable[str], fills: Fills, generator: torch.Generator) -> None:
    """Run the deferred fillers of the layers ``names``, in net order (so seeds reproduce)."""
    wanted = set(names)
    for node in graph.layer_nodes():
        if node.name in wanted:
            for tensor, filler in fills.get(node.name, ()):
                fill(tensor, filler, generator)


def load_weights(
    graph: Graph,
    path: PathLike,
    *,
    strict: bool = True,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    fills: Fills | None = None,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Copy the blobs of ``path`` into the graph's layers; return the caffemodel layers (with blobs)
    that match no layer of the graph.

    Layers that need blobs and find none are an error with ``strict`` (else they keep their
    fillers: the deferred ``fills`` are run for them, with a warning).
    """
    if graph.removed:
        raise CaffemodelError(
            f"{path}: cannot load weights into a net after passes removed layers ({', '.join(graph.removed)}); "
            "load the weights first (caffenorm.load(..., fold=True) does)"
        )
    layers = {node.name: node for node in graph.layer_nodes()}
    loaded: set[str] = set()
    unused: list[str] = []
    entries = io.iter_caffemodel_layers(path)
    for index, entry in enumerate(progress(entries) if progress else entries):
        layer = upgrade_layer(entry, f"{path}: layer entry {index}")
        if not len(layer.blobs):
            continue
        node = layers.get(layer.name)
        if node is None:
            unused.append(layer.name)
            continue
        arrays = [io.blob_to_array(b, f"{path}: layer {node.name!r} blob {i}") for i, b in enumerate(layer.blobs)]
        del layer, entry  # one layer's blobs in memory at a time
        try:
            node.module.load_caffe_blobs(arrays)
        except BlobError as err:
            raise BlobError(f"weights from {path}: {err}", location=node.location) from None
        loaded.add(node.name)
    missing = [name for name, node in layers.items() if node.module.caffe_blobs() and name not in loaded]
    if fills is not None:
        run_fills(graph, missing, fills, generator or torch.Generator())
    if missing and unused and not loaded:
        # Not a few renamed layers: nothing matches, so the two files do not belong together.
        message = (
            f"none of the {len(unused)} weighted layers of {path} ({summarize(unused, 3)}) match a layer of "
            f"{graph.source} (which needs weights for {summarize(missing, 3)}): is it the right caffemodel?"
        )
        if strict:
            raise CaffemodelError(message)
        warnings.warn(f"{message} All layers keep the prototxt's fillers.", stacklevel=3)
        return unused
    if missing:
        message = (
            f"has no weights for {len(missing)} layer(s) that need them: {summarize(missing)} "
            "(was it trained with a different prototxt?)"
        )
        if strict:
            raise CaffemodelError(message + "; pass strict=False to keep their fillers", location=Location(str(path)))
        warnings.warn(f"{path}: {message}; they keep the prototxt's fillers", stacklevel=3)
    if unused:
        warnings.warn(
            f"{path}: weights of {len(unused)} layer(s) match no layer of this net and are unused: {summarize(unused)} "
            "(net.unused_weights lists them all)",
            stacklevel=3,
        )
    return unused
