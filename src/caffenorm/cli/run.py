"""``caffenorm run``: run a net on images, arrays or a seeded random input and print what it found:
detections (in the pixels of the user's images), top classes, or a summary of other blobs;
optionally save them (``--output``), draw them (``--draw``) and compare with OpenCV dnn."""

from __future__ import annotations

import argparse
import glob
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from caffenorm.cli._common import UsageError, load_net, model_args, say, table

__all__ = ["cmd_run"]

DEFAULT_THRESHOLD = 0.5
DEFAULT_TOP = 5


@dataclass
class Feed:
    """One input of the net: the array, where it came from, and (for images) the pictures."""

    name: str
    array: np.ndarray
    source: str
    files: list[str] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)  # as read (BGR uint8), for --draw
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (height, width) of each picture
    notes: list[str] = field(default_factory=list)


def _expand(entries: Sequence[str]) -> list[Path]:
    """``--input`` entries as files: existing paths as given, glob patterns expanded (sorted)."""
    files: list[Path] = []
    for entry in entries:
        if Path(entry).exists() or not any(c in entry for c in "*?["):
            files.append(Path(entry))
            continue
        matches = sorted(glob.glob(entry))
        if not matches:
            raise UsageError(f"--input {entry!r} matches no file")
        files += [Path(m) for m in matches]
    return files


def _npy_feed(name: str, files: Sequence[Path], args: argparse.Namespace) -> Feed:
    from caffenorm.errors import InputShapeError, ModelFileError

    if args.mean is not None or args.scale is not None:
        raise UsageError("--mean and --scale apply to images; a .npy array is fed to the net as it is")
    arrays = []
    for path in files:
        if not path.is_file():
            raise ModelFileError(f"{path}: no such input file")
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, TypeError, EOFError) as err:
            raise ModelFileError(f"{path}: not a numeric .npy array: {err}") from None
        if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise ModelFileError(f"{path}: expected an array of real numbers, got {getattr(array, 'dtype', array)}")
        arrays.append(np.asarray(array, dtype=np.float32))
    if len(arrays) > 1:
        if len({a.shape[1:] for a in arrays}) > 1 or any(a.ndim == 0 for a in arrays):
            shapes = ", ".join(f"{p.name} {a.shape}" for p, a in zip(files, arrays))
            raise InputShapeError(f"the .npy inputs are stacked along the batch axis and must agree in the "
                                  f"other dimensions: {shapes}")
        array = np.concatenate(arrays)
    else:
        array = arrays[0]
    return Feed(name, array, ", ".join(p.name for p in files), files=[str(p) for p in files])


def _image_feed(name: str, files: Sequence[Path], shape: Sequence[int] | None, args: argparse.Namespace) -> Feed:
    from caffenorm.errors import ModelFileError
    from caffenorm.transform import Transform, load_image, transform_image

    if shape is None or len(shape) != 4 or None in shape:
        raise UsageError(f"input {name!r} has no declared N,C,H,W shape to resize images to; pass "
                         f"--input-shape {name}=1,3,H,W")
    channels, height, width = int(shape[1]), int(shape[2]), int(shape[3])
    if channels not in (1, 3):
        raise UsageError(f"input {name!r} takes {channels} channels; images give 1 (gray) or 3 (BGR): pass a .npy")
    mean = args.mean or [0.0]
    if len(mean) not in (1, channels):
        raise UsageError(f"--mean has {len(mean)} values; input {name!r} has {channels} channel(s): give 1 or "
                         f"{channels} values (BGR order, e.g. 104,117,123)")
    scale = 1.0 if args.scale is None else args.scale
    # As Caffe's tools (ReadImageToCVMat, cpp_classification): BGR uint8 (gray for a 1-channel
    # net), resized to the input's H x W with INTER_LINEAR, then (pixel - mean) * scale.
    transform = Transform(size=(height, width), mean=tuple(mean), scale=scale)
    feed = Feed(name, np.empty(0), "")
    batch = []
    for path in files:
        image = load_image(path, color=channels == 3)
        feed.files.append(str(path))
        feed.images.append(image)
        feed.sizes.append((int(image.shape[0]), int(image.shape[1])))
        what = _stored_channels(path)
        change = []
        if channels == 3 and what == 1:
            change.append("gray -> 3 channels (BGR)")
        elif channels == 1 and what != 1:
            change.append("color -> gray")
        elif what == 4:
            change.append("alpha dropped")
        if (image.shape[0], image.shape[1]) != (height, width):
            change.append(f"resized {image.shape[1]}x{image.shape[0]} -> {width}x{height} (stretched, INTER_LINEAR)")
        feed.notes.append(f"{path.name}: " + ("; ".join(change) if change else f"{width}x{height}, as is"))
        try:
            batch.append(transform_image(transform, image))
        except ValueError as err:
            raise ModelFileError(f"{path}: {err}") from None
    feed.array = np.stack(batch)
    steps = []
    if any(mean):
        steps.append(f"minus mean {','.join(f'{m:g}' for m in mean)}")
    if scale != 1:
        steps.append(f"times {scale:g}")
    feed.source = f"{len(files)} image(s), BGR" + (f", {', '.join(steps)}" if steps else "")
    return feed


