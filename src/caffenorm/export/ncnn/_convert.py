"""From a net's graph to an :class:`~caffenorm.export.ncnn._model.NcnnModel`.

Every node's module is handed to its emitter (:mod:`caffenorm.export.ncnn._registry`) with the
ncnn blobs of its bottoms and the per-image shapes of its tops.  Those shapes are inferred here
twice, for a batch of 1 and for a batch of 2 (each module's ``output_shapes``, on the meta device):
ncnn runs one image at a time, so a top must either keep the batch as its first axis and nothing
else changing with it, or not depend on the batch at all (PriorBox's boxes); a layer whose output
mixes the batch axis into others (e.g. a Reshape or Flatten over axis 0) is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from caffenorm.caffe.graph import Graph, Node
from caffenorm.errors import CaffeNormError, ExportError
from caffenorm.export.ncnn._families import get_emitter
from caffenorm.export.ncnn._model import Blob, EmitContext, NcnnModel, Shape

__all__ = ["convert"]

# Why some layer types have no emitter (the generic reason covers the rest).
_NO_EMITTER_WHY: dict[str, str] = {
    "SoftmaxWithLoss": "a loss layer needs labels and exists for training; export the deploy net",
    "EuclideanLoss": "a loss layer needs labels and exists for training; export the deploy net",
    "Accuracy": "an evaluation layer needs labels; export the deploy net",
    "ArgMax": "ncnn's ArgMax reads the blob's memory channel padding included (its indices count the gaps) and "
    "with out_max_val puts the values before the indices (Caffe: indices, then values); it has no axis",
}


def _no_emitter(node: Node) -> str:
    why = _NO_EMITTER_WHY.get(node.type, "ncnn has no layer computing it exactly and caffenorm has no composition for it")
    return f"layer {node.name!r} ({node.type}, module {type(node.module).__name__}): no ncnn mapping: {why}"


def _output_shapes(node: Node, shapes: Sequence[Shape]) -> list[Any]:
    return list(node.module.output_shapes(*shapes))


def _per_image(node: Node, top: str, one: Any, two: Any) -> tuple[Shape | None, str | None]:
    """The per-image shape of a top from its shapes for batches of 1 and 2, or why there is none."""
    one, two = tuple(one), tuple(two)
    if any(d is None for d in one):
        return None, f"top {top!r} has a data-dependent shape {one}; ncnn blobs here need known sizes"
    batched = len(one) == len(two) and one[0] == 1 and two[0] == 2 and one[1:] == two[1:]
    batch_free = one == two and one[0] == 1
    if not (batched or batch_free):
        return None, (
            f"top {top!r} has shape {one} for a batch of 1 and {two} for a batch of 2: the batch axis is mixed "
            "into other axes, and ncnn runs one image at a time (no batch axis)"
        )
    if not 2 <= len(one) <= 5:
        return None, (
            f"top {top!r} has {len(one)} axes {one}; ncnn blobs have 1 to 4 axes besides the batch "
            "(Caffe blobs of 2 to 5 axes)"
        )
    return one[1:], None


def convert(net: Any) -> NcnnModel:
    """The ncnn layers computing ``net`` (its graph and its modules' current settings and blobs).

    Raises :class:`~caffenorm.ExportError` naming every layer without an ncnn mapping, or the
    first layer whose mapping would not be exact (with the reason and, where there is one, the
    way to an exact export)."""
    graph: Graph = net.graph
    missing = [node for node in graph.nodes if get_emitter(node.module) is None]
    if missing:
        where = dataclasses.replace(missing[0].location, layer=None, type=None)  # file and line of the first
        raise ExportError("cannot export to ncnn: " + "; ".join(_no_emitter(node) for node in missing), location=where)
    model = NcnnModel(reserved={top for node in graph.nodes for top in node.tops})
    shapes: dict[tuple[int, int], tuple[Any, Any]] = {}
    values: dict[tuple[int, int], Blob] = {}
    unexported: dict[tuple[int, int], str] = {}  # inputs ncnn cannot take, and why
    for i, node in enumerate(graph.nodes):
        node_problem: str | None = None
        outs: list[tuple[Any, Any]] = []
        if node.is_input:
            for top, declared in zip(node.tops, node.top_shapes):
                if declared is None or not declared or any(d is None for d in declared):
                    outs.append(((None,), (None,)))
                else:
                    outs.append(((1, *declared[1:]), (2, *declared[1:])))
        else:
            ins = [shapes[graph.producer(i, j)] for j in range(len(node.bottoms))]
            unknown = [b for b, s in zip(node.bottoms, ins) if any(d is None for d in (*s[0], *s[1]))]
            try:
                if unknown:
                    raise ValueError(f"its bottom {unknown[0]!r} has no known shape")
                ones = _output_shapes(node, [s[0] for s in ins])
                twos = _output_shapes(node, [s[1] for s in ins])
            except (CaffeNormError, RuntimeError, ValueError, TypeError, IndexError) as err:
                why = err.message if isinstance(err, CaffeNormError) else str(err)
                node_problem = f"its output shapes cannot be inferred for a batch of 2 ({why})"
                ones = twos = [(None,)] * len(node.tops)
            outs = list(zip(ones, twos))
        per_image: list[Shape] = []
        problems: list[str | None] = []
        for t, (top, (one, two)) in enumerate(zip(node.tops, outs)):
            shapes[(i, t)] = (one, two)
            shape, why = _per_image(node, top, one, two)
            if node.is_input and one == (None,):
                why = f"input {top!r} has no declared shape; give one (caffenorm.load(..., input_shapes=...))"
            problems.append(node_problem or why)
            per_image.append(shape if shape is not None else ())
        ctx = EmitContext(model, node, per_image, next((p for p in problems if p), None), problems)
        bottoms = []
        for j, bottom in enumerate(node.bottoms):
            ref = graph.producer(i, j)
            if ref in unexported:
                raise ctx.refuse(f"it reads {bottom!r}, which ncnn cannot take as an input: {unexported[ref]}")
            bottoms.append(values[ref])
        emitter = get_emitter(node.module)
        assert emitter is not None
        first = len(model.layers)
        tops = emitter(ctx, node.module, bottoms)
        if not node.is_input and ctx.problem is not None and not ctx.rows_handled:
            raise ctx.refuse(ctx.problem)  # an emitter that did not ask for the shapes still fails here
        fresh = {id(top) for layer in model.layers[first:] for top in layer.tops}
        made = [t for t in tops if t is not None]
        if (
            len(tops) != len(node.tops)
            or any(id(t) not in fresh for t in made)
            or len({id(t) for t in made}) != len(made)
            or (not node.is_input and len(made) != len(tops))
        ):
            raise ExportError(f"internal: the ncnn emitter of layer {node.name!r} ({node.type}) returned wrong tops")
        for t, (top, blob) in enumerate(zip(node.tops, tops)):
            if blob is None:  # an input ncnn cannot take; an error if something reads it
                unexported[(i, t)] = problems[t] or "no per-image shape"
                continue
            values[(i, t)] = blob
            if not node.is_input:
                blob.hint = f"{top}@{node.name}"
            if node.is_input or graph.last_write(top) == (i, t):
                blob.name = top
    return model
