"""Carrying a :class:`caffenorm.Net` into the runtimes people deploy to, exactly: ONNX (checked in
onnxruntime) and ncnn (checked in the ``ncnn`` package).  Exporters read the net's graph and its
modules, never the prototxt; every export verifies itself (:mod:`caffenorm.export.verify`).

The runtimes are optional dependencies (``pip install caffenorm[onnx]`` / ``caffenorm[ncnn]``),
imported only when an export runs.
"""

from __future__ import annotations

from typing import Any

from caffenorm.export.verify import BlobCheck, ExportReport

__all__ = ["BlobCheck", "ExportReport", "to_ncnn", "to_onnx"]


def to_onnx(net: Any, path: Any, **kwargs: Any) -> ExportReport:
    """Write ``net`` as an ONNX model and check it in onnxruntime; see
    :func:`caffenorm.export.onnx.to_onnx`."""
    from caffenorm.export.onnx import to_onnx as export

    return export(net, path, **kwargs)


def to_ncnn(net: Any, param_path: Any, bin_path: Any = None, **kwargs: Any) -> ExportReport:
    """Write ``net`` as an ncnn model (``.param`` + ``.bin``) and check it in ncnn; see
    :func:`caffenorm.export.ncnn.to_ncnn`."""
    from caffenorm.export.ncnn import to_ncnn as export

    return export(net, param_path, bin_path, **kwargs)
