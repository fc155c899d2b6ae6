"""ONNX exporters of the shape family: Concat, Slice, Split, Silence, Flatten, Reshape, Crop,
Permute, Tile and ArgMax.

Sizes come from the shapes the layers' own rules give (``output_shapes``, at two batch sizes), so
a reshape writes the batch dimension as ``0`` (copy) or ``-1`` (infer) and the batch axis stays
dynamic; a layer that cuts along the batch axis needs ``dynamic_batch=False``.
"""

from __future__ import annotations

from caffenorm.caffe.graph import Node
from caffenorm.caffe.layers.shape import ArgMax, Concat, Crop, Flatten, Permute, Reshape, Silence, Slice, Split, Tile
from caffenorm.export.onnx._context import FLOAT, Batch, ExportContext
from caffenorm.export.onnx._registry import register_exporter

__all__ = [
    "export_argmax",
    "export_concat",
    "export_crop",
    "export_permute",
    "export_reshape",
    "export_silence",
    "export_slice",
    "export_split",
    "export_tile",
]

_INT64_MIN = -(2**63)


@register_exporter(Concat)
def export_concat(node: Node, ctx: ExportContext) -> None:
    """``Concat(axis)``; one bottom is passed through."""
    concat = node.module
    assert isinstance(concat, Concat)
    if len(node.bottoms) == 1:
        ctx.bind(0, ctx.input(0))
        return
    axis = concat.axis % len(ctx.in_shape(0))
    ctx.op("Concat", *(ctx.input(j) for j in range(len(node.bottoms))), top=0, axis=axis)


@register_exporter(Slice)
def export_slice(node: Node, ctx: ExportContext) -> None:
    """``Split(axis)`` into Caffe's parts (``slice_point`` or equal); one top is passed through."""
    layer = node.module
    assert isinstance(layer, Slice)
    if layer.num_tops == 1:
        ctx.bind(0, ctx.input(0))
        return
    shape = ctx.in_shape(0)
    axis = layer.axis % len(shape)
    size = shape[axis]
    if not isinstance(size, int):
        raise ctx.error(f"slices axis {axis}, which follows the batch size; export with dynamic_batch=False")
    sizes = layer.sizes(size)
    ctx.op("Split", ctx.input(0), ctx.ints(sizes), tops=range(len(sizes)), axis=axis)


@register_exporter(Split)
def export_split(node: Node, ctx: ExportContext) -> None:
    """No node: every top is the bottom's value."""
    for t in range(len(node.tops)):
        ctx.bind(t, ctx.input(0))


@register_exporter(Silence)
def export_silence(node: Node, ctx: ExportContext) -> None:
    """No node (the bottoms are consumed, nothing is produced)."""


@register_exporter(Flatten, Reshape)
def export_reshape(node: Node, ctx: ExportContext) -> None:
    """``Reshape`` to the shape Caffe's rule gives (``flatten_param`` / ``reshape_param`` resolved),
    the batch dimension written as ``0`` (copy) or ``-1`` (infer)."""
    ctx.reshape(ctx.input(0), ctx.in_shape(0), ctx.out_shape(0), top=0)


@register_exporter(Crop)
def export_crop(node: Node, ctx: ExportContext) -> None:
    """``Slice`` of the axes from ``axis`` on to the reference's sizes at Caffe's offsets (the
    reference itself is only read for its shape)."""
    crop = node.module
    assert isinstance(crop, Crop)
    shape, ref = ctx.in_shape(0), ctx.in_shape(1)
    start = crop.axis % len(shape)
    axes, starts, ends = [], [], []
    for i in range(start, len(shape)):
        off = crop.offset[0] if len(crop.offset) == 1 else crop.offset[i - start] if crop.offset else 0
        size, have = ref[i], shape[i]
        if isinstance(size, Batch) or isinstance(have, Batch):
            if size == have and off == 0:
                continue  # the whole batch axis is kept
            raise ctx.error(f"crops axis {i}, which follows the batch size; export with dynamic_batch=False")
        if off == 0 and size == have:
            continue
        axes.append(i)
        starts.append(off)
        ends.append(off + int(size))  # type: ignore[arg-type]
    if not axes:
        ctx.bind(0, ctx.input(0))
        return
    ctx.op("Slice", ctx.input(0), ctx.ints(starts), ctx.ints(ends), ctx.ints(axes), top=0)