def _stored_channels(path: Path) -> int:
    """How many channels the file itself has (to say when it is converted)."""
    import cv2

    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return 0 if raw is None else 1 if raw.ndim == 2 else int(raw.shape[2])


def _random_feed(name: str, shape: Sequence[int] | None, seed: int, index: int) -> Feed:
    if shape is None or None in shape:
        raise UsageError(f"input {name!r} has no declared shape; pass --input-shape {name}=N,C,H,W or --input FILE")
    _check_memory(int(np.prod([int(d) for d in shape], dtype=object)) * 4, f"the random input {name!r} {tuple(shape)}")
    rng = np.random.default_rng(seed + index)
    return Feed(name, rng.standard_normal(tuple(shape), dtype=np.float32), f"random normal, seed {seed + index}")


def _check_memory(nbytes: int, what: str) -> None:
    from caffenorm.caffe.memory import check_allocation

    check_allocation(nbytes, what)


def _feeds(net: Any, args: argparse.Namespace) -> list[Feed]:
    files = _expand(args.input)
    first = net.inputs[0] if net.inputs else None
    feeds = []
    if not files and (args.mean is not None or args.scale is not None):
        raise UsageError("--mean and --scale apply to --input images; without --input the input is random")
    for index, name in enumerate(net.inputs):
        shape = net.input_shapes[name]
        if files and name == first:
            kinds = {p.suffix.lower() == ".npy" for p in files}
            if len(kinds) > 1:
                raise UsageError("--input mixes .npy arrays and images; give one kind")
            if kinds == {True}:
                feeds.append(_npy_feed(name, files, args))
            else:
                feed = _image_feed(name, files, shape, args)
                if shape is not None and shape[0] != len(files):
                    feed.notes.append(f"batch {len(files)} (the net declares {shape[0]})")
                feeds.append(feed)
        else:
            feeds.append(_random_feed(name, shape, args.seed, index))
    if files and len(net.inputs) > 1:
        say(f"(--input feeds {first!r}; the net's other inputs {net.inputs[1:]} get random data)")
    return feeds


# -- what the outputs mean -------------------------------------------------------------------------


def _kind(net: Any, name: str, value: np.ndarray) -> str:
    """"detections" (a DetectionOutput top), "classes" (N x C scores) or "blob"."""
    if _node_type(net, name) == "DetectionOutput":
        return "detections"
    if value.ndim >= 2 and value.shape[0] >= 1 and value.shape[1] > 1 and all(d == 1 for d in value.shape[2:]):
        return "classes"
    return "blob"


def _blob_summary(value: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"shape": list(value.shape)}
    if value.size:
        finite = value[np.isfinite(value)]
        out.update(min=float(value.min()), max=float(value.max()), mean=float(value.mean()))
        if finite.size != value.size:
            out["non_finite"] = int(value.size - finite.size)
    return out


