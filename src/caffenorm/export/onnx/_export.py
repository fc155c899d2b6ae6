"""``to_onnx``: a :class:`caffenorm.Net`'s graph written as an ONNX model with the ``onnx``
library, then checked (``onnx.checker`` and onnxruntime against the eager net)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import torch

from caffenorm.errors import CaffeNormError, ExportError
from caffenorm.export.onnx._context import FLOAT, ExportContext, Template, onnx_dims
from caffenorm.export.onnx._families import load_families
from caffenorm.export.onnx._registry import get_exporter
from caffenorm.export.verify import BlobCheck, ExportReport, compare_blobs, example_inputs, run_eager

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "build_model", "to_onnx"]

# See the package docstring for why 17.
DEFAULT_OPSET = 17
MIN_OPSET = 17

_INSTALL = "pip install caffenorm[onnx]"


def require(module: str) -> ModuleType:
    """Import ``module`` (onnx, onnxruntime, onnxscript) or raise an :class:`ExportError` saying how
    to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ExportError(
            f"ONNX export needs the {module!r} package, which cannot be imported ({err}); install it with: {_INSTALL}"
        ) from None


@dataclass
class BuiltModel:
    """An ONNX model built from a net's graph, and where each Caffe blob ended up.

    Attributes:
        model: the ``onnx.ModelProto`` (the file's content).
        final: Caffe blob name -> the ONNX value holding its last value (what ``net.blobs`` holds).
        outputs: net output blob -> the graph output's name (the blob's name unless that is taken).
        order: the blobs in the order their last values are produced (inputs excluded).
        templates: ONNX value -> its shape template.
        notes: things the export wants the user to know.
    """

    model: Any
    final: dict[str, str]
    outputs: dict[str, str]
    order: list[str]
    templates: dict[str, Template]
    notes: list[str] = field(default_factory=list)


def build_model(net: Any, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True) -> BuiltModel:
    """Build the ONNX model of ``net`` (no file, no check): one exporter call per graph node, in
    Caffe's execution order.  Raises :class:`ExportError` naming the first layer that cannot be
    exported and why."""
    require("onnx")
    from onnx import helper

    load_families()
    graph = net.graph
    ctx = ExportContext(graph, opset, dynamic_batch)
    for i, node in enumerate(graph.nodes):
        ctx.start(i, node)
        registered = get_exporter(node.module)
        if registered is None:
            raise ctx.error(
                f"has no ONNX exporter: caffenorm has no ONNX mapping for its module "
                f"{type(node.module).__module__}.{type(node.module).__qualname__} (see "
                "caffenorm.export.onnx.mapping_table() for the layers that export)"
            )
        if registered.refuses:
            registered.fn(node, ctx)
            raise AssertionError(f"the exporter of {node.type} refuses but did not raise")  # pragma: no cover
        if not node.is_input:
            ctx.probe(node)
        registered.fn(node, ctx)
        unbound = [t for t in node.tops if t not in ctx.binding]
        if unbound:  # pragma: no cover - an exporter bug
            raise ctx.error(f"the exporter bound no ONNX value to the top(s) {unbound}")

    final = dict(ctx.binding)
    order = _blob_order(graph)
    inputs = set(graph.inputs)
    nodes, outputs_info, outputs = list(ctx.nodes), [], {}
    for blob in graph.outputs:
        value = final[blob]
        name = value
        if value != blob or value in inputs:
            # The output must carry the blob's name: alias it (a passed-through or in-place value).
            name = ctx.claim(blob) or ctx.fresh(f"{blob}_output")
            nodes.append(helper.make_node("Identity", [value], [name], name=ctx.fresh(f"{blob}/output")))
            if name != blob:
                ctx.notes.append(f"output {blob!r} is called {name!r} in the ONNX graph ({blob!r} names an input)")
        outputs[blob] = name
        outputs_info.append(helper.make_tensor_value_info(name, FLOAT, onnx_dims(ctx.templates[value])))

    graph_proto = helper.make_graph(
        nodes, _graph_name(graph), ctx.inputs, outputs_info, initializer=ctx.initializers,
    )
    opset_ids = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph_proto, opset_imports=opset_ids, producer_name="caffenorm",
                              producer_version=_version())
    # The lowest IR version that carries the opset: older readers (OpenCV dnn, older runtimes) load it.
    model.ir_version = helper.find_min_ir_version_for(opset_ids)
    model.doc_string = f"Caffe net {graph.source!r} exported by caffenorm {_version()}"
    return BuiltModel(model, final, outputs, order, dict(ctx.templates), list(ctx.notes))


def _graph_name(graph: Any) -> str:
    name = getattr(graph.definition, "name", "") if graph.definition is not None else ""
    return name or "caffenorm"


def _version() -> str:
    from caffenorm import __version__

    return __version__


def _blob_order(graph: Any) -> list[str]:
    """Every blob written by a layer, in the order of its last write."""
    last: dict[str, tuple[int, int]] = {}
    for i, node in enumerate(graph.nodes):
        if node.is_input:
            continue
        for t, top in enumerate(node.tops):
            last[top] = (i, t)
    return sorted(last, key=last.__getitem__)