@register_exporter(Permute)
def export_permute(node: Node, ctx: ExportContext) -> None:
    """``Transpose(perm)`` with SSD's rule (``order``, then the omitted axes in their order); the
    identity order is passed through."""
    permute = node.module
    assert isinstance(permute, Permute)
    order = permute.full_order(len(ctx.in_shape(0)))
    if order == tuple(range(len(order))):
        ctx.bind(0, ctx.input(0))
        return
    ctx.op("Transpose", ctx.input(0), top=0, perm=list(order))


@register_exporter(Tile)
def export_tile(node: Node, ctx: ExportContext) -> None:
    """``Tile`` with ``tiles`` repeats along ``axis`` (Caffe repeats the block of axes ``axis..``,
    which is what ONNX's Tile does)."""
    tile = node.module
    assert isinstance(tile, Tile)
    ndim = len(ctx.in_shape(0))
    repeats = [1] * ndim
    repeats[tile.axis % ndim] = tile.tiles
    ctx.op("Tile", ctx.input(0), ctx.ints(repeats), top=0)


@register_exporter(ArgMax)
def export_argmax(node: Node, ctx: ExportContext) -> None:
    """``TopK`` of the input reversed along the axis (``Slice`` with step -1), indices mapped back
    (``size-1-i``) and cast to float; without ``axis``: over each sample (``Flatten``), indices
    and values stacked as Caffe lays them out.

    Ties: Caffe sorts ``(value, index)`` pairs with ``std::greater``, so among equal values the
    larger index comes first.  ONNX's TopK puts the lower index first; on the reversed input that
    is the larger original index.  (NaN inputs are ordered differently; finite inputs agree.)
    """
    argmax = node.module
    assert isinstance(argmax, ArgMax)
    x = ctx.input(0)
    shape = ctx.in_shape(0)
    if argmax.axis is None:
        x = ctx.op("Flatten", x, axis=1)
        axis = 1
        size = 1
        for d in shape[1:]:
            if not isinstance(d, int):
                raise ctx.error(f"needs the per-sample size, but the input shape is {shape}")
            size *= d
    else:
        axis = argmax.axis % len(shape)
        size = shape[axis]  # type: ignore[assignment]
        if not isinstance(size, int):
            raise ctx.error(f"takes the top k along axis {axis}, which follows the batch size; "
                            "export with dynamic_batch=False")
    flipped = ctx.op("Slice", x, ctx.ints([-1]), ctx.ints([_INT64_MIN]), ctx.ints([axis]), ctx.ints([-1]))
    values, reversed_index = ctx.op("TopK", flipped, ctx.ints([argmax.top_k]), outputs=2, axis=axis, largest=1,
                                    sorted=1)
    index = ctx.op("Cast", ctx.op("Sub", ctx.ints([size - 1]), reversed_index), to=FLOAT)
    if argmax.axis is not None:
        ctx.op("Identity", values if argmax.out_max_val else index, top=0)
        return
    parts = [index, values] if argmax.out_max_val else [index]
    stacked = [ctx.op("Unsqueeze", p, ctx.ints([1])) for p in parts]
    joined = stacked[0] if len(stacked) == 1 else ctx.op("Concat", *stacked, axis=1)
    target = ctx.out_shape(0)
    if len(target) == 3:
        ctx.op("Identity", joined, top=0)
    else:
        ctx.reshape(joined, (shape[0], len(parts), argmax.top_k), target, top=0)
