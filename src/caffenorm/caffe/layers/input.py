"""Layers whose tops the caller feeds: ``Input`` and the data layers (Caffe reads those from LMDB,
HDF5, image lists...; here their tops are the net's inputs)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from caffenorm.caffe.registry import BuildContext, register_layer, register_writer
from caffenorm.caffe.spec import LayerSpec
from caffenorm.caffe.transform_param import transform_from_param
from caffenorm.nn._base import CaffeLayer
from caffenorm.transform import Transform

__all__ = ["InputLayer", "convert_data", "convert_input", "convert_memory_data", "write_input"]


class InputLayer(CaffeLayer):
    """A layer whose tops are fed by the caller; ``shapes`` holds each top's declared shape
    (``None`` where the prototxt does not say).

    A data layer's ``transform_param`` (what Caffe does to each image before it reaches the first
    top) is available as :meth:`transform`; it is read when first asked for, so a mean file that
    is not at hand does not stop the net from loading.
    """

    caffe_type = "Input"

    def __init__(
        self, shapes: Sequence[tuple[int, ...] | None], transform: Callable[[], Transform] | None = None
    ) -> None:
        super().__init__()
        self.shapes = list(shapes)
        self._transform = transform

    def transform(self) -> Transform | None:
        """The layer's ``transform_param`` as a :class:`caffenorm.transform.Transform` (None if the
        layer has none)."""
        return None if self._transform is None else self._transform()

    def caffe_settings(self) -> dict[str, Any]:
        return {"shape": [list(s) if s is not None else None for s in self.shapes]}

    def extra_repr(self) -> str:
        return f"shapes={self.shapes}"


@register_layer("Input")
def convert_input(layer: LayerSpec, ctx: BuildContext) -> InputLayer:
    """``input_param.shape``: none (the caller gives shapes), one for every top, or one per top."""
    shapes = [tuple(int(d) for d in s.dim) for s in layer.param.input_param.shape]
    tops = len(layer.tops)
    if len(shapes) not in (0, 1, tops):
        raise ctx.error(f"has {len(shapes)} input_param shapes for {tops} tops; give 0, 1 or {tops}")
    if len(shapes) == 1:
        shapes = shapes * tops
    return InputLayer(shapes or [None] * tops)


@register_layer("MemoryData")
def convert_memory_data(layer: LayerSpec, ctx: BuildContext) -> InputLayer:
    """Tops (data, label) of shapes (batch_size, channels, height, width) and (batch_size,)."""
    p = layer.param.memory_data_param
    shapes: list[tuple[int, ...] | None] = [(p.batch_size, p.channels, p.height, p.width), (p.batch_size,)]
    return InputLayer(shapes[: len(layer.tops)] + [None] * max(0, len(layer.tops) - 2), _transform(layer, ctx))


@register_layer("Data", "ImageData", "HDF5Data", "AnnotatedData", "WindowData", "VideoData")
def convert_data(layer: LayerSpec, ctx: BuildContext) -> InputLayer:
    """Data read from files: the tops become inputs whose shapes come from ``input_shapes``."""
    return InputLayer([None] * len(layer.tops), _transform(layer, ctx))


def _transform(layer: LayerSpec, ctx: BuildContext) -> Callable[[], Transform] | None:
    """The data layer's ``transform_param``, to be read when first asked for."""
    if not layer.param.HasField("transform_param"):
        return None
    param = type(layer.param.transform_param)()
    param.CopyFrom(layer.param.transform_param)
    return functools.partial(transform_from_param, param, layer.source, phase=ctx.phase.lower())


@register_writer(InputLayer)
def write_input(module: InputLayer, layer: Any) -> None:
    """``input_param.shape`` of an Input layer, from the module's declared shapes (data layers keep
    their own parameters: their shapes come from their sources)."""
    if layer.type != "Input":
        return
    shapes = module.caffe_settings()["shape"]
    del layer.input_param.shape[:]
    if all(s is not None for s in shapes):
        if len(set(map(tuple, shapes))) == 1 and len(shapes) > 1:
            shapes = shapes[:1]  # one shape for every top, as Caffe allows
        for dims in shapes:
            layer.input_param.shape.add().dim.extend(dims)
