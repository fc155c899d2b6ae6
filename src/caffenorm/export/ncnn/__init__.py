"""ncnn export: a :class:`caffenorm.Net` written as an ncnn model (``.param`` + ``.bin``) made of
ncnn's native layers, each computing exactly what the Caffe layer computes, and checked in the
``ncnn`` Python package.

One emitter per layer module class (:mod:`caffenorm.export.ncnn._registry`), grouped by family
(:mod:`~caffenorm.export.ncnn.norm`, ``conv``, ``pooling``, ``inner_product``, ``activation``,
``eltwise``, ``shape``, ``detection``, ``input``); :func:`mapping_table` lists what each layer
becomes.  A layer ncnn cannot compute exactly is refused with the reason, never approximated;
SSD's DetectionOutput is caffenorm's custom layer ``CaffeDetectionOutput``
(:func:`register_custom_layers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from caffenorm.errors import ExportError
from caffenorm.export.ncnn._convert import convert
from caffenorm.export.ncnn._families import mapping_table
from caffenorm.export.ncnn._runtime import NcnnRunner, check_ncnn, defaults_note, import_ncnn
from caffenorm.export.ncnn._writer import finalize, write_bin, write_param
from caffenorm.export.ncnn.custom_layers import register_custom_layers
from caffenorm.export.verify import ExportReport, example_inputs

__all__ = ["NcnnRunner", "check_ncnn", "mapping_table", "register_custom_layers", "to_ncnn"]


def to_ncnn(
    net: Any,
    param_path: str | Path,
    bin_path: str | Path | None = None,
    *,
    verify: bool = True,
    batch_sizes: Sequence[int] = (1,),
    seed: int = 0,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> ExportReport:
    """Write ``net`` as an ncnn model and check it in ncnn.

    The graph (``net.graph``: its nodes, their modules' current settings and blobs; never the
    prototxt) becomes ncnn layers (:func:`mapping_table`): Caffe's LRN (both regions), BatchNorm
    (stored statistics, alone or fused with its Scale), Scale, Bias, Normalize, convolutions,
    pooling (Caffe's rounding, drop rule and border divisors), InnerProduct, the activations,
    Softmax, Eltwise, the shape layers and PriorBox; SSD's DetectionOutput becomes caffenorm's
    custom layer ``CaffeDetectionOutput`` (:mod:`~caffenorm.export.ncnn.custom_layers`: an ncnn
    net must register it before ``load_param``; rows ``[label, score, xmin, ymin, xmax, ymax]``
    per image).  ncnn has no batch axis: a Caffe blob
    ``(N, C, H, W)`` is an ncnn ``(C, H, W)`` image and Caffe axis ``a`` is ncnn axis ``a - 1``;
    layers working across the batch axis are refused.  Every value gets its own blob name, the
    last value of each Caffe blob its Caffe name, and a value read several times an ncnn Split.

    Verification (``verify=True``): seeded standard-normal inputs of the declared shapes, one run
    per batch size in ``batch_sizes``.  ncnn runs one image at a time, so each image of a batch
    is run through ncnn on its own and compared with its slice of caffenorm's eager result for
    the whole batch (e.g. ``batch_sizes=(1, 2)``: one image, then each image of a batch of 2).
    ncnn runs with fp16 storage/arithmetic, bf16 and the packed layout off; every output and
    every blob that keeps its Caffe name must agree within ``atol + rtol * max|value|``.  The same
    images are then run with ncnn's default options (fp16 where the CPU supports it) and the
    largest difference is put in ``report.notes`` without failing on it.

    Args:
        net: the net to export (evaluation mode: BatchNorm with stored statistics, no Dropout).
        param_path: the ``.param`` file to write.
        bin_path: the ``.bin`` file to write.  Default: ``param_path`` with suffix ``.bin``
        verify: run the check (needs ``pip install caffenorm[ncnn]``).  Default: True
        batch_sizes: the batch sizes to check, image by image.  Default: (1,)
        seed: seed of the check's inputs.  Default: 0
        rtol, atol: the check's tolerance.  Defaults: 1e-4, 1e-5

    Returns:
        An :class:`~caffenorm.export.ExportReport`: the files, the checks, and notes (mappings
        that needed care; the error with ncnn's default options).

    Raises:
        ExportError: a layer without an exact ncnn mapping (named, with the reason), a missing
            ``ncnn`` package (with ``verify=True``), or a blob on which ncnn disagrees with caffenorm (the first one).
            A DetectionOutput is compared with caffenorm's rows for the image alone; where float
            noise upstream changes them end to end, it is checked on ncnn's own bottoms and the
            report's notes give both row counts.
    """
    param_path = Path(param_path)
    bin_path = Path(bin_path) if bin_path is not None else param_path.with_suffix(".bin")
    if any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes={tuple(batch_sizes)!r}: give positive ints")
    ncnn = import_ncnn() if verify else None  # before anything is written
    model = convert(net)
    layers = finalize(model)
    write_param(layers, param_path)
    write_bin(layers, bin_path)
    runtime = "ncnn" if ncnn is None else (
        f"the ncnn Python package {getattr(ncnn, '__version__', '?')} (fp16/bf16 storage, fp16 arithmetic and packed layout off)"
    )
    report = ExportReport("ncnn", (str(param_path), str(bin_path)), runtime, rtol, atol, notes=list(model.notes))
    report.notes += [
        f"blob {caffe!r} is {ncnn_name!r} in ncnn (the input keeps the name {caffe!r})"
        for ncnn_name, caffe in model.aliases.items()
    ]
    if not verify:
        report.notes.append("not checked (verify=False)")
        return report
    batches = [example_inputs(net.input_shapes, batch, seed) for batch in batch_sizes]
    report.checks, runs = check_ncnn(
        net, param_path, bin_path, batches, rtol=rtol, atol=atol, aliases=model.aliases, notes_out=report.notes
    )
    if not report.checks:
        raise ExportError("the ncnn model has no blob to compare with caffenorm (no output keeps its name)")
    report.notes.append(defaults_note(param_path, bin_path, runs, list(net.outputs)))
    report.raise_for_mismatch()
    return report