def _labels(args: argparse.Namespace) -> dict[int, str] | None:
    from caffenorm.results import read_labels

    return None if args.labels is None else read_labels(args.labels)


def _image_name(feed: Feed | None, i: int) -> str:
    if feed is not None and i < len(feed.files) and feed.images:
        return Path(feed.files[i]).name
    return f"#{i}"


def _report_outputs(net: Any, outputs: dict[str, np.ndarray], feed: Feed | None, args: argparse.Namespace,
                    labels: dict[int, str] | None) -> tuple[dict[str, Any], list[Any]]:
    from caffenorm.results import classifications, detections

    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    top = DEFAULT_TOP if args.top is None else args.top
    results: dict[str, Any] = {}
    found_all: list[Any] = []
    kinds = set()
    for name, value in outputs.items():
        kind = _kind(net, name, value)
        kinds.add(kind)
        entry: dict[str, Any] = {"kind": kind, "shape": list(value.shape)}
        if kind == "detections":
            h, w = 0, 0
            sizes = feed.sizes if feed is not None and feed.images else None
            if sizes is None:
                array = feed.array if feed is not None else None
                h, w = (array.shape[2], array.shape[3]) if array is not None and array.ndim == 4 else (1, 1)
            found = detections(value, sizes or (int(h), int(w)), threshold, labels)
            found_all += found
            rows = value.reshape(-1, 7)
            kept = int((rows[:, 1] >= 0).sum())
            entry.update(rows=int(rows.shape[0]), threshold=threshold,
                         detections=[{**d.as_dict(), "file": _image_name(feed, d.image)} for d in found])
            where = "pixels of each image" if sizes else ("pixels of the input" if h > 1 else "relative units")
            say(f"{name}: {len(found)} detection(s) with score >= {threshold:g} (of {kept} rows the layer kept); "
                f"boxes in {where}")
            if found:
                say(table([[_image_name(feed, d.image), d.name or str(d.label), f"{d.score:.4f}",
                            *(f"{v:.1f}" for v in d.box)] for d in found],
                          ["image", "class", "score", "xmin", "ymin", "xmax", "ymax"]))
        elif kind == "classes":
            best = classifications(value, top, labels)
            entry["top"] = [c.as_dict() for c in best]
            say(f"{name}: shape {tuple(value.shape)}, top {min(top, value.shape[1])} per image")
            say(table([[_image_name(feed, c.image), str(c.rank + 1), str(c.label), c.name or "", f"{c.score:.6g}"]
                       for c in best], ["image", "rank", "class", "name", "score"]))
            if labels is not None and len(labels) != value.shape[1]:
                warnings.warn(f"--labels {args.labels} names {len(labels)} classes; {name!r} has {value.shape[1]}")
        else:
            entry.update(_blob_summary(value))
            if not value.size:
                say(f"{name}: shape {tuple(value.shape)}, empty")
            else:
                extra = f", {entry['non_finite']} non-finite" if "non_finite" in entry else ""
                say(f"{name}: shape {tuple(value.shape)}, min {entry['min']:.6g}, max {entry['max']:.6g}, "
                    f"mean {entry['mean']:.6g}{extra}; first values {np.array2string(value.ravel()[:6], precision=5)}")
        results[name] = entry
    if args.threshold is not None and "detections" not in kinds:
        warnings.warn("--threshold applies to detections; this net has no DetectionOutput output")
    if args.top is not None and "classes" not in kinds:
        warnings.warn("--top applies to class scores; no output of this net is N x C scores")
    if labels is not None and not kinds & {"detections", "classes"}:
        warnings.warn("--labels names classes; no output of this net has classes")
    return results, found_all


def _draw(feed: Feed | None, found: list[Any], path: str) -> list[str]:
    from caffenorm.results import draw_detections

    assert feed is not None and feed.images  # checked before running
    out = Path(path)
    written = []
    for i, image in enumerate(feed.images):
        target = out if len(feed.images) == 1 else out.with_name(f"{out.stem}-{i}{out.suffix}")
        draw_detections(image, [d for d in found if d.image == i], target)
        written.append(str(target))
    return written


