"""The graph of a Caffe net: the layers of one phase as nodes, wired by blob names.

Caffe wires layers by blob names and lets a layer write a blob in place (``top == bottom``), so a
name stands for a sequence of values: every write creates a new one.  The graph keeps the nodes
in Caffe's execution order and derives, for every value, the node that produces it and the nodes
that consume it; passes (:mod:`caffenorm.caffe.passes`) use those maps to rewrite the graph, the
runner (:class:`caffenorm.Net`) runs it and the writer (:mod:`caffenorm.caffe.writer`) writes it
back to Caffe's files.

A node holds the layer's module and the ``LayerParameter`` definitions it was built from (two for
a fused BatchNorm+Scale node), so the graph can always be written back as Caffe layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import Message

from caffenorm.errors import Location, NetDefinitionError
from caffenorm.nn._base import CaffeLayer, Shape

__all__ = ["Graph", "Node", "ValueRef"]

# A value: (position of the producing node, position of the top among its tops).
ValueRef = tuple[int, int]


@dataclass(frozen=True)
class Node:
    """One layer of the net (or several fused into one).

    Attributes:
        name: the layer's name (the first one's, for a fused node).
        type: the Caffe type (``"BatchNorm+Scale"`` for a fused pair).
        bottoms, tops: blob names, as in the prototxt.
        module: the module that computes the layer: called with the bottoms, returns the tops.
        location: where the layer is defined.
        definitions: the ``LayerParameter``(s) the node stands for, as read (blobs not included).
        indices: their positions in the net definition's layer list.
        top_shapes: the inferred shape of each top (None where unknown before a forward).
        parts: for a node that replaces several layers (a fused pair), the original nodes, in
            order; the runner uses them when it records every layer's own output.
        is_input: the tops are fed by the caller (Input and data layers).
    """

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    module: CaffeLayer
    location: Location
    definitions: tuple[Message, ...] = ()
    indices: tuple[int, ...] = ()
    top_shapes: tuple[Shape | None, ...] = ()
    parts: tuple[Node, ...] = ()
    is_input: bool = False

    def replace(self, **changes: object) -> Node:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def layers(self) -> tuple[Node, ...]:
        """The Caffe layers this node runs: its parts, or itself."""
        return self.parts or (self,)


@dataclass(frozen=True)
class Graph:
    """The layers of one phase of a net, in execution order.

    Attributes:
        nodes: the nodes in Caffe's execution (prototxt) order.
        definition: the whole upgraded ``NetParameter`` as read (every phase's layers; net-level
            fields such as ``name`` and ``state``), without blobs.
        source: the prototxt's path (for messages).
        phase: ``"TRAIN"`` or ``"TEST"``.
        removed: layers removed by passes -> what became of them (e.g. ``"folded into 'conv1'"``).
        phase_indices: the positions (in ``definition.layer``) of every layer of this phase,
            including those passes removed; the others belong to other phases.
        output_names: the blobs the net returns, when chosen (:func:`caffenorm.caffe.passes.cut`);
            None for Caffe's rule (the blobs no layer consumes).
    """

    nodes: tuple[Node, ...]
    definition: Message
    source: str = "<net>"
    phase: str = "TEST"
    removed: Mapping[str, str] = field(default_factory=dict)
    phase_indices: frozenset[int] = frozenset()
    output_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "removed", dict(self.removed))
        object.__setattr__(self, "_wiring", self._wire())
        object.__setattr__(self, "_outputs", self._find_outputs())

    # -- wiring -------------------------------------------------------------------------------------

    def _wire(self) -> tuple[list[tuple[ValueRef, ...]], dict[ValueRef, list[tuple[int, int]]], dict[str, ValueRef]]:
        """Resolve every bottom to the value it reads: the last write of that name before it."""
        names: set[str] = set()
        last: dict[str, ValueRef] = {}
        reads: list[tuple[ValueRef, ...]] = []
        consumers: dict[ValueRef, list[tuple[int, int]]] = {}
        for i, node in enumerate(self.nodes):
            if node.name in names:
                raise NetDefinitionError(f"a layer named {node.name!r} already exists; names must be unique",
                                         location=node.location)
            names.add(node.name)
            refs = []
            for j, bottom in enumerate(node.bottoms):
                if bottom not in last:
                    raise NetDefinitionError(
                        f"bottom {bottom!r} is not produced by any earlier layer (nor declared as an input)",
                        location=node.location,
                    )
                refs.append(last[bottom])
                consumers.setdefault(last[bottom], []).append((i, j))
            reads.append(tuple(refs))
            for t, top in enumerate(node.tops):
                last[top] = (i, t)
                consumers.setdefault((i, t), [])
        return reads, consumers, last

    def producer(self, node: int, bottom: int) -> ValueRef:
        """The value bottom ``bottom`` of node ``node`` reads: (producing node, its top position)."""
        return self._wiring[0][node][bottom]  # type: ignore[attr-defined,no-any-return]

    def consumers(self, node: int, top: int) -> list[tuple[int, int]]:
        """The (node, bottom position) pairs that read top ``top`` of node ``node``."""
        return list(self._wiring[1][(node, top)])  # type: ignore[attr-defined]

    def is_output(self, node: int, top: int) -> bool:
        """Whether that value is one the net returns."""
        name = self.nodes[node].tops[top]
        return name in self._outputs and self._wiring[2][name] == (node, top)  # type: ignore[attr-defined]

    # -- views --------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def index(self, name: str) -> int:
        """The position of the node called ``name`` (a fused node answers to its parts' names)."""
        for i, node in enumerate(self.nodes):
            if name == node.name or any(name == p.name for p in node.parts):
                return i
        why = self.removed.get(name)
        raise KeyError(f"no layer named {name!r}" + (f" ({why})" if why else ""))

    def node(self, name: str) -> Node:
        return self.nodes[self.index(name)]

    def layer_nodes(self) -> list[Node]:
        """Every Caffe layer of the graph, fused pairs expanded into their parts."""
        return [part for node in self.nodes for part in node.layers()]

    @property
    def inputs(self) -> list[str]:
        """The blobs the caller feeds, in order."""
        return [top for node in self.nodes if node.is_input for top in node.tops]

    @property
    def input_shapes(self) -> dict[str, Shape | None]:
        return {
            top: shape for node in self.nodes if node.is_input for top, shape in zip(node.tops, node.top_shapes)
        }

    @property
    def outputs(self) -> list[str]:
        """Caffe's rule: the blobs produced (or fed) and not consumed by any later layer."""
        return list(self._outputs)  # type: ignore[attr-defined]

    def _find_outputs(self) -> tuple[str, ...]:
        if self.output_names is not None:
            return tuple(self.output_names)
        available: dict[str, None] = {}
        for node in self.nodes:
            for bottom in node.bottoms:
                available.pop(bottom, None)
            for top in node.tops:
                available[top] = None
        return tuple(available)

    @property
    def shapes(self) -> dict[str, Shape | None]:
        """Every blob name -> the shape of its last value (None where unknown before a forward)."""
        out: dict[str, Shape | None] = {}
        for node in self.nodes:
            for top, shape in zip(node.tops, node.top_shapes):
                out[top] = shape
        return out

    def replace(
        self, nodes: Sequence[Node], removed: Mapping[str, str] | None = None, **changes: object
    ) -> Graph:
        """A graph with ``nodes`` (and ``removed`` added to the record of removed layers)."""
        return dataclasses.replace(
            self, nodes=tuple(nodes), removed={**self.removed, **(removed or {})}, **changes  # type: ignore[arg-type]
        )

    def last_write(self, blob: str) -> ValueRef:
        """The value a blob name holds after the whole net ran: (node, top position) of its last
        writer; KeyError if no layer writes it."""
        return self._wiring[2][blob]  # type: ignore[attr-defined,no-any-return]

    def summary(self) -> str:
        """One line per node: name, type, bottoms -> tops, top shapes."""
        lines = []
        for node in self.nodes:
            shapes = ", ".join("x".join("?" if d is None else str(d) for d in s) if s else "?" for s in node.top_shapes)
            lines.append(f"{node.name} ({node.type}): {', '.join(node.bottoms)} -> {', '.join(node.tops)}  [{shapes}]")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Graph({len(self.nodes)} nodes, inputs={self.inputs}, outputs={self.outputs}, phase={self.phase})"
