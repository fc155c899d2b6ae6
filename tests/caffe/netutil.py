"""Helpers for tests that build small Caffe nets: write prototxt + caffemodel files, and run them
in OpenCV dnn 4.x (the independent peer)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from caffenorm.caffe import io, schema


def write_model(
    directory: Path, prototxt: str, weights: Mapping[str, Sequence[np.ndarray]] | None = None, name: str = "net"
) -> tuple[Path, Path]:
    """Write ``prototxt`` and a caffemodel holding ``weights`` (layer name -> blobs in Caffe order).

    The caffemodel repeats each layer's definition, as Caffe's own snapshots do.
    """
    definition, _ = io.parse_prototxt(prototxt)
    proto_path, model_path = Path(directory) / f"{name}.prototxt", Path(directory) / f"{name}.caffemodel"
    proto_path.write_text(prototxt)
    model = schema.NetParameter(name=definition.name)
    known = {layer.name for layer in definition.layer}
    missing = set(weights or {}) - known
    if missing:
        raise KeyError(f"weights for unknown layers {missing}")
    for layer in definition.layer:
        entry = model.layer.add()
        entry.CopyFrom(layer)
        for array in (weights or {}).get(layer.name, ()):
            io.array_to_blob(np.asarray(array, dtype=np.float32), entry.blobs.add())
    model_path.write_bytes(model.SerializeToString())
    return proto_path, model_path


def opencv_forward(
    prototxt: Path, caffemodel: Path | None, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
) -> dict[str, np.ndarray]:
    """Run OpenCV dnn 4.x on CPU with layer fusion off, returning the named layers' outputs."""
    import cv2

    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel)) if caffemodel else cv2.dnn.readNetFromCaffe(str(prototxt))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableFusion(False)
    net.enableWinograd(False)  # OpenCV's Winograd 3x3 convolutions lose ~5e-6 of the output range
    for name, value in inputs.items():
        net.setInput(np.ascontiguousarray(value, dtype=np.float32), name)
    results = net.forward(list(outputs))
    return {name: np.asarray(r) for name, r in zip(outputs, results)}