def _check_options(net: Any, args: argparse.Namespace, feeds: list[Feed]) -> None:
    detects = any(_node_type(net, name) == "DetectionOutput" for name in net.outputs)
    if args.draw is not None:
        if not detects:
            raise UsageError("--draw draws detections; this net has no DetectionOutput output")
        if not feeds or not feeds[0].images:
            raise UsageError("--draw needs image inputs (--input IMAGE ...)")
    if args.report is not None and args.compare is None:
        raise UsageError("--report writes the parity report of --compare opencv; add --compare opencv")


def _node_type(net: Any, blob: str) -> str:
    """The type of the layer that last writes ``blob`` ("" for an input)."""
    try:
        return str(net.graph.nodes[net.graph.last_write(blob)[0]].type)
    except KeyError:
        return ""


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    proto, weights = model_args(args)
    if args.compare == "opencv" and weights is None:
        raise UsageError("--compare opencv needs a caffemodel")
    if args.output is not None and Path(args.output).suffix.lower() not in (".npz", ".json"):
        raise UsageError(f"--output {args.output}: give FILE.npz (the output blobs) or FILE.json (the results)")
    labels = _labels(args)
    net = load_net(args, proto, weights)
    if weights is None:
        say("(no caffemodel: weights come from the prototxt's fillers)")
    feeds = _feeds(net, args)
    _check_options(net, args, feeds)
    for feed in feeds:
        say(f"input {feed.name}: shape {feed.array.shape} ({feed.source})")
        for note in feed.notes:
            say(f"  {note}")
    if args.device is not None:
        net.to(args.device)
    with torch.no_grad():
        out = net(**{f.name: torch.from_numpy(f.array).to(args.device or "cpu") for f in feeds})
    outputs = {name: value.detach().float().cpu().numpy() for name, value in out.items()}
    image_feed = feeds[0] if feeds else None
    results, found = _report_outputs(net, outputs, image_feed, args, labels)
    document: dict[str, Any] = {
        "model": str(proto), "weights": None if weights is None else str(weights),
        "device": str(args.device or "cpu"),
        "inputs": {f.name: {"shape": list(f.array.shape), "source": f.source, "files": f.files, "notes": f.notes}
                   for f in feeds},
        "outputs": results,
    }
    if args.draw is not None:
        for path in _draw(image_feed, found, args.draw):
            say(f"wrote {path}")
    status = 0
    if args.compare == "opencv":
        if args.device is not None and args.device.type != "cpu":
            net.to("cpu")
        status, document["compare"] = _compare(net, proto, weights, {f.name: f.array for f in feeds}, args.report)
    if args.output is not None:
        _write_output(Path(args.output), outputs, document)
    if args.json:
        print(json.dumps(document, indent=2))
    return status


def _write_output(path: Path, outputs: dict[str, np.ndarray], document: dict[str, Any]) -> None:
    from caffenorm.errors import ModelFileError

    try:
        if path.suffix.lower() == ".npz":
            np.savez(path, **outputs)
        else:
            path.write_text(json.dumps(document, indent=2) + "\n")
    except OSError as err:
        raise ModelFileError(f"--output {path}: cannot write: {err.strerror or err}") from None
    say(f"wrote {path}")


def _compare(net: Any, proto: Path, weights: Path | None, inputs: dict[str, np.ndarray],
             report: str | None) -> tuple[int, dict[str, Any]]:
    """Run OpenCV dnn on the same inputs; print the layer table with causes and what follows from
    them; write the HTML report.  The exit status stays 0: a difference is a finding, not an error
    (the JSON document and the report say which layers differ and why)."""
    from caffenorm.caffe.compare import compare_with_opencv
    from caffenorm.caffe.report import write_parity_html

    parity = compare_with_opencv(net, proto, weights, inputs)
    say("")
    say(parity.text())
    if report is not None:
        say(f"wrote {write_parity_html(parity, report, title=f'{proto.name}: caffenorm vs OpenCV dnn')}")
    return 0, parity.to_dict()