def to_onnx(
    net: Any,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    verify: bool = True,
    batch_sizes: Sequence[int] = (1, 2),
    seed: int = 0,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> ExportReport:
    """Write ``net`` (a :class:`caffenorm.Net` in evaluation mode, float32) as an ONNX model at
    ``path`` and check it.

    Every layer maps to standard ONNX ops computing exactly what Caffe computes (see
    :func:`caffenorm.export.onnx.mapping_table`); a layer that cannot be mapped exactly is an
    :class:`~caffenorm.ExportError` naming it, its type and why, and nothing is written.

    Args:
        net: the net (``caffenorm.load(...)``); its graph is read, never the prototxt.
        path: the ``.onnx`` file to write.
        opset: the ONNX opset, >= 17 (default 17; see the package docstring).
        dynamic_batch: keep the batch axis of the inputs and outputs dynamic (named ``batch``);
            False fixes it at the declared input shapes' batch size.
        verify: check the file in onnxruntime (CPU, default graph optimizations on) against the
            eager net: every output and every intermediate blob (exposed as extra outputs in a
            copy of the model, not in the file), at each of ``batch_sizes`` on seeded
            standard-normal inputs.  A mismatch raises :class:`~caffenorm.ExportError` naming the
            first diverging blob (the file is left in place for inspection).
        batch_sizes: the batch sizes checked (the declared batch only, with ``dynamic_batch=False``).
        seed: seed of the inputs.
        rtol, atol: a blob agrees when ``max |onnx - caffenorm| <= atol + rtol * max |caffenorm|``.

    Returns:
        :class:`~caffenorm.export.verify.ExportReport`: the file, the runtime, every check, notes.

    ``onnx.checker.check_model(full_check=True)`` always runs, and the graph's inputs must be the
    net's.  Without onnx (or, to verify, onnxruntime) an :class:`ExportError` says
    ``pip install caffenorm[onnx]``.
    """
    onnx = require("onnx")
    max_opset = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset:
        raise ExportError(
            f"opset={opset!r} is not supported; use {MIN_OPSET}..{max_opset} (the installed onnx's newest), "
            f"default {DEFAULT_OPSET}"
        )
    _check_net(net, verify)
    ort = require("onnxruntime") if verify else None  # before anything is written
    built = build_model(net, opset, dynamic_batch)
    try:
        onnx.checker.check_model(built.model, full_check=True)
    except Exception as err:  # onnx's ValidationError / InferenceError
        raise ExportError(f"the ONNX model caffenorm built fails onnx.checker (a caffenorm bug; please report): {err}") from err
    graph_inputs = [v.name for v in built.model.graph.input]
    if graph_inputs != list(net.inputs):  # pragma: no cover - a caffenorm bug
        raise ExportError(f"the ONNX graph's inputs {graph_inputs} are not the net's inputs {list(net.inputs)}")
    path = os.fspath(path)
    onnx.save(built.model, path)

    notes = [f"opset {opset}, IR version {built.model.ir_version}; " + (
        "batch axis dynamic ('batch')" if dynamic_batch else "batch fixed at the declared size")]
    notes += built.notes
    report = ExportReport(format="ONNX", files=(path,), runtime="onnxruntime (not run)", rtol=rtol, atol=atol,
                          notes=notes)
    if ort is None:
        report.notes.append("not verified (verify=False)")
        return report
    report.runtime = f"onnxruntime {ort.__version__} (CPU, graph optimizations on)"
    if dynamic_batch:
        runs = [(int(b), example_inputs(net.input_shapes, int(b), seed)) for b in batch_sizes]
    else:
        runs = [(_declared_batch(net), _declared_inputs(net, seed))]
    report.checks = _verify(net, built, path, ort, runs, rtol, atol, report.notes)
    report.notes.append(f"checked at batch size(s) {', '.join(str(b) for b, _ in runs)}, seed {seed}")
    report.raise_for_mismatch()
    return report


def _declared_batch(net: Any) -> int:
    shapes = [s for s in net.input_shapes.values() if s]
    return int(shapes[0][0]) if shapes else 1  # type: ignore[index]


def _declared_inputs(net: Any, seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs of exactly the declared shapes (each input its own batch size), for a model
    whose batch is fixed."""
    feeds: dict[str, np.ndarray] = {}
    for i, (name, shape) in enumerate(net.input_shapes.items()):
        batch = int(shape[0]) if shape else 1  # type: ignore[index]
        feeds.update(example_inputs({name: shape}, batch, seed + i))
    return feeds


def _check_net(net: Any, verify: bool) -> None:
    """What the export needs of the net: a caffenorm Net, float32, on the CPU to be verified."""
    if not hasattr(net, "graph") or not hasattr(net, "blobs"):
        raise ExportError(f"to_onnx exports a caffenorm.Net (caffenorm.load(...)), got {type(net).__name__}")
    if net.dtype != torch.float32:
        raise ExportError(f"the net computes in {net.dtype}; ONNX export writes float32: convert it with net.float()")
    if verify:
        devices = {t.device.type for t in (*net.parameters(), *net.buffers())}
        if devices - {"cpu"}:
            raise ExportError(
                f"the net is on {', '.join(sorted(devices - {'cpu'}))}; verification runs it on the CPU next to "
                "onnxruntime: move it with net.cpu() (or pass verify=False)"
            )


def _verify(
    net: Any, built: BuiltModel, path: str, ort: ModuleType, runs: Sequence[tuple[int, dict[str, np.ndarray]]],
    rtol: float, atol: float, report_notes: list[str],
) -> list[BlobCheck]:
    """Run the written file (the outputs) and a copy exposing every intermediate blob in
    onnxruntime, with the default graph optimizations, and compare both with the eager net on
    every run's inputs."""
    from onnx import helper

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # the default: what users run
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]

    # The copy: intermediate values as extra graph outputs.  (Extra outputs keep onnxruntime from
    # fusing across them, which is why the outputs themselves are read from the file as written.)
    inputs = set(net.inputs)
    outputs = set(built.outputs)
    inner: dict[str, str] = {}  # blob -> ONNX value read from the copy
    fed: dict[str, str] = {}  # blob -> the input it passes through (a Split or Dropout of an input)
    for blob in built.order:
        value = built.final.get(blob)
        if blob in outputs or value is None:
            continue
        if value in inputs:
            fed[blob] = value
        else:
            inner[blob] = value
    copy = type(built.model)()
    copy.CopyFrom(built.model)
    values = list(dict.fromkeys(inner.values()))
    existing = {o.name for o in copy.graph.output}
    for value in values:
        if value in existing:  # an intermediate blob sharing an output's value (a Split top)
            continue
        template = built.templates.get(value)
        copy.graph.output.append(helper.make_tensor_value_info(value, FLOAT, onnx_dims(template) if template else None))
    try:
        session = ort.InferenceSession(path, options, providers=providers)
        probe = ort.InferenceSession(copy.SerializeToString(), options, providers=providers) if values else None
    except Exception as err:  # noqa: BLE001 - onnxruntime's error types derive from Exception only
        raise ExportError(f"onnxruntime {ort.__version__} cannot load the written model {path}: {err}") from None

    names = [b for b in built.order if b in outputs or b in inner or b in fed]
    names += [b for b in built.outputs if b not in names]
    out_names = [built.outputs[b] for b in built.outputs]
    notes = {b: "output" for b in built.outputs}
    checks: list[BlobCheck] = []
    for batch, feeds in runs:
        try:
            expected = run_eager(net, feeds, names)
        except (CaffeNormError, RuntimeError, ValueError) as err:
            raise ExportError(f"caffenorm's own net cannot run the check's inputs at batch size {batch}: {err}") from err
        try:
            got: dict[str, np.ndarray] = dict(zip(built.outputs, session.run(out_names, feeds)))
            by_value = dict(zip(values, probe.run(values, feeds))) if probe is not None else {}
        except Exception as err:  # noqa: BLE001 - onnxruntime's error types derive from Exception only
            raise ExportError(
                f"onnxruntime {ort.__version__} could not run the written model {path} at batch size {batch}: "
                f"{str(err).strip()}"
            ) from None
        got.update({blob: by_value[value] for blob, value in inner.items()})
        got.update({blob: feeds[value] for blob, value in fed.items()})
        for blob, rows in _detections_on_runtime_bottoms(net, got).items():
            # Float noise upstream (~1e-6) can swap two nearly equal scores and reorder rows: the
            # layer is checked exactly on the runtime's own bottoms; end to end is reported.
            if expected[blob].shape != got[blob].shape or not np.allclose(expected[blob], got[blob], rtol, atol):
                report_notes.append(
                    f"{blob} at batch {batch}: end to end {got[blob].shape[2]} rows, caffenorm eager "
                    f"{expected[blob].shape[2]} (scores differing by float noise upstream reorder or cut rows); "
                    "checked exactly against caffenorm's DetectionOutput on onnxruntime's own bottoms"
                )
            expected[blob] = rows
            notes[blob] = "output; DetectionOutput on the runtime's own bottoms"
        checks += compare_blobs(expected, got, names, batch, rtol, atol, notes)
    return checks


def _detections_on_runtime_bottoms(net: Any, got: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """For each DetectionOutput whose bottoms the runtime gave back (their last values are the
    ones it read), caffenorm's rows computed from those bottoms."""
    import torch

    from caffenorm.caffe.layers.detection import DetectionOutput

    graph = net.graph
    out: dict[str, np.ndarray] = {}
    for i, node in enumerate(graph.nodes):
        if not isinstance(node.module, DetectionOutput) or node.tops[0] not in got:
            continue
        reads_last = all(graph.producer(i, j) == graph.last_write(b) for j, b in enumerate(node.bottoms))
        if not reads_last or any(b not in got for b in node.bottoms):
            continue
        with torch.no_grad():
            rows = node.module(*(torch.from_numpy(np.ascontiguousarray(got[b])) for b in node.bottoms))
        out[node.tops[0]] = rows.numpy()
    return out
