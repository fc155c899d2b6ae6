"""The ncnn model being built: blobs, layers, weights, and the context emitters build them with.

ncnn runs one image at a time: its blobs have no batch axis.  A :class:`Blob` therefore holds the
*per-image* shape, Caffe's axes without the first (outermost first: ``(C, H, W)`` for a Caffe
``(N, C, H, W)`` blob; ncnn calls these c, h, w).  Caffe axis ``a >= 1`` is ncnn axis ``a - 1``
everywhere (Softmax, Concat, Slice, Crop, Permute), and an ncnn blob has 1 to 4 axes, so Caffe
blobs of 2 to 5 axes are representable.

Blobs get their names when the model is written (:mod:`caffenorm.export.ncnn._writer`): the last
value of a Caffe blob keeps its Caffe name, so the check can compare it with caffenorm's
``net.blobs``; the other values get unique names derived from it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from caffenorm.errors import ExportError

if TYPE_CHECKING:
    from caffenorm.caffe.graph import Node

__all__ = ["Blob", "EmitContext", "Layer", "NcnnModel", "ParamValue", "Weight", "ncnn_dims"]

ParamValue = int | float | str | Sequence[int] | Sequence[float]
Shape = tuple[int, ...]

# ncnn's Mat dimension parameters, as Input / Reshape / MemoryData number them.
DIM_W = 0
DIM_H = 1
DIM_D = 11
DIM_C = 2


@dataclass(eq=False)
class Blob:
    """One ncnn value.

    Attributes:
        shape: the per-image shape, outermost axis first (Caffe's order without the batch axis).
        name: the Caffe blob name for the last value of a Caffe blob, else None until written.
        hint: what generated names are derived from (the Caffe name or the producing layer's).
    """

    shape: Shape
    name: str | None = None
    hint: str = ""


@dataclass(frozen=True)
class Weight:
    """Data for the ``.bin`` file: float32 values, with ncnn's 4-byte type tag before them when
    the layer reads them with ``ModelBin::load(.., 0)`` (Convolution, InnerProduct weights)."""

    data: np.ndarray
    tagged: bool = False


@dataclass(eq=False)
class Layer:
    """One ncnn layer: ``Type name nbottom ntop bottoms... tops... id=value...``."""

    type: str
    name: str
    bottoms: list[Blob]
    tops: list[Blob]
    params: dict[int, ParamValue] = field(default_factory=dict)
    weights: list[Weight] = field(default_factory=list)


@dataclass
class NcnnModel:
    """The layers in execution order, the notes the emitters left (mappings that needed care),
    the reserved names (every Caffe blob name, which generated names must avoid) and the aliases
    of renamed last values (filled when the model is named for writing)."""

    layers: list[Layer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reserved: set[str] = field(default_factory=set)
    # ncnn blob name -> Caffe blob name, for last values that could not keep their Caffe name
    # (a blob written in place on an input: the input keeps the name the caller feeds).
    aliases: dict[str, str] = field(default_factory=dict)


def ncnn_dims(shape: Shape, ids: tuple[int, int, int, int] = (DIM_W, DIM_H, DIM_D, DIM_C)) -> dict[int, int]:
    """A per-image shape as ncnn's w/h/d/c parameters (``ids`` gives their numbers):
    ``(w,)``, ``(h, w)``, ``(c, h, w)``, ``(c, d, h, w)``."""
    w, h, d, c = ids
    if len(shape) == 1:
        return {w: shape[0]}
    if len(shape) == 2:
        return {w: shape[1], h: shape[0]}
    if len(shape) == 3:
        return {w: shape[2], h: shape[1], c: shape[0]}
    if len(shape) == 4:
        return {w: shape[3], h: shape[2], d: shape[1], c: shape[0]}
    raise ValueError(f"an ncnn blob has 1 to 4 axes, got shape {shape}")


class EmitContext:
    """What an emitter sees of the net and how it adds ncnn layers for one Caffe node.

    Attributes:
        node: the graph node (``node.module`` is the layer's module).
        out_shapes: the per-image shape of each of the node's tops (Caffe's shape for a batch
            of 1, without the batch axis).
        top_problems: for each top, why it has no per-image shape (None where it has one).
    """

    def __init__(
        self,
        model: NcnnModel,
        node: Node,
        out_shapes: Sequence[Shape],
        problem: str | None = None,
        top_problems: Sequence[str | None] = (),
    ) -> None:
        self.model = model
        self.node = node
        self._out_shapes = list(out_shapes)
        self._problem = problem
        self.rows_handled = False  # set by rows_layer: the data-dependent top is the emitter's own
        self.top_problems = list(top_problems) or [None] * len(self._out_shapes)

    @property
    def problem(self) -> str | None:
        """Why the node's tops have no per-image shapes (None when they have)."""
        return self._problem

    @property
    def out_shapes(self) -> list[Shape]:
        """The per-image shapes of the node's tops; raises the reason when a top has none (an
        emitter that refuses the layer anyway never asks, so its own reason is the one shown)."""
        if self._problem is not None:
            raise self.refuse(self._problem)
        return self._out_shapes

    @property
    def known_shapes(self) -> list[Shape | None]:
        """The per-image shape of each top, None where it has none (see ``top_problems``)."""
        return [None if problem else shape for shape, problem in zip(self._out_shapes, self.top_problems)]

    # -- errors and notes ---------------------------------------------------------------------------

    def refuse(self, why: str) -> ExportError:
        """An :class:`~caffenorm.ExportError` naming this layer, its type and ``why`` (to raise)."""
        where = dataclasses.replace(self.node.location, layer=self.node.name, type=self.node.type)
        return ExportError(f"cannot be exported to ncnn exactly: {why}", location=where)

    def note(self, text: str) -> None:
        """Record how this layer was mapped where the mapping needed care (goes to the report)."""
        self.model.notes.append(f"{self.node.name} ({self.node.type}): {text}")

    def axis(self, axis: int, caffe_rank: int, what: str = "axis") -> int:
        """Caffe axis ``axis`` (may be negative) of a ``caffe_rank``-D blob as an ncnn axis of the
        per-image blob (Caffe axis - 1); the batch axis is refused."""
        canonical = axis + caffe_rank if axis < 0 else axis
        if not 0 <= canonical < caffe_rank:
            raise self.refuse(f"{what}={axis} is out of range for a {caffe_rank}-D blob")
        if canonical == 0:
            raise self.refuse(
                f"{what}={axis} is the batch axis; ncnn runs one image at a time and has no batch axis"
            )
        return canonical - 1

    # -- layers -------------------------------------------------------------------------------------

    def _layer_name(self, suffix: str | None) -> str:
        return self.node.name if suffix is None else f"{self.node.name}_{suffix}"

    def layers(
        self,
        type: str,
        bottoms: Sequence[Blob],
        shapes: Sequence[Shape],
        params: Mapping[int, ParamValue] | None = None,
        weights: Sequence[Weight] = (),
        *,
        suffix: str | None = None,
    ) -> list[Blob]:
        """Add an ncnn layer with ``len(shapes)`` tops of those per-image shapes; returns them."""
        for shape in shapes:
            if not 1 <= len(shape) <= 4 or any(not isinstance(d, int) or d < 1 for d in shape):
                raise self.refuse(f"an ncnn blob needs 1 to 4 axes of known positive sizes, got per-image shape {shape}")
        name = self._layer_name(suffix)
        tops = [Blob(tuple(shape), hint=name) for shape in shapes]
        layer = Layer(type, name, list(bottoms), tops, dict(params or {}), list(weights))
        self.model.layers.append(layer)
        return tops

    def layer(
        self,
        type: str,
        bottoms: Sequence[Blob],
        params: Mapping[int, ParamValue] | None = None,
        weights: Sequence[Weight] = (),
        *,
        shape: Shape | None = None,
        suffix: str | None = None,
    ) -> Blob:
        """Add a one-top ncnn layer; its top has ``shape`` (default: the node's first top's)."""
        return self.layers(type, bottoms, [self.out_shapes[0] if shape is None else shape], params, weights,
                           suffix=suffix)[0]

    def rows_layer(
        self, type: str, bottoms: Sequence[Blob], params: Mapping[int, ParamValue], columns: int
    ) -> Blob:
        """Add a one-top ncnn layer whose top is a table of a data-dependent number of rows of
        ``columns`` values (``w = columns, h = rows``), such as detections; the node's own
        data-dependent top shape is then not a reason to refuse it."""
        name = self._layer_name(None)
        top = Blob((0, columns), hint=name)  # 0 rows: unknown until run
        self.model.layers.append(Layer(type, name, list(bottoms), [top], dict(params)))
        self.rows_handled = True
        return top

    # -- building blocks shared by the families -----------------------------------------------------

    def reshape(self, blob: Blob, shape: Shape, *, suffix: str | None = None) -> Blob:
        """``blob`` viewed with per-image ``shape`` (ncnn Reshape, explicit sizes; Caffe's row-major
        order is ncnn's)."""
        if math.prod(shape) != math.prod(blob.shape):
            raise self.refuse(f"internal: cannot reshape {blob.shape} to {shape}")
        return self.layer("Reshape", [blob], ncnn_dims(tuple(shape)), shape=tuple(shape), suffix=suffix)

    def constant(self, values: np.ndarray, *, suffix: str) -> Blob:
        """A constant per-image tensor (ncnn MemoryData; its data goes to the ``.bin``)."""
        arr = np.ascontiguousarray(values, dtype=np.float32)
        shape = tuple(int(d) for d in arr.shape)
        return self.layer("MemoryData", [], ncnn_dims(shape), [Weight(arr.reshape(-1))], shape=shape, suffix=suffix)


def float32_array(values: object) -> np.ndarray:
    """A tensor or array-like as a flat float32 numpy array (what ``.bin`` holds)."""
    try:
        import torch

        if isinstance(values, torch.Tensor):
            values = values.detach().to("cpu", torch.float64).numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return np.ascontiguousarray(np.asarray(values, dtype=np.float64).astype(np.float32).reshape(-1))
