"""Running a written ncnn model in the ``ncnn`` Python package and checking it against caffenorm.

ncnn runs one image at a time (its blobs have no batch axis), so a batch is checked image by
image: each image of the input goes through ncnn on its own and is compared with its slice of
caffenorm's result for the whole batch (a blob without a batch axis, such as PriorBox's boxes,
is compared whole).

The check runs with ncnn's fp16 storage and arithmetic, bf16 storage and the packed layout off,
so ncnn computes in float32 like caffenorm and any difference beyond float rounding is a mapping
error.  The same inputs are then run with ncnn's default options (fp16 where the CPU has it) and
the largest difference is reported without failing on it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from caffenorm.errors import ExportError
from caffenorm.export.ncnn.custom_layers import CAFFE_DETECTION_OUTPUT, detection_rows, register_custom_layers
from caffenorm.export.verify import BlobCheck, compare_blobs, run_eager

__all__ = ["EXACT_OPTIONS", "NcnnRunner", "check_ncnn", "image_detections", "import_ncnn", "param_blobs", "param_layers"]

# ncnn Option fields set for the exact check (everything else keeps ncnn's default).
EXACT_OPTIONS: dict[str, bool] = {
    "use_fp16_storage": False,
    "use_fp16_arithmetic": False,
    "use_fp16_packed": False,
    "use_bf16_storage": False,
    "use_bf16_packed": False,
    "use_packing_layout": False,
}


def import_ncnn() -> Any:
    """The ``ncnn`` module, or an :class:`~caffenorm.ExportError` saying how to install it."""
    try:
        import ncnn
    except ImportError as err:
        raise ExportError(
            "checking an ncnn export needs the ncnn Python package: pip install caffenorm[ncnn] "
            "(or pass verify=False to only write the files)"
        ) from err
    return ncnn


def param_layers(param_path: str | Path) -> list[tuple[str, list[str], list[str]]]:
    """``(layer type, bottom names, top names)`` of every layer of an ncnn ``.param`` file, in order."""
    lines = Path(param_path).read_text().splitlines()
    layers = []
    for line in lines[2:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        nbottom, ntop = int(fields[2]), int(fields[3])
        layers.append((fields[0], fields[4 : 4 + nbottom], fields[4 + nbottom : 4 + nbottom + ntop]))
    return layers


def param_blobs(param_path: str | Path) -> list[tuple[str, list[str]]]:
    """``(layer type, top names)`` of every layer of an ncnn ``.param`` file, in order."""
    return [(kind, tops) for kind, _, tops in param_layers(param_path)]


class NcnnRunner:
    """An ncnn net loaded from ``param_path`` / ``bin_path``; ``exact`` turns off ncnn's reduced
    precision and packed layout (:data:`EXACT_OPTIONS`)."""

    def __init__(self, param_path: str | Path, bin_path: str | Path, *, exact: bool = True) -> None:
        self.ncnn = import_ncnn()
        self.net = self.ncnn.Net()
        # One thread: the check is small, and OpenMP threads spinning against other processes on a
        # busy machine cost more than they bring (open_nsfw: 1.0 s against 2.1 s with 2 threads).
        self.net.opt.num_threads = 1
        register_custom_layers(self.net)
        if exact:
            for option, value in EXACT_OPTIONS.items():
                setattr(self.net.opt, option, value)
        if self.net.load_param(str(param_path)) != 0:
            raise ExportError(f"ncnn could not read {param_path}")
        if self.net.load_model(str(bin_path)) != 0:
            raise ExportError(f"ncnn could not read {bin_path} (weights of another .param?)")
        self.inputs = set(self.net.input_names())

    def mat(self, value: np.ndarray) -> Any:
        """``value`` as an ncnn Mat laid out as ncnn lays out its own: each channel starting at a
        16-byte boundary.  ``ncnn.Mat(array)`` wraps the array with channels back to back, and
        some x86 kernels (Slice along channels, the grouped convolutions' per-group views) copy
        channel ranges assuming the aligned layout, so such an input gives wrong values;
        ``clone()`` re-lays it out."""
        return self.ncnn.Mat(np.ascontiguousarray(value, dtype=np.float32)).clone()

    def run(self, feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        """Feed one image (per-image arrays, no batch axis) and return the named blobs."""
        extractor = self.net.create_extractor()
        extractor.set_light_mode(False)  # keep every blob: all of them are read back
        for name, value in feeds.items():
            if _ncnn_name(name) in self.inputs:  # e.g. a data layer's labels are not exported
                extractor.input(_ncnn_name(name), self.mat(value))
        out = {}
        for name in names:
            ret, mat = extractor.extract(name)
            if ret != 0:
                raise ExportError(f"ncnn failed to compute blob {name!r} (extract returned {ret})")
            out[name] = np.array(mat, dtype=np.float32, copy=True)
        return out


def _ncnn_name(name: str) -> str:
    return re.sub(r"\s", "_", name) or "_"


def _image(value: np.ndarray, image: int, batch: int, size: int) -> np.ndarray:
    """Image ``image``'s part of caffenorm's blob for the batch, or the whole blob when it has no
    batch axis (its size is one image's)."""
    if value.ndim and value.shape[0] == batch and value[image].size == size and value.size != size:
        return value[image]
    if batch == 1 and value.ndim and value.shape[0] == 1:
        return value[0]
    return value


def image_detections(rows: np.ndarray, image: int) -> np.ndarray:
    """Caffe's DetectionOutput rows ``(1, 1, R, 7)`` for a batch, as ``CaffeDetectionOutput`` gives
    them for image ``image`` alone: its rows without the image column, or the single row of -1
    Caffe writes for a batch of one image that keeps nothing."""
    table = np.asarray(rows, dtype=np.float32).reshape(-1, 7)
    mine = table[(table[:, 0] == image) & (table[:, 1] != -1)][:, 1:]
    return mine if len(mine) else np.full((1, 6), -1.0, dtype=np.float32)


def compared_blobs(
    param_path: str | Path, eager_names: Sequence[str], aliases: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """``(ncnn name, caffenorm name)`` of the ncnn blobs that hold a caffenorm blob's last value
    (by name, or by ``aliases``: ncnn name -> caffenorm name), inputs excluded, in ncnn's order."""
    known = set(eager_names)
    aliases = aliases or {}
    pairs = []
    for layer_type, tops in param_blobs(param_path):
        if layer_type == "Input":
            continue
        for top in tops:
            name = aliases.get(top, top)
            if name in known:
                pairs.append((top, name))
    return pairs


def check_ncnn(
    net: Any,
    param_path: str | Path,
    bin_path: str | Path,
    batches: Sequence[Mapping[str, np.ndarray]],
    *,
    rtol: float,
    atol: float,
    aliases: Mapping[str, str] | None = None,
    runner: NcnnRunner | None = None,
    notes_out: list[str] | None = None,
) -> tuple[list[BlobCheck], list[tuple[dict[str, np.ndarray], dict[str, str], dict[str, np.ndarray]]]]:
    """Compare the ncnn model with ``net`` on each batch of ``batches`` (name -> ``(N, ...)``
    arrays), image by image, on every blob that keeps its name (or is in ``aliases``, ncnn name ->
    caffenorm name) and every output.

    Returns the checks (batch by batch, image by image, blobs in ncnn's order, named as in
    caffenorm) and, for each image, ``(its feeds, ncnn name -> caffenorm name, caffenorm's blobs)``.

    A ``CaffeDetectionOutput`` top is compared with caffenorm's rows for that image alone
    (:func:`image_detections`); where those differ end to end, it is checked on ncnn's own bottoms
    and ``notes_out`` (when given) says how many rows each side had."""
    runner = runner or NcnnRunner(param_path, bin_path, exact=True)
    every = [(aliases or {}).get(top, top) for _, tops in param_blobs(param_path) for top in tops]
    # CaffeDetectionOutput tops (caffenorm name) -> the ncnn names of their bottoms.
    detections = {
        (aliases or {}).get(tops[0], tops[0]): bottoms
        for kind, bottoms, tops in param_layers(param_path)
        if kind == CAFFE_DETECTION_OUTPUT
    }
    checks: list[BlobCheck] = []
    runs = []
    for inputs in batches:
        batch = int(next(iter(inputs.values())).shape[0])
        eager = run_eager(net, inputs, every)
        pairs = compared_blobs(param_path, list(eager), aliases)
        names = [caffe for _, caffe in pairs]
        extra = list(dict.fromkeys(b for name, bottoms in detections.items() if name in names for b in bottoms))
        for image in range(batch):
            feeds = {k: v[image] for k, v in inputs.items()}
            out = runner.run(feeds, list(dict.fromkeys([ncnn_name for ncnn_name, _ in pairs] + extra)))
            got = {caffe: out[ncnn_name] for ncnn_name, caffe in pairs}
            want = {
                name: image_detections(eager[name], image) if name in detections else _image(eager[name], image, batch, got[name].size)
                for name in names
            }
            notes = {name: f"image {image} of {batch}" for name in names} if batch > 1 else {}
            for name in names:
                if name in detections and not _rows_agree(want[name], got[name], rtol, atol):
                    # Float noise upstream (~1e-5 in ncnn) can swap nearly equal scores or move one
                    # across the threshold: the layer is checked on ncnn's own bottoms; end to end
                    # is reported.
                    if notes_out is not None:
                        notes_out.append(
                            f"{name}, image {image} of {batch}: end to end {len(got[name])} rows, caffenorm eager "
                            f"{len(want[name])} (scores differing by float noise upstream reorder or cut rows); "
                            "checked against caffenorm's DetectionOutput on ncnn's own bottoms"
                        )
                    settings = _detection_settings(net, name)
                    want[name] = detection_rows(settings, *(out[b] for b in detections[name]))
                    notes[name] = "; ".join(filter(None, (notes.get(name), "on ncnn's own bottoms")))
            checks += compare_blobs(want, got, names, batch, rtol, atol, notes or None)
            runs.append((feeds, dict(pairs), want))
    return checks, runs


def _rows_agree(want: np.ndarray, got: np.ndarray, rtol: float, atol: float) -> bool:
    if want.size != got.size:
        return False
    (check,) = compare_blobs({"rows": want}, {"rows": got}, ["rows"], 1, rtol, atol)
    return check.ok


def _detection_settings(net: Any, top: str) -> dict[str, Any]:
    """The settings of the DetectionOutput layer of ``net`` writing ``top``."""
    from caffenorm.caffe.layers.detection import DetectionOutput

    for node in net.graph.nodes:
        if node.tops and node.tops[0] == top and isinstance(node.module, DetectionOutput):
            return dict(node.module.settings())
    raise ExportError(f"internal: no DetectionOutput layer writes {top!r}")


def defaults_note(
    param_path: str | Path,
    bin_path: str | Path,
    runs: Sequence[tuple[dict[str, np.ndarray], dict[str, str], dict[str, np.ndarray]]],
    outputs: Sequence[str],
) -> str:
    """Run the images of ``runs`` (from :func:`check_ncnn`) with ncnn's default options (fp16
    storage/arithmetic and the packed layout where the CPU supports them) and say how far they are
    from caffenorm: measured, not checked."""
    worst: dict[str, tuple[float, float, str]] = {}
    try:
        runner = NcnnRunner(param_path, bin_path, exact=False)
        for feeds, pairs, want in runs:
            out = runner.run(feeds, list(pairs))
            for ncnn_name, name in pairs.items():
                value = np.asarray(out[ncnn_name], dtype=np.float64).reshape(-1)
                ref = np.asarray(want[name], dtype=np.float64).reshape(-1)
                if value.size != ref.size or not ref.size:
                    continue
                diff = float(np.nanmax(np.abs(value - ref)))
                scale = float(np.abs(ref).max())
                for key in {"outputs" if name in outputs else "all", "all"}:
                    if key not in worst or diff > worst[key][0]:
                        worst[key] = (diff, scale, name)
    except ExportError as err:
        return f"with ncnn's default options (fp16 storage/arithmetic, packed layout): could not run ({err})"
    parts = [
        f"{label} {worst[key][0]:.3g} (at {worst[key][2]!r}, values up to {worst[key][1]:.3g})"
        for key, label in (("outputs", "outputs"), ("all", "all compared blobs"))
        if key in worst
    ]
    return (
        "with ncnn's default options (fp16 storage/arithmetic, packed layout; measured, not checked): "
        "max difference " + ", ".join(parts)
    )
