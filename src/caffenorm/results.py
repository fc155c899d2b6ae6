"""Reading a net's outputs as results: detections in an image's pixels, top classes, label names,
and the image with its boxes drawn.

SSD's ``DetectionOutput`` writes one row per kept box, ``[image_id, label, score, xmin, ymin, xmax,
ymax]``, with corners relative to the image the net saw (PriorBox divides by the input's width and
height), and a row ``[i, -1, ...]`` for an image with no detection (Caffe's marker).  The net sees
the photo stretched to its input size, so relative corners times the *original* width and height
undo the resize exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from caffenorm.errors import InputShapeError, ModelFileError

__all__ = [
    "Classification",
    "Detection",
    "classifications",
    "detections",
    "draw_detections",
    "read_labels",
]


@dataclass(frozen=True)
class Detection:
    """One detected box: ``image`` (index in the batch), ``label`` (class index), ``name`` (from a
    labels file, else None), ``score``, ``box`` = (xmin, ymin, xmax, ymax) in the image's pixels."""

    image: int
    label: int
    name: str | None
    score: float
    box: tuple[float, float, float, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Classification:
    """One of an image's top classes: ``image``, ``rank`` (0 = best), ``label``, ``name``, ``score``."""

    image: int
    rank: int
    label: int
    name: str | None
    score: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def detections(
    output: Any,
    image_sizes: Sequence[tuple[int, int]] | tuple[int, int],
    threshold: float = 0.5,
    labels: Mapping[int, str] | None = None,
) -> list[Detection]:
    """The rows of a ``DetectionOutput`` blob with ``score >= threshold``, boxes in pixels.

    Args:
        output: the blob, shape ``(1, 1, rows, 7)`` (a tensor or an array).
        image_sizes: ``(height, width)`` of each image of the batch as the user has it (before
            the resize to the net's input), or one size for every image.
        threshold: the lowest score kept (Caffe's ``confidence_threshold`` already applied
            inside the layer; this one is for reading).
        labels: class index -> name.

    Rows keep the layer's order (Caffe's: by image, then class, then score).  Corners are not
    clipped: Caffe's layer does not clip them either (``clip_bbox`` is off in deploy nets).
    """
    rows = np.asarray(output.detach().cpu() if hasattr(output, "detach") else output, dtype=np.float64)
    if rows.ndim != 4 or rows.shape[-1] != 7:
        raise InputShapeError(f"a DetectionOutput blob has shape (1, 1, rows, 7), got {rows.shape}")
    rows = rows.reshape(-1, 7)
    sizes = [image_sizes] if isinstance(image_sizes, tuple) and isinstance(image_sizes[0], int) else list(image_sizes)
    out = []
    for image_id, label, score, *corners in rows:
        if label < 0 or not score >= threshold:  # [i, -1, ...]: no detection in image i
            continue
        i = int(image_id)
        height, width = sizes[0] if len(sizes) == 1 else sizes[i]
        xmin, ymin, xmax, ymax = corners
        box = (xmin * width, ymin * height, xmax * width, ymax * height)
        name = None if labels is None else labels.get(int(label))
        out.append(Detection(i, int(label), name, float(score), tuple(float(v) for v in box)))  # type: ignore[arg-type]
    return out


def classifications(output: Any, top: int = 5, labels: Mapping[int, str] | None = None) -> list[Classification]:
    """The ``top`` highest scores of each sample of a classifier's output ``(N, C)`` or
    ``(N, C, 1, 1)``; ties keep the lower class first."""
    scores = np.asarray(output.detach().cpu() if hasattr(output, "detach") else output, dtype=np.float64)
    scores = scores.reshape(scores.shape[0], -1)
    out = []
    for i, row in enumerate(scores):
        for rank, label in enumerate(np.argsort(-row, kind="stable")[:top]):
            name = None if labels is None else labels.get(int(label))
            out.append(Classification(i, rank, int(label), name, float(row[label])))
    return out


def read_labels(path: str | os.PathLike[str]) -> dict[int, str]:
    """Class names from a file: an SSD ``labelmap.prototxt`` (``item { name label display_name }``;
    the display name wins) or plain text, one class per line in class order (Caffe's
    ``synset_words.txt``: the whole line is the name)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{file}: cannot read the labels file: {err}") from None
    if "item" in text and "{" in text:
        return _read_label_map(file, text)
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise ModelFileError(f"{file}: the labels file is empty; give one class name per line, in class order")
    return dict(enumerate(names))


def _read_label_map(file: Path, text: str) -> dict[int, str]:
    from google.protobuf import text_format

    from caffenorm.caffe.schema import message_class

    label_map = message_class("LabelMap")()
    try:
        text_format.Parse(text, label_map)
    except text_format.ParseError as err:
        raise ModelFileError(f"{file}: not a LabelMap prototxt ({err}); or give plain text, one name per line") from None
    names = {}
    for item in label_map.item:
        names[int(item.label)] = item.display_name or item.name or str(item.label)
    if not names:
        raise ModelFileError(f"{file}: the LabelMap has no items")
    return names


def draw_detections(image: np.ndarray, found: Sequence[Detection], path: str | os.PathLike[str]) -> None:
    """Write ``image`` (BGR ``uint8``, ``(H, W, 3)`` or gray) with each detection's box and
    "name score" drawn, to ``path`` (any format OpenCV writes: PNG, JPEG, ...)."""
    try:
        import cv2
    except ImportError:
        raise ModelFileError(f"{path}: drawing needs OpenCV: pip install 'caffenorm[opencv]'") from None
    canvas = np.ascontiguousarray(image if image.ndim == 3 and image.shape[2] == 3 else
                                  cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR))
    thick = max(1, round(max(canvas.shape[:2]) / 300))
    for d in found:
        x0, y0, x1, y1 = (round(v) for v in d.box)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), (0, 255, 0), thick)
        text = f"{d.name or d.label} {d.score:.2f}"
        scale = 0.4 * thick
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        top = max(y0, h + base + 2)  # keep the caption inside the picture
        cv2.rectangle(canvas, (x0, top - h - base - 2), (x0 + w + 2, top), (0, 255, 0), cv2.FILLED)
        cv2.putText(canvas, text, (x0 + 1, top - base - 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick,
                    cv2.LINE_AA)
    try:
        ok = cv2.imwrite(str(path), canvas)
    except cv2.error as err:
        raise ModelFileError(f"{path}: OpenCV cannot write this file: {' '.join(str(err).split())}") from None
    if not ok:
        raise ModelFileError(f"{path}: OpenCV could not write the picture (unknown extension or unwritable folder)")
