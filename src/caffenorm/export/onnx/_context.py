"""What an exporter writes through: the :class:`ExportContext` of one export.

It owns the ONNX graph being built (nodes, initializers, inputs), gives every value a unique
name, and keeps the ONNX value each Caffe blob name is bound to *now*: a layer that writes a blob
in place rebinds the name, exactly as Caffe's blob names stand for a sequence of values.  The last
value written to a blob takes the blob's own name (so ``conv1`` in the ONNX file is what
``net.blobs["conv1"]`` is after a forward); earlier values are called ``blob@layer``.

Shapes are *templates*: static ints, with :class:`Batch` where a dimension is a multiple of the
batch size, derived by running each layer's shape rule at two batch sizes.  Exporters use them to
write reshapes that keep the batch axis dynamic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from caffenorm.errors import CaffeNormError, ExportError, Location

if TYPE_CHECKING:
    from caffenorm.caffe.graph import Graph, Node

__all__ = ["FLOAT", "Batch", "Dim", "ExportContext", "Template", "concrete", "has_batch", "onnx_dims"]

FLOAT = 1  # onnx.TensorProto.FLOAT (the family modules import without onnx installed)


@dataclass(frozen=True)
class Batch:
    """A dimension equal to ``factor`` times the batch size."""

    factor: int = 1

    def __repr__(self) -> str:
        return "N" if self.factor == 1 else f"{self.factor}N"


Dim = int | Batch | None  # None: unknown before a forward (DetectionOutput's row count)
Template = tuple[Dim, ...]

# The batch sizes the shape rules are run at to find the dimensions that follow the batch.
_PROBE_BATCHES = (2, 3)


def concrete(template: Sequence[Dim], batch: int) -> tuple[int, ...]:
    """The shape ``template`` takes at batch size ``batch``."""
    out = []
    for d in template:
        if d is None:
            raise ValueError(f"shape {tuple(template)} has an unknown dimension")
        out.append(d.factor * batch if isinstance(d, Batch) else int(d))
    return tuple(out)


def has_batch(template: Iterable[Dim]) -> bool:
    return any(isinstance(d, Batch) for d in template)


@dataclass
class ExportContext:
    """The state of one export; exporters use the methods, never the fields directly.

    Attributes:
        graph: the net's graph.
        opset: the ONNX opset (default domain) being written.
        dynamic_batch: whether the batch axis stays dynamic.
    """

    graph: Graph
    opset: int
    dynamic_batch: bool
    nodes: list[Any] = field(default_factory=list)
    initializers: list[Any] = field(default_factory=list)
    inputs: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Caffe blob name -> the ONNX value it holds now; ONNX value -> its shape template.
    binding: dict[str, str] = field(default_factory=dict)
    templates: dict[str, Template] = field(default_factory=dict)
    # Every ONNX name used so far (values, nodes, initializers).
    _names: set[str] = field(default_factory=set)
    _constants: dict[tuple[Any, ...], str] = field(default_factory=dict)
    _index: int = -1
    _node: Node | None = None
    _top_names: dict[int, str] = field(default_factory=dict)
    _out_templates: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Input names are reserved first: users feed the graph by the net's input names.
        self._names.update(self.graph.inputs)

    # -- the node being exported -----------------------------------------------------------------

    def start(self, index: int, node: Node) -> None:
        self._index, self._node, self._top_names = index, node, {}

    @property
    def node(self) -> Node:
        assert self._node is not None
        return self._node

    def error(self, message: str) -> ExportError:
        """An :class:`ExportError` naming the current layer and its type."""
        node = self.node
        # The prototxt's place, with the node's own name and type (a fused node's type is
        # "BatchNorm+Scale", a pass may have replaced the module).
        where = node.location or Location()
        return ExportError(message, location=dataclasses.replace(where, layer=node.name, type=node.type))

    # -- names -----------------------------------------------------------------------------------

    def fresh(self, hint: str) -> str:
        """A new unique ONNX name built from ``hint``."""
        name, k = hint, 1
        while name in self._names:
            k += 1
            name = f"{hint}_{k}"
        self._names.add(name)
        return name

    def claim(self, name: str) -> str | None:
        """Reserve ``name`` if nothing uses it yet; None if it is taken."""
        if name in self._names:
            return None
        self._names.add(name)
        return name

    def top_name(self, t: int) -> str:
        """The ONNX name of the value written to top ``t`` of the current node: the blob's name for
        its last write (unless that name is a graph input), ``blob@layer`` otherwise."""
        if t not in self._top_names:
            blob = self.node.tops[t]
            last = self.graph.last_write(blob) == (self._index, t)
            self._top_names[t] = (last and self.claim(blob)) or self.fresh(f"{blob}@{self.node.name}")
        return self._top_names[t]

    # -- values of the current node ---------------------------------------------------------------

    def input(self, j: int = 0) -> str:
        """The ONNX value bottom ``j`` of the current node reads."""
        return self.binding[self.node.bottoms[j]]

    def in_shape(self, j: int = 0) -> Template:
        return self.templates[self.input(j)]

    def out_shape(self, t: int = 0) -> Template:
        return self._out_templates[t]

    def static_spatial(self, j: int = 0) -> tuple[int, int]:
        """``(H, W)`` of the 4-D bottom ``j``, which must not depend on the batch size."""
        template = self.in_shape(j)
        if len(template) != 4 or not all(type(d) is int for d in template[2:]):
            raise self.error(f"needs a 4-D bottom with static H and W, got {template}")
        return int(template[2]), int(template[3])  # type: ignore[arg-type]

    def bind(self, t: int, value: str) -> None:
        """Top ``t`` is the existing ONNX value ``value`` (no node: Split, Dropout, ...)."""
        self.binding[self.node.tops[t]] = value
        self.templates.setdefault(value, self._out_templates[t])

    # -- emitting --------------------------------------------------------------------------------

    def op(
        self,
        op_type: str,
        *inputs: str,
        top: int | None = None,
        tops: Sequence[int] | None = None,
        outputs: int = 1,
        **attrs: Any,
    ) -> Any:
        """Append an ONNX node and return its output name (a list when ``outputs`` > 1 or ``tops``).

        With ``top=t`` (or ``tops=[...]``) the outputs are the node's tops: they get the tops' names
        and the blob names are bound to them.  ``""`` stands for an omitted optional input.
        """
        from onnx import helper

        node = self.node
        if tops is not None:
            names = [self.top_name(t) for t in tops]
        elif top is not None:
            names = [self.top_name(top)]
        else:
            names = [self.fresh(f"{node.name}/{op_type}") for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), names, name=self.fresh(f"{node.name}/{op_type}#"), **attrs)
        )
        bound = list(tops) if tops is not None else ([top] if top is not None else [])
        for t, name in zip(bound, names):
            self.binding[node.tops[t]] = name
            self.templates[name] = self._out_templates[t]
        if tops is not None or outputs > 1:
            return names
        return names[0]

    def tensor(self, value: Any, hint: str, dtype: Any = np.float32) -> str:
        """An initializer holding ``value`` (a tensor or array-like) as ``dtype``; returns its name."""
        from onnx import numpy_helper

        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        name = self.fresh(f"{self.node.name}/{hint}")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        """A small constant (shared by every node that uses the same value)."""
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            from onnx import numpy_helper

            kind = "i" if np.issubdtype(array.dtype, np.integer) else "f"
            text = "x".join(map(str, array.shape)) if array.size > 4 else "_".join(f"{v:g}" for v in array.flat)
            name = self.fresh(f"const/{kind}{text}" if text else f"const/{kind}")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._constants[key] = name
        return self._constants[key]

    def ints(self, values: Iterable[int]) -> str:
        """A 1-D int64 constant (shapes, axes, pads)."""
        return self.const(list(values), np.int64)

    # -- opset-dependent forms ------------------------------------------------------------------

    def reduce_sum_square(self, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        """``ReduceSumSquare``: ``axes`` is an attribute up to opset 17 and an input from opset 18."""
        if self.opset >= 18:
            return self.op("ReduceSumSquare", x, self.ints(axes), keepdims=int(keepdims))
        return self.op("ReduceSumSquare", x, axes=list(axes), keepdims=int(keepdims))

    def reshape(self, x: str, source: Template, target: Template, *, top: int | None = None) -> str:
        """``Reshape`` of ``x`` (shape ``source``) to ``target``, keeping the batch dynamic: a batch
        dimension at the same position in both is copied (``0``), one other batch dimension is
        inferred (``-1``).  More than one is an error (export with ``dynamic_batch=False``)."""
        dims: list[int] = []
        inferred = 0
        for i, d in enumerate(target):
            if d is None:
                raise self.error(f"cannot reshape to {target}: a dimension is unknown")
            if isinstance(d, Batch):
                if i < len(source) and source[i] == d:
                    dims.append(0)  # Reshape's 0 copies the input's dimension at the same index
                else:
                    dims.append(-1)
                    inferred += 1
            else:
                if d == 0:
                    raise self.error(f"cannot reshape to {target}: ONNX's Reshape reads a 0 as 'copy'")
                dims.append(int(d))
        if inferred > 1:
            raise self.error(
                f"the shape {target} has {inferred} dimensions that follow the batch size; ONNX's Reshape can "
                "infer only one. Export with dynamic_batch=False"
            )
        return self.op("Reshape", x, self.ints(dims), top=top)  # type: ignore[no-any-return]

    # -- shapes ------------------------------------------------------------------------------------

    def probe(self, node: Node) -> None:
        """Derive the templates of the node's tops by running its module's forward on the meta
        device at two batch sizes (once, when no bottom has a batch dimension)."""
        bottoms = [self.templates[self.binding[b]] for b in node.bottoms]
        dynamic = any(has_batch(t) for t in bottoms)
        batches = _PROBE_BATCHES if dynamic else (None,)
        results = []
        for batch in batches:
            try:
                shapes = [concrete(t, batch or 1) for t in bottoms]
                results.append([tuple(s) if s is not None else None for s in _output_shapes(node.module, shapes)])
            except (CaffeNormError, RuntimeError, ValueError, IndexError, TypeError) as err:
                if dynamic:
                    raise self.error(
                        f"cannot run at another batch size ({err}); export with dynamic_batch=False to fix the "
                        "batch size at the declared one"
                    ) from None
                raise self.error(f"cannot infer the output shape: {err}") from None
        self._out_templates = [_merge(self, a, b) for a, b in zip(results[0], results[-1])] if dynamic else [
            tuple(s) if s is not None else None for s in results[0]
        ]

    def set_input(self, name: str, template: Template) -> None:
        """Declare graph input ``name`` (a blob fed by the caller) with shape ``template``."""
        from onnx import TensorProto, helper

        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, onnx_dims(template)))
        self.binding[name] = name
        self.templates[name] = template


def _output_shapes(module: Any, shapes: Sequence[tuple[int, ...]]) -> list[Any]:
    """The module's output shapes for bottoms of ``shapes``, from its forward on the meta device.

    ``CaffeLayer.output_shapes`` answers element-wise layers without running them; here the
    forward always runs (nothing is allocated), so its checks see the probe's batch size too (a
    Scale blob spanning the batch axis fits one batch size only).  A module with its own rule
    (DetectionOutput's data-dependent row count) keeps it.
    """
    from caffenorm.nn._base import CaffeLayer

    if type(module).output_shapes is not CaffeLayer.output_shapes:
        return list(module.output_shapes(*shapes))
    return module.meta_output_shapes(*shapes)


def _merge(ctx: ExportContext, a: Sequence[Any] | None, b: Sequence[Any] | None) -> Template | None:
    """One template from the shapes at batch sizes 2 and 3."""
    if a is None or b is None:
        return None
    if len(a) != len(b):
        raise ctx.error(f"its output rank changes with the batch size ({tuple(a)} vs {tuple(b)})")
    out: list[Dim] = []
    lo, hi = _PROBE_BATCHES
    for x, y in zip(a, b):
        if x == y:
            out.append(x)
        elif x is not None and y is not None and (y - x) * lo == x * (hi - lo) and x > 0:
            out.append(Batch(x // lo))
        else:
            raise ctx.error(
                f"an output dimension depends on the batch size in a way a dynamic batch axis cannot express "
                f"({tuple(a)} at batch {lo}, {tuple(b)} at batch {hi}); export with dynamic_batch=False"
            )
    return tuple(out)


def onnx_dims(template: Template) -> list[Any]:
    """ONNX value-info dims: ints, ``"batch"`` for the batch size itself, None (unknown) otherwise."""
    return [
        ("batch" if d.factor == 1 else None) if isinstance(d, Batch) else (None if d is None else int(d))
        for d in template
    ]
