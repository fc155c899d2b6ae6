"""ncnn emitters of the shape family: Concat, Slice, Split, Silence, Flatten, Reshape, Permute, Crop,
Tile.

These only move data.  ncnn's blobs have no batch axis, so Caffe axis ``a`` is ncnn axis
``a - 1`` (outermost first, as ncnn's Concat, Slice and Crop count them) and an axis-0 operation
is refused.  Sizes are written as the net's inferred sizes (ncnn's Reshape ``0`` copies the
same-named ncnn dimension, not Caffe's same position, so Caffe's ``0``/``-1`` are resolved here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from caffenorm.caffe.layers.shape import Concat, Crop, Flatten, Permute, Reshape, Silence, Slice, Split, Tile
from caffenorm.export.ncnn._model import Blob, EmitContext
from caffenorm.export.ncnn._registry import register_emitter

__all__ = [
    "emit_concat",
    "emit_crop",
    "emit_flatten",
    "emit_permute",
    "emit_reshape",
    "emit_silence",
    "emit_slice",
    "emit_split",
    "emit_tile",
]

CONCAT_AXIS: Final = 0
SLICE_SLICES: Final = 0  # array of part sizes
SLICE_AXIS: Final = 1
PERMUTE_ORDER_TYPE: Final = 0
CROP_STARTS: Final = 9  # arrays: numpy-style slicing of the listed axes
CROP_ENDS: Final = 10
CROP_AXES: Final = 11
TILE_AXIS: Final = 0
TILE_TILES: Final = 1

# ncnn Permute's order types by rank (src/layer/permute.cpp): each names the output's axes from
# the innermost (w) outwards, by the input axis each comes from.
_ORDER_TYPES: Final = {
    2: ("wh", "hw"),
    3: ("whc", "hwc", "wch", "cwh", "hcw", "chw"),
    4: ("whdc", "hwdc", "wdhc", "dwhc", "hdwc", "dhwc", "whcd", "hwcd", "wchd", "cwhd", "hcwd", "chwd",
        "wdch", "dwch", "wcdh", "cwdh", "dcwh", "cdwh", "hdcw", "dhcw", "hcdw", "chdw", "dchw", "cdhw"),
}
# The input axes of an image of each rank, outermost first.
_AXIS_LETTERS: Final = {1: "w", 2: "hw", 3: "chw", 4: "cdhw"}


@register_emitter(Concat)
def emit_concat(ctx: EmitContext, module: Concat, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Concat: 0=axis (Caffe axis - 1)."""
    axis = ctx.axis(module.axis, len(bottoms[0].shape) + 1, module.axis_param)
    return [ctx.layer("Concat", bottoms, {CONCAT_AXIS: axis})]


@register_emitter(Slice)
def emit_slice(ctx: EmitContext, module: Slice, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Slice: 0=slices (array of part sizes), 1=axis (Caffe axis - 1)."""
    (x,) = bottoms
    axis = ctx.axis(module.axis, len(x.shape) + 1, module.axis_param)
    sizes = module.sizes(x.shape[axis])
    return ctx.layers("Slice", [x], ctx.out_shapes, {SLICE_SLICES: sizes, SLICE_AXIS: axis})


@register_emitter(Split)
def emit_split(ctx: EmitContext, module: Split, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Split, one top per Caffe top."""
    return ctx.layers("Split", bottoms, ctx.out_shapes)


@register_emitter(Silence)
def emit_silence(ctx: EmitContext, module: Silence, bottoms: Sequence[Blob]) -> list[Blob]:
    """No ncnn layer (Caffe's Silence only marks blobs as consumed)."""
    return []


@register_emitter(Flatten)
def emit_flatten(ctx: EmitContext, module: Flatten, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Flatten when the whole image becomes 1-D, else Reshape (0=w, 1=h, 11=d, 2=c) to the flattened sizes."""
    (x,) = bottoms
    (shape,) = ctx.out_shapes
    ctx.axis(module.axis, len(x.shape) + 1)  # refuses flattening the batch axis into others
    if len(shape) == 1:
        return [ctx.layer("Flatten", [x])]
    return [ctx.reshape(x, shape)]


@register_emitter(Reshape)
def emit_reshape(ctx: EmitContext, module: Reshape, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Reshape: 0=w, 1=h, 11=d, 2=c, the inferred per-image sizes (Caffe's 0 and -1 resolved)."""
    (x,) = bottoms
    return [ctx.reshape(x, ctx.out_shapes[0])]


@register_emitter(Permute)
def emit_permute(ctx: EmitContext, module: Permute, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Permute: 0=order_type (the per-image axis order; the batch axis must stay first)."""
    (x,) = bottoms
    order = module.full_order(len(x.shape) + 1)
    if order[0] != 0:
        raise ctx.refuse(f"order={list(order)} moves the batch axis; ncnn runs one image at a time")
    perm = [o - 1 for o in order[1:]]
    rank = len(perm)
    if perm == list(range(rank)) or rank == 1:
        return [ctx.layer("Permute", [x], {PERMUTE_ORDER_TYPE: 0})]
    letters = _AXIS_LETTERS[rank]
    name = "".join(letters[perm[j]] for j in reversed(range(rank)))
    return [ctx.layer("Permute", [x], {PERMUTE_ORDER_TYPE: _ORDER_TYPES[rank].index(name)})]


@register_emitter(Crop)
def emit_crop(ctx: EmitContext, module: Crop, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Crop: 9=starts, 10=ends, 11=axes (arrays, from the offsets and the reference's sizes; the reference is not read)."""
    x = bottoms[0]
    (shape,) = ctx.out_shapes
    first = ctx.axis(module.axis, len(x.shape) + 1)
    axes = list(range(first, len(x.shape)))
    offsets = [module.offset[0] if len(module.offset) == 1 else module.offset[i] if module.offset else 0
               for i in range(len(axes))]
    ends = [o + shape[a] for o, a in zip(offsets, axes)]
    params = {CROP_STARTS: offsets, CROP_ENDS: ends, CROP_AXES: axes}
    # The reference's sizes are known here, so the reference blob itself is not read.
    return [ctx.layer("Crop", [x], params)]


@register_emitter(Tile)
def emit_tile(ctx: EmitContext, module: Tile, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Tile: 0=axis (Caffe axis - 1), 1=tiles (the block repeated, as Caffe does)."""
    (x,) = bottoms
    return [ctx.layer("Tile", [x], {TILE_AXIS: ctx.axis(module.axis, len(x.shape) + 1), TILE_TILES: module.tiles})]
