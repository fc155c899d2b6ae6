"""``caffenorm.load`` and ``Net``: a Caffe net as an ``nn.Module`` that runs its graph.

The net is a :class:`~caffenorm.caffe.graph.Graph` (built by :mod:`caffenorm.caffe.builder`,
transformed by :mod:`caffenorm.caffe.passes`, written by :mod:`caffenorm.caffe.writer`); ``Net``
only runs it.  Layers run in prototxt order over a dictionary of named blobs.  An in-place layer
(top == bottom) rebinds the name to its output, so ``net.blobs`` holds, like Caffe, the last value
written to each name; nothing is modified in place, so autograd sees an ordinary graph.

Every way out of eager float32 is exact or an error: the net traces (``torch.jit.trace``),
exports (``torch.export.export``), compiles (``torch.compile(fullgraph=True)``) and symbolically
traces (``torch.fx.symbolic_trace``: one ``call_module`` node per Caffe layer); half precision
keeps BatchNorm's statistics in float32; on CUDA its convolutions run without TF32.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from google.protobuf.message import Message
from torch import Tensor, nn

from caffenorm._tracing import is_fx_proxy, is_tracing
from caffenorm.caffe import io, passes, writer
from caffenorm.caffe.builder import build_graph, module_key, read_net, select_layers, set_blob
from caffenorm.caffe.graph import Graph, Node
from caffenorm.caffe.spec import LayerSpec, parse_phase
from caffenorm.caffe.weights import load_weights
from caffenorm.errors import CaffeNormError, InputShapeError, Location, NetDefinitionError, summarize
from caffenorm.nn._base import CaffeLayer, Shape
from caffenorm.nn.normalize import Normalize
from caffenorm.precision import check_precision, full_float32
from caffenorm.transform import Transform

__all__ = ["Net", "load", "load_parsed", "read_net"]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class _Step:
    """One call of the run plan: a module, the blobs it reads and the blobs it writes."""

    name: str
    call: Callable[..., Any]
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    location: Location


class Net(nn.Module):
    """A Caffe net.  Build it with :func:`caffenorm.load`.

    Attributes:
        graph: the :class:`~caffenorm.caffe.graph.Graph` the net runs (read-only; passes such as
            :meth:`fold` replace it).
        layers: ``nn.ModuleDict`` of every layer's module, keyed by layer name (a name that cannot
            be a module name -- empty, with '.' or '%', or an ``nn.Module`` attribute such as
            ``type`` -- is escaped, see :func:`caffenorm.caffe.builder.module_key`).
        precision: ``"highest"`` (default: on CUDA, convolutions and matrix products in full
            float32, as Caffe) or ``"tf32"`` (TF32 allowed: faster on Ampere+, ~1e-3 error).
        blobs: after an eager forward, every blob name -> the tensor Caffe would hold under it.
        layer_outputs: after a forward with ``record_layer_outputs = True``, every layer name ->
            its outputs (unlike ``blobs``, not overwritten by later in-place layers; fused layers
            are run separately for it).
        unused_weights: caffemodel layers with blobs that match no layer of this net.
    """

    def __init__(self, graph: Graph, *, precision: str = "highest") -> None:
        super().__init__()
        self.precision = check_precision(precision)
        self.blobs: dict[str, Tensor] = {}
        self.record_layer_outputs = False
        self.layer_outputs: dict[str, tuple[Tensor, ...]] = {}
        self.unused_weights: list[str] = []
        # The dtype the net computes in: BatchNorm's statistics stay float32 under net.half(), so
        # the net's dtype is tracked through conversions rather than read off its tensors.
        self._dtype = torch.get_default_dtype()
        self.layers = nn.ModuleDict()
        self._set_graph(graph)
        self.train(graph.phase == "TRAIN")
        self.register_load_state_dict_post_hook(_track_dtype_after_load)

    # -- the graph ----------------------------------------------------------------------------------

    @property
    def graph(self) -> Graph:
        return self._graph

    def _set_graph(self, graph: Graph) -> None:
        """Run ``graph`` from now on: register its layers' modules and build the run plans."""
        modules = {module_key(part.name): part.module for part in graph.layer_nodes()}
        self.layers = nn.ModuleDict(modules)
        self._graph = graph
        self._plan = [self._step(node) for node in graph.nodes if not node.is_input]
        self._record_plan = [self._step(part) for node in graph.nodes if not node.is_input for part in node.layers()]
        self._outputs = graph.outputs
        self._inputs = graph.inputs
        # A net without floating tensors (only Eltwise, Reshape, ...) takes any floating dtype.
        self._typed = any(t.is_floating_point() for t in (*self.parameters(), *self.buffers()))

    @staticmethod
    def _step(node: Node) -> _Step:
        return _Step(node.name, node.module, node.bottoms, node.tops, node.location)

    def apply_pass(self, graph_pass: Callable[[Graph], Graph]) -> Net:
        """Replace the net's graph by ``graph_pass(net.graph)`` (a function from graph to graph)."""
        self._set_graph(graph_pass(self._graph))
        return self

    def fold(self) -> Net:
        """Fold BatchNorm (stored statistics), Scale and Bias into the Convolution, Deconvolution or
        InnerProduct before them, for inference (see :func:`caffenorm.caffe.passes.fold_batch_norm`).

        The folded layers disappear from ``net.layers``, ``net.params`` and ``net.blobs`` (their
        top is written by the convolution); ``net.save`` writes the folded net.  Call on an
        evaluation-mode net (``phase="test"`` or ``net.eval()``).  Returns the net.
        """
        return self.apply_pass(passes.fold_batch_norm)

    # -- Caffe's views ------------------------------------------------------------------------------

    @property
    def phase(self) -> str:
        return self._graph.phase

    @property
    def inputs(self) -> list[str]:
        """Names of the blobs the caller feeds (Input and data layers' tops), in order."""
        return self._graph.inputs

    @property
    def input_shapes(self) -> dict[str, Shape | None]:
        """The declared shape of each input (``None`` where the prototxt has none)."""
        return self._graph.input_shapes

    def input_transform(self, name: str | None = None) -> Transform | None:
        """What Caffe does to an image before it reaches input ``name`` (default: the first): the
        data layer's ``transform_param`` as a :class:`caffenorm.transform.Transform` (mean, scale,
        crop, mirror), or None when the layer has none (Input layers never do)."""
        name = name or self.inputs[0]
        for node in self._graph.nodes:
            if node.is_input and name in node.tops:
                if name != node.tops[0]:
                    return None  # transform_param applies to a data layer's first top (the images)
                try:
                    return node.module.transform()  # type: ignore[operator,no-any-return]
                except CaffeNormError as err:
                    raise err.at(node.location) from None
        raise KeyError(f"{name!r} is not an input of this net; inputs: {self.inputs}")

    @property
    def outputs(self) -> list[str]:
        """Names of the blobs no layer consumes: what ``forward`` returns."""
        return list(self._outputs)

    @property
    def blob_shapes(self) -> dict[str, Shape | None]:
        """Every blob's shape as inferred when the net was built (for the declared input shapes)."""
        return self._graph.shapes

    @property
    def layer_specs(self) -> list[LayerSpec]:
        """The layers as read: name, type, bottoms, tops, ``LayerParameter`` and prototxt line."""
        return [
            LayerSpec(n.name, n.type, n.bottoms, n.tops, n.definitions[0], n.location.line, n.location.file or "",
                      n.indices[0] if n.indices else -1)
            for n in self._graph.layer_nodes()
        ]

    @property
    def params(self) -> dict[str, list[Tensor]]:
        """Layer name -> its blobs in Caffe's order and shapes (the tensors themselves)."""
        out = {}
        for node in self._graph.layer_nodes():
            blobs = node.module.caffe_blobs()
            if blobs:
                out[node.name] = blobs
        return out

    def layer(self, name: str) -> CaffeLayer:
        """The module of the layer called ``name``."""
        for node in self._graph.layer_nodes():
            if node.name == name:
                return node.module
        why = self._graph.removed.get(name)
        raise KeyError(f"no layer named {name!r}" + (f" ({why})" if why else ""))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the net computes in (``net.half()`` -> float16; BatchNorm blobs stay float32)."""
        return self._dtype

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Net:  # type: ignore[override]
        out = super()._apply(fn, recurse)
        probe = fn(torch.empty(0, dtype=self._dtype))
        if probe.is_floating_point():
            self._dtype = probe.dtype
        return out  # type: ignore[return-value]

    # -- loss -----------------------------------------------------------------------------------

    @property
    def loss_weights(self) -> dict[str, float]:
        """Loss blob -> its weight in the objective.  Caffe's rule: a ``*Loss`` layer's first top
        weighs 1 unless ``loss_weight`` says otherwise; any layer may give its tops weights with
        ``loss_weight`` (one per top)."""
        weights: dict[str, float] = {}
        for node in self._graph.layer_nodes():
            given = list(node.definitions[0].loss_weight) if node.definitions else []
            if given and len(given) != len(node.tops):
                raise NetDefinitionError(f"{len(given)} loss_weight values for {len(node.tops)} tops",
                                         location=node.location)
            if not given and node.type.endswith("Loss") and node.tops:
                given = [1.0] + [0.0] * (len(node.tops) - 1)
            for top, w in zip(node.tops, given):
                if w:
                    weights[top] = float(w)
        return weights

    def loss(self) -> Tensor:
        """The objective Caffe's solver minimises, from the last forward: the sum of every loss top
        times its ``loss_weight`` (see ``net.loss_weights``)."""
        weights = self.loss_weights
        if not weights:
            raise NetDefinitionError("this net has no loss layer (no top with a loss_weight); load the train phase?")
        missing = [t for t in weights if t not in self.blobs]
        if missing:
            raise NetDefinitionError(f"run a forward first: no value yet for the loss blobs {missing}")
        return sum((w * self.blobs[t].sum() for t, w in weights.items()), torch.zeros(()))

    # -- weights ------------------------------------------------------------------------------------

    def load_caffemodel(
        self, path: PathLike, strict: bool = True, progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None
    ) -> None:
        """Copy the blobs of a ``.caffemodel`` into the layers, matching layers by name.

        Layers of this net that need blobs and find none are an error with ``strict`` (else they
        keep their fillers, with a warning); caffemodel layers with blobs that match no layer are
        listed in ``unused_weights`` and warned about.
        """
        fills = getattr(self, "_deferred_fills", None)
        generator = getattr(self, "_generator", None)
        self.unused_weights = load_weights(
            self._graph, path, strict=strict, progress=progress, fills=fills, generator=generator
        )
        self._deferred_fills = {}

    def save(self, prototxt: PathLike, caffemodel: PathLike | None = None) -> None:
        """Write the net as it is now (its modules' settings and tensors, after any pass) in Caffe's
        formats: a prototxt and, if given, a caffemodel.  OpenCV dnn and Caffe read both."""
        writer.save(self._graph, prototxt, caffemodel)

    def share_trained_layers_with(self, other: Net) -> list[str]:
        """Make every layer of this net that has a namesake in ``other`` use ``other``'s blobs
        themselves (the same parameter and buffer tensors, not copies): Caffe's
        ``Net::ShareTrainedLayersWith``, how a solver's test nets see the train net's weights
        (BatchNorm statistics included).  Blob counts and shapes must match, as Caffe checks.
        Returns the names of the shared layers.
        """
        mine = {node.name: node for node in self._graph.layer_nodes()}
        shared = []
        for source in other.graph.layer_nodes():
            target = mine.get(source.name)
            if target is None:
                continue
            blobs, own = source.module.caffe_blobs(), target.module.caffe_blobs()
            if len(blobs) != len(own):
                raise NetDefinitionError(
                    f"Incompatible number of blobs for layer {source.name!r}: {len(blobs)} in the source net "
                    f"({source.location}), {len(own)} here",
                    location=target.location,
                )
            for j, (blob, old) in enumerate(zip(blobs, own)):
                if tuple(blob.shape) != tuple(old.shape):
                    raise NetDefinitionError(
                        f"Cannot share param {j} weights from layer {source.name!r}; shape mismatch.  Source param "
                        f"shape is {tuple(blob.shape)}; target param shape is {tuple(old.shape)}",
                        location=target.location,
                    )
                if blob is not old:
                    set_blob(target.module, j, blob)
            shared.append(source.name)
        return shared

    # -- running ------------------------------------------------------------------------------------

    def forward(self, input: Any = None, /, **inputs: Any) -> dict[str, Tensor]:
        """Run the net.  ``net(x)`` when it has one input, else ``net(name=tensor, ...)``.

        Returns the output blobs by name; after an eager forward every blob is in ``net.blobs``.
        """
        feeds = self._feeds(input, inputs)
        if any(is_fx_proxy(v) for v in feeds.values()):
            return self._trace_fx(feeds)
        if torch.jit.is_tracing():
            return self._trace_jit(feeds)
        if is_tracing():
            blobs = self._run(self._plan, feeds, False)
            return {name: blobs[name] for name in self._outputs}
        self._check_feed_shapes(feeds)
        record = self.record_layer_outputs
        self.layer_outputs = {}
        if self.precision == "highest" and self._on_cuda(feeds):
            with full_float32():
                blobs = self._run_eager(self._record_plan if record else self._plan, feeds, record)
        else:
            blobs = self._run_eager(self._record_plan if record else self._plan, feeds, record)
        self.blobs = blobs
        return {name: blobs[name] for name in self._outputs}

    def _check_feed_shapes(self, feeds: Mapping[str, Tensor]) -> None:
        """Check, before the first layer runs, that the inputs' shapes fit the net, and name the
        declared shapes when they don't.

        Like Caffe's ``Reshape``, any shape the layers accept is fine (another batch size, another
        image size for a fully convolutional net); the shapes are propagated through every layer
        on the meta device once per new combination of input shapes (then cached), so a wrong
        input fails here with the net's declared input shape in the message, not deep inside at
        a pooling layer.
        """
        key = tuple(tuple(t.shape) for t in feeds.values())
        cache = self.__dict__.setdefault("_fitting_shapes", set())
        if key in cache:
            return
        declared = self.input_shapes
        if all(declared.get(n) is not None and tuple(declared[n]) == k for n, k in zip(feeds, key)):
            cache.add(key)  # the shapes the net was built for: inferred layer by layer when it loaded
            return

        def fail(message: str, location: Location | None = None) -> InputShapeError:
            if location is not None and location.type and message.startswith(f"{location.type}: "):
                message = message[len(location.type) + 2 :]
            given = ", ".join(f"{n!r} {tuple(t.shape)}" for n, t in feeds.items())
            known = ", ".join(f"{n!r} {declared[n]}" for n in feeds if declared.get(n) is not None)
            says = f"; the net declares {known}" if known else ""
            return InputShapeError(f"the input shape(s) {given} do not fit this net{says}: {message}",
                                   location=location)

        for name, tensor in feeds.items():
            want = declared.get(name)
            if want is not None and len(want) != tensor.dim():
                raise fail(f"{name!r} has {tensor.dim()} dimensions, the net expects {len(want)}")
        shapes: dict[str, Shape | None] = {n: tuple(t.shape) for n, t in feeds.items()}
        for step in self._plan:
            bottoms = [shapes.get(b) for b in step.bottoms]
            tops: Sequence[Shape | None] = [None] * len(step.tops)
            if all(b is not None and None not in b for b in bottoms):
                try:
                    tops = step.call.output_shapes(*bottoms)
                except CaffeNormError as err:
                    raise fail(err.message, step.location) from None
                except (RuntimeError, ValueError, IndexError, TypeError) as err:
                    raise fail(str(err).split("\n")[0], step.location) from None
                except NotImplementedError:
                    pass  # no meta rule for this layer: its own forward checks the shapes
            shapes.update(zip(step.tops, tops))
        if len(cache) > 64:
            cache.clear()
        cache.add(key)

    @staticmethod
    def _on_cuda(feeds: Mapping[str, Tensor]) -> bool:
        return any(t.is_cuda for t in feeds.values())

    def _run(
        self, plan: Sequence[_Step], feeds: Mapping[str, Tensor], record: bool, at: list[Any] | None = None
    ) -> dict[str, Tensor]:
        """Run ``plan`` on ``feeds``; ``at`` (eager only) is kept pointing at the step being run and
        its arguments, for error messages."""
        blobs = dict(feeds)
        for step in plan:
            args = [blobs[b] for b in step.bottoms]
            if at is not None:
                at[:] = (step, args)
            out = step.call(*args)
            if len(step.tops) == 1:
                blobs[step.tops[0]] = out
                outs: tuple[Tensor, ...] = (out,)
            else:
                outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
                if len(outs) != len(step.tops):
                    raise NetDefinitionError(
                        f"produced {len(outs)} outputs for {len(step.tops)} tops", location=step.location
                    )
                blobs.update(zip(step.tops, outs))
            if record:
                self.layer_outputs[step.name] = outs
        return blobs

    def _run_eager(self, plan: Sequence[_Step], feeds: Mapping[str, Tensor], record: bool) -> dict[str, Tensor]:
        """:meth:`_run`, with an error raised by a layer attached to that layer's location."""
        at: list[Any] = []
        try:
            return self._run(plan, feeds, record, at)
        except CaffeNormError as err:
            raise err.at(at[0].location if at else None) from None
        except torch.OutOfMemoryError:
            raise  # not a problem of the input: torch's own error, untouched
        except (RuntimeError, ValueError, IndexError, TypeError) as err:
            if not at:
                raise
            step, args = at
            shapes = [tuple(a.shape) for a in args]
            # The original stays reachable as __context__ (for a bug in a hook), not printed.
            raise InputShapeError(f"cannot run on bottoms of shapes {shapes}: {err}", location=step.location) from None

    def _trace_jit(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``torch.jit.trace``: the layers' shape checks compare traced sizes, which makes torch
        warn that the trace may not generalise.  What does not generalise is said once instead:
        sizes other than the batch are fixed at the example's (the pooling and convolution
        geometry is computed from them); the batch size stays free."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            shapes = {name: tuple(int(d) for d in t.shape) for name, t in feeds.items()}
        warnings.warn(
            f"torch.jit.trace of a caffenorm Net: the traced module accepts any batch size; its inputs' other "
            f"dimensions are fixed at the example's {shapes}",
            stacklevel=3,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            blobs = self._run(self._plan, feeds, False)
        return {name: blobs[name] for name in self._outputs}

    def _trace_fx(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """``torch.fx.symbolic_trace(net)``: one ``call_module`` node per Caffe layer, calling the
        layer's registered module, so the traced graph mirrors the Caffe net and every layer runs
        its own (checked, exact) forward."""
        tracer = next(v for v in feeds.values() if is_fx_proxy(v)).tracer
        blobs: dict[str, Any] = dict(feeds)
        for step in self._record_plan:  # a fused pair as its two layers: each has a module path
            args = tuple(blobs[b] for b in step.bottoms)
            out = tracer.create_proxy("call_module", f"layers.{module_key(step.name)}", args, {})
            if len(step.tops) == 1:
                blobs[step.tops[0]] = out
            else:
                for i, top in enumerate(step.tops):
                    blobs[top] = out[i]
        return {name: blobs[name] for name in self._outputs}

    def _feeds(self, input: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
        names = self._inputs
        if is_fx_proxy(input) or is_fx_proxy(inputs):
            # torch.fx.symbolic_trace: the traced module takes a one-input net's input
            # positionally and several inputs by name, as the net itself does.
            return {names[0]: input} if len(names) == 1 else {n: inputs[n] for n in names}
        if input is not None:
            if len(names) != 1 or inputs:
                raise InputShapeError(f"pass inputs by name: net({', '.join(f'{n}=...' for n in names)})")
            inputs = {names[0]: input}
        missing = [n for n in names if n not in inputs]
        unknown = [n for n in inputs if n not in names]
        if missing or unknown:
            expected = ", ".join(f"{n} {self.input_shapes[n]}" for n in names)
            raise InputShapeError(f"the net's inputs are: {expected}; missing {missing}, unknown {unknown}")
        return {name: self._as_tensor(name, inputs[name]) for name in names}

    def _as_tensor(self, name: str, value: Any) -> Tensor:
        dtype = self._dtype
        if isinstance(value, np.ndarray):
            if not (np.issubdtype(value.dtype, np.number) and not np.iscomplexobj(value)):
                raise InputShapeError(f"input {name!r} is a numpy array of {value.dtype}, expected real numbers")
            # Arrays are data: converted to the net's dtype, as Caffe copies them into its blobs.
            value = torch.from_numpy(np.ascontiguousarray(value)).to(dtype)
        if not isinstance(value, Tensor):
            raise InputShapeError(f"input {name!r} must be a tensor or numpy array, got {type(value).__name__}")
        if not value.is_floating_point():
            raise InputShapeError(f"input {name!r} is a {value.dtype} tensor; pass floating-point data (x.float())")
        if self._typed and value.dtype != dtype and not torch.is_autocast_enabled(value.device.type):
            raise InputShapeError(
                f"input {name!r} is a {value.dtype} tensor but the net computes in {dtype}; pass x.to({dtype}) or "
                f"convert the net (net.to({value.dtype}))"
            )
        # Like reshaping a Caffe input blob, any shape is accepted; each layer checks what it needs.
        return value

    def extra_repr(self) -> str:
        return f"phase={self.phase}, inputs={self.inputs}, outputs={self.outputs}, precision={self.precision!r}"


def _track_dtype_after_load(net: nn.Module, incompatible_keys: Any) -> None:
    """After ``load_state_dict`` (``assign=True`` can change the net's dtype), the net computes in
    its parameters' dtype."""
    for p in net.parameters():
        if p.is_floating_point():
            net._dtype = p.dtype  # type: ignore[assignment]
            return


def load(
    prototxt: PathLike | Message,
    caffemodel: PathLike | None = None,
    phase: str = "test",
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    level: int = 0,
    stages: Sequence[str] = (),
    strict: bool = True,
    seed: int = 0,
    fuse: bool = True,
    fold: bool = False,
    outputs: Sequence[str] | None = None,
    precision: str = "highest",
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    caffe_backward: bool = False,
    memory_limit: float | str | None = None,
) -> Net:
    """Build a :class:`Net` from a prototxt and (optionally) a caffemodel.

    Args:
        prototxt: the net definition (text; V1 ``layers`` and legacy ``input:`` headers are upgraded),
            or a parsed ``caffenorm.caffe.schema.NetParameter`` message (copied, not modified).
        caffemodel: the trained weights (binary); without it, layers are initialised from the
            prototxt's fillers with ``seed``.
        phase: ``"test"`` (inference: stored BatchNorm statistics, no dropout) or ``"train"``
            (the TRAIN layers, training mode).  ``net.train()``/``net.eval()`` switch later.
        input_shapes: shapes for inputs the prototxt does not declare (or to override them).
        level, stages: Caffe's ``NetState`` for ``include``/``exclude`` rules.
        strict: with a caffemodel, layers needing weights that it lacks are an error.
        seed: seed of the fillers.
        fuse: run each BatchNorm and the Scale that rewrites its top in place as one kernel
            (the same function; see :func:`caffenorm.caffe.passes.fuse_batch_norm_scale`).
        fold: fold BatchNorm, Scale and Bias into the convolutions before them, for inference
            (see :meth:`Net.fold`); needs ``phase="test"``.
        outputs: return these blobs (their last values) and keep only the layers that compute
            them (see :func:`caffenorm.caffe.passes.cut`), e.g. an SSD up to
            ``["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]``.
        precision: ``"highest"`` or ``"tf32"`` (see :class:`Net`).
        progress: a wrapper such as ``tqdm.tqdm`` to show progress while weights load.
        caffe_backward: give every Normalize layer Caffe's own backward
            (``module.caffe_backward = True``; see :class:`caffenorm.Normalize`) instead of the
            true gradient, to train as Caffe trains.  Caffe's formula is exact only when the
            channel scales are equal, so the two differ for per-channel scales
            (``channel_shared: false``) that are not.  Measured on a small net (conv 3->8 + ReLU,
            per-channel Normalize, InnerProduct, SoftmaxWithLoss; batch 16, 50 SGD steps,
            momentum 0.9): scales drawn from U(0.5, 1.5) at lr 0.01 leave the convolution's
            weights 11% apart (max difference over max value; its bias 41%), the InnerProduct's
            2%, the scales 8e-4, for the same final loss (0.0058 vs 0.0060); scales U(15, 25) at
            lr 0.001: convolution 4%, InnerProduct 0.6%.  Layers before the Normalize move most,
            as the difference is in the gradient it passes down.  With equal scales (constant 20)
            the two agree to rounding (1e-6 relative).
        memory_limit: the memory the net may take, checked before anything is allocated: its
            parameters plus every blob at the declared input shapes (an eager forward keeps them
            all in ``net.blobs``).  Bytes, a size such as ``"8G"``, or ``math.inf`` / ``"off"``
            for no check; None (default): ``$CAFFENORM_MEMORY_LIMIT`` (same forms) if set, else
            the memory available now.  A net over it raises :class:`NetDefinitionError` naming
            the blob that passed it (see :mod:`caffenorm.caffe.memory`).

    Shared parameters (``param { name: ... }`` on several layers) become one tensor and a blob
    with ``lr_mult: 0`` is loaded with ``requires_grad=False``, as Caffe builds its nets (see
    :func:`caffenorm.caffe.builder.share_params`).
    """
    if isinstance(prototxt, Message):
        net_param = type(prototxt)()
        net_param.CopyFrom(prototxt)
        source = "<NetParameter>"
        return load_parsed(
            net_param, [], source, caffemodel, phase, input_shapes=input_shapes, level=level, stages=stages,
            strict=strict, seed=seed, fuse=fuse, fold=fold, outputs=outputs, precision=precision,
            progress=progress, caffe_backward=caffe_backward, memory_limit=memory_limit,
        )
    net_param, lines = io.read_prototxt(prototxt)
    net = load_parsed(
        net_param, lines, str(prototxt), caffemodel, phase, input_shapes=input_shapes, level=level, stages=stages,
        strict=strict, seed=seed, fuse=fuse, fold=fold, outputs=outputs, precision=precision, progress=progress,
        caffe_backward=caffe_backward, memory_limit=memory_limit,
    )
    if caffemodel is None:
        _warn_empty_statistics(net, str(prototxt))
    return net


def _warn_empty_statistics(net: Net, source: str) -> None:
    """Warn when BatchNorm layers will normalise with statistics nobody accumulated: a net loaded
    without its caffemodel.  Caffe does the same (its blobs start at zero: mean 0, variance 0, so
    ``x / sqrt(eps)``), but the outputs mean nothing, and a user reading NaN or huge values
    should know why."""
    from caffenorm.nn.batch_norm import BatchNorm

    empty = [
        part.name for node in net.graph.nodes for part in node.layers()
        if isinstance(part.module, BatchNorm) and part.module.uses_global_stats()
        and float(part.module.scale_factor.sum()) == 0
    ]
    if empty:
        names = summarize(map(repr, empty), first=3)
        warnings.warn(
            f"{source}: BatchNorm layer(s) {names} have no statistics (no caffemodel given): as in Caffe they "
            "normalise with mean 0 and variance 0, so the outputs are meaningless; give the trained caffemodel",
            stacklevel=3,
        )


def load_parsed(
    net_param: Message,
    lines: Sequence[int | None],
    source: str,
    caffemodel: PathLike | None = None,
    phase: str = "test",
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    level: int = 0,
    stages: Sequence[str] = (),
    strict: bool = True,
    seed: int = 0,
    fuse: bool = True,
    fold: bool = False,
    outputs: Sequence[str] | None = None,
    precision: str = "highest",
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    caffe_backward: bool = False,
    memory_limit: float | str | None = None,
) -> Net:
    """:func:`load` for a ``NetParameter`` already parsed (upgraded in place): ``lines`` are the
    prototxt lines of its top-level layers (may be empty), ``source`` names it in messages (the
    solver reads its nets this way, inline ``net_param`` included)."""
    phase = parse_phase(phase)
    net_param, specs = select_layers(net_param, lines, source, phase, level, stages)
    built = build_graph(
        net_param,
        specs,
        phase,
        input_shapes=input_shapes,
        seed=seed,
        defer_fillers=caffemodel is not None,
        source=source,
        memory_limit=memory_limit,
    )
    net = Net(built.graph, precision=precision)
    net._deferred_fills = built.deferred_fills
    net._generator = built.generator
    if caffemodel is not None:
        net.load_caffemodel(caffemodel, strict=strict, progress=progress)
    if outputs is not None:
        net.apply_pass(lambda graph: passes.cut(graph, outputs))
    if fold:
        net.fold()
    if fuse:
        net.apply_pass(passes.fuse_batch_norm_scale)
    if caffe_backward:
        for module in net.modules():
            if isinstance(module, Normalize):
                module.caffe_backward = True
    return net
