"""ncnn emitters of the input family: the layers whose tops the caller feeds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from caffenorm.caffe.layers.input import InputLayer
from caffenorm.export.ncnn._model import Blob, EmitContext, ncnn_dims
from caffenorm.export.ncnn._registry import register_emitter

__all__ = ["emit_input"]

# ncnn Input (src/layer/input.cpp): the blob's shape, for information (ncnn takes what it is fed).
INPUT_W: Final = 0
INPUT_H: Final = 1
INPUT_D: Final = 11
INPUT_C: Final = 2


@register_emitter(InputLayer)
def emit_input(ctx: EmitContext, module: InputLayer, bottoms: Sequence[Blob]) -> list[Blob | None]:
    """One ncnn Input per top: 0=w, 1=h, 11=d, 2=c of the per-image declared shape.

    Input and data layers alike: their tops are what the caller feeds, one image at a time (the
    batch axis of the declared shape is dropped).  A top ncnn cannot take (a data layer's
    ``(N,)`` labels: nothing is left per image) is left out, which is an error only if an
    exported layer reads it."""
    tops: list[Blob | None] = []
    for top, shape in zip(ctx.node.tops, ctx.known_shapes):
        if shape is None:
            tops.append(None)
            continue
        params = ncnn_dims(shape, (INPUT_W, INPUT_H, INPUT_D, INPUT_C))
        tops.append(ctx.layer("Input", [], params, shape=shape, suffix=None if len(ctx.node.tops) == 1 else top))
    return tops
