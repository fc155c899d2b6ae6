"""Converters and modules of the shape family: Concat, Slice, Split, Silence, Flatten, Reshape,
Crop, Permute (SSD fork), Tile and ArgMax.

None of these layers has blobs; they only move data.  Every size that depends on the bottom is
computed in ``forward`` from the actual input (as Caffe does in ``Reshape()`` before each
forward), so any batch size works and, on the meta device, a shape that does not fit raises at
load time with the layer named.  Checks that depend only on the prototxt run when the module is
built.  Caffe facts come from BVLC ``src/caffe/layers/<name>_layer.cpp`` (Permute:
weiliu89/caffe ``permute_layer.cpp``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from google.protobuf.message import Message
from torch import Tensor

from caffenorm.caffe.layers._fields import param_of
from caffenorm.caffe.registry import BuildContext, register_layer, register_writer, write_fields
from caffenorm.caffe.spec import LayerSpec
from caffenorm.errors import InputShapeError, LayerConfigError, format_count, format_shape
from caffenorm.functional._checks import canonical_axis
from caffenorm.nn._base import CaffeLayer

__all__ = [
    "ArgMax",
    "Concat",
    "Crop",
    "Flatten",
    "Permute",
    "Reshape",
    "Silence",
    "Slice",
    "Split",
    "Tile",
    "convert_argmax",
    "convert_concat",
    "convert_crop",
    "convert_flatten",
    "convert_permute",
    "convert_reshape",
    "convert_silence",
    "convert_slice",
    "convert_split",
    "convert_tile",
]

# Caffe casts the legacy uint32 ``concat_dim`` / ``slice_dim`` to int and CHECKs the result >= 0.
_INT32_MAX = 2**31 - 1


def _int(layer: str, param: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LayerConfigError(f"{layer}: {param}={value!r} must be an integer")
    return value


def _ints(layer: str, param: str, values: Sequence[int]) -> tuple[int, ...]:
    return tuple(_int(layer, param, v) for v in values)


# -- the modules ----------------------------------------------------------------------------------


class Concat(CaffeLayer):
    """Caffe's Concat: the bottoms joined along ``axis``; every other axis must agree.

    One bottom is passed through unchanged (Caffe shares its data).  ``axis`` may be negative.
    ``axis_param`` only names the field in messages (``concat_dim`` for legacy prototxts).
    """

    caffe_type = "Concat"

    def __init__(self, axis: int = 1, *, axis_param: str = "axis") -> None:
        super().__init__()
        self.axis = _int("Concat", axis_param, axis)
        self.axis_param = axis_param

    def forward(self, *bottoms: Tensor) -> Tensor:
        if not bottoms:
            raise InputShapeError("Concat: needs at least one input")
        first = bottoms[0]
        axis = canonical_axis("Concat", self.axis_param, self.axis, first.dim())
        for i, b in enumerate(bottoms[1:], 1):
            if b.dim() != first.dim() or any(
                j != axis and b.shape[j] != first.shape[j] for j in range(first.dim())
            ):
                raise InputShapeError(
                    f"Concat: input {i} has shape {tuple(b.shape)} and input 0 has {tuple(first.shape)}; "
                    f"all inputs must have the same number of axes and agree on every axis except "
                    f"{self.axis_param}={self.axis}"
                )
        if len(bottoms) == 1:
            return first
        return torch.cat(bottoms, dim=axis)

    def caffe_settings(self) -> dict[str, Any]:
        return {self.axis_param: self.axis}

    def extra_repr(self) -> str:
        return f"{self.axis_param}={self.axis}"


class Slice(CaffeLayer):
    """Caffe's Slice: the input cut along ``axis`` into ``num_tops`` parts.

    With ``slice_point`` (``num_tops - 1`` strictly increasing positions) part ``i`` runs from
    point ``i-1`` to point ``i`` (the last part to the end); without, the axis is split into
    ``num_tops`` equal parts and must divide evenly.  Caffe also requires ``num_tops <= size of
    the axis``.
    """

    caffe_type = "Slice"

    def __init__(
        self, num_tops: int, axis: int = 1, slice_point: Sequence[int] = (), *, axis_param: str = "axis"
    ) -> None:
        super().__init__()
        self.num_tops = _int("Slice", "num_tops", num_tops)
        self.axis = _int("Slice", axis_param, axis)
        self.axis_param = axis_param
        self.slice_point = _ints("Slice", "slice_point", slice_point)
        if self.num_tops < 1:
            raise LayerConfigError(f"Slice: num_tops={num_tops} is not allowed; a Slice has at least one top")
        if self.slice_point:
            if len(self.slice_point) != self.num_tops - 1:
                raise LayerConfigError(
                    f"Slice: slice_point={list(self.slice_point)} has {len(self.slice_point)} values for "
                    f"{self.num_tops} tops; give exactly {self.num_tops - 1} (one fewer than the tops) or none"
                )
            prev = 0
            for p in self.slice_point:
                # Caffe: CHECK_GT(slice_point[i], prev), with prev starting at 0.
                if p <= prev:
                    raise LayerConfigError(
                        f"Slice: slice_point={list(self.slice_point)} is not allowed; the points must be "
                        "strictly increasing and greater than 0"
                    )
                prev = p

    def sizes(self, dim: int) -> list[int]:
        """The size of each part for an axis of size ``dim`` (Caffe's ``Reshape()`` checks)."""
        if self.num_tops > dim:
            raise InputShapeError(
                f"Slice: {self.num_tops} tops cannot slice an axis of size {dim}; Caffe needs at most "
                f"as many tops as the size of {self.axis_param}={self.axis}"
            )
        if self.slice_point:
            # Caffe's CHECKs would let the last slice be empty, but an empty top blob never gets
            # memory and its first forward fails (Blob::mutable_cpu_data CHECKs data_).
            if self.slice_point[-1] >= dim:
                raise InputShapeError(
                    f"Slice: slice_point={list(self.slice_point)} leaves no elements for the last top of "
                    f"{self.axis_param}={self.axis} of size {dim}; points must be less than {dim}"
                )
            bounds = (0, *self.slice_point, dim)
            return [b - a for a, b in zip(bounds, bounds[1:])]
        if dim % self.num_tops:
            raise InputShapeError(
                f"Slice: {self.num_tops} tops do not evenly divide the size {dim} of "
                f"{self.axis_param}={self.axis}; give slice_point or change the number of tops"
            )
        return [dim // self.num_tops] * self.num_tops

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        axis = canonical_axis("Slice", self.axis_param, self.axis, x.dim())
        sizes = self.sizes(x.shape[axis])
        if self.num_tops == 1:
            return x  # Caffe shares the data
        return tuple(torch.split(x, sizes, dim=axis))

    def caffe_settings(self) -> dict[str, Any]:
        return {self.axis_param: self.axis, "slice_point": list(self.slice_point)}

    def extra_repr(self) -> str:
        return f"num_tops={self.num_tops}, {self.axis_param}={self.axis}, slice_point={list(self.slice_point)}"


class Split(CaffeLayer):
    """Caffe's Split: the input copied to ``num_tops`` tops; their gradients add up, as in
    Caffe's backward (autograd does the sum)."""

    caffe_type = "Split"

    def __init__(self, num_tops: int) -> None:
        super().__init__()
        self.num_tops = _int("Split", "num_tops", num_tops)
        if self.num_tops < 1:
            raise LayerConfigError(f"Split: num_tops={num_tops} is not allowed; a Split has at least one top")

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        # Nothing is ever modified in place, so the tops can be the same tensor.
        return x if self.num_tops == 1 else (x,) * self.num_tops

    def extra_repr(self) -> str:
        return f"num_tops={self.num_tops}"


class Silence(CaffeLayer):
    """Caffe's Silence: consumes its bottoms, produces no tops (so they are not net outputs)."""

    caffe_type = "Silence"

    def forward(self, *bottoms: Tensor) -> tuple[()]:
        return ()


class Flatten(CaffeLayer):
    """Caffe's Flatten: axes ``axis .. end_axis`` (both may be negative) merged into one.

    Caffe's ``count(axis, end_axis + 1)`` also accepts ``end_axis == axis - 1``: the empty range
    then becomes a new axis of size 1, which is reproduced.
    """

    caffe_type = "Flatten"

    def __init__(self, axis: int = 1, end_axis: int = -1) -> None:
        super().__init__()
        self.axis = _int("Flatten", "axis", axis)
        self.end_axis = _int("Flatten", "end_axis", end_axis)

    def forward(self, x: Tensor) -> Tensor:
        shape = tuple(x.shape)
        start = canonical_axis("Flatten", "axis", self.axis, len(shape))
        end = canonical_axis("Flatten", "end_axis", self.end_axis, len(shape))
        if end + 1 < start:
            raise InputShapeError(
                f"Flatten: end_axis={self.end_axis} (axis {end}) comes before axis={self.axis} (axis {start}) "
                f"of the {len(shape)}-D input {shape}; end_axis must be >= axis - 1"
            )
        return x.reshape(*shape[:start], math.prod(shape[start : end + 1]), *shape[end + 1 :])

    def caffe_settings(self) -> dict[str, Any]:
        return {"axis": self.axis, "end_axis": self.end_axis}

    def extra_repr(self) -> str:
        return f"axis={self.axis}, end_axis={self.end_axis}"


class Reshape(CaffeLayer):
    """Caffe's Reshape: input axes ``axis .. axis+num_axes-1`` replaced by ``shape``.

    In ``shape``, ``0`` copies the input's size at the same position (``axis + i``; Caffe copies
    from there even past the replaced span) and ``-1`` (at most one) is inferred from the element
    count.  ``axis`` may be negative (``-1`` is the end: new axes are appended); ``num_axes=-1``
    replaces every axis from ``axis`` on.  Both are resolved at forward time from the input.
    """

    caffe_type = "Reshape"

    def __init__(self, shape: Sequence[int], axis: int = 0, num_axes: int = -1) -> None:
        super().__init__()
        self.shape = _ints("Reshape", "shape", shape)
        self.axis = _int("Reshape", "axis", axis)
        self.num_axes = _int("Reshape", "num_axes", num_axes)
        if self.num_axes < -1:
            raise LayerConfigError(f"Reshape: num_axes={num_axes} is not allowed; use -1 (all) or >= 0")
        bad = [d for d in self.shape if d < -1]
        if bad:
            raise LayerConfigError(
                f"Reshape: shape={list(self.shape)} has {bad[0]}; each dim must be >= 1, 0 (copy) or -1 (infer)"
            )
        if self.shape.count(-1) > 1:
            raise LayerConfigError(
                f"Reshape: shape={list(self.shape)} has {self.shape.count(-1)} dims of -1; at most one may be inferred"
            )

    def top_shape(self, bottom: Sequence[int]) -> tuple[int, ...]:
        """The output shape for an input of shape ``bottom`` (Caffe's ``ReshapeLayer::Reshape``)."""
        bottom = tuple(bottom)
        n = len(bottom)
        start = self.axis if self.axis >= 0 else n + self.axis + 1
        if not 0 <= start <= n:
            raise InputShapeError(
                f"Reshape: axis={self.axis} is out of range for the {n}-D input {bottom}; allowed {-n - 1}..{n}"
            )
        end = n if self.num_axes == -1 else start + self.num_axes
        if end > n:
            raise InputShapeError(
                f"Reshape: axis={self.axis} + num_axes={self.num_axes} goes past the {n} axes of the input {bottom}"
            )
        top = [*bottom[:start], *self.shape, *bottom[end:]]
        for i, d in enumerate(self.shape):
            if d == 0:
                if start + i >= n:
                    raise InputShapeError(
                        f"Reshape: shape={list(self.shape)} has a 0 at position {i}, but the input {bottom} has "
                        f"no axis {start + i} to copy"
                    )
                top[start + i] = bottom[start + i]
        count = math.prod(bottom)
        if -1 in self.shape:
            where = start + self.shape.index(-1)
            known = math.prod(top[:where]) * math.prod(top[where + 1 :])
            if known == 0 or count % known:
                raise InputShapeError(
                    f"Reshape: cannot infer the -1 in shape={format_shape(self.shape)} for the input {bottom}: its "
                    f"{format_count(count)} elements are not a multiple of the other dims' product "
                    f"{format_count(known)}"
                )
            top[where] = count // known
        if math.prod(top) != count:
            raise InputShapeError(
                f"Reshape: shape={format_shape(self.shape)} (axis={self.axis}, num_axes={self.num_axes}) gives "
                f"{format_shape(top)} with {format_count(math.prod(top))} elements, but the input {bottom} has "
                f"{format_count(count)}"
            )
        return tuple(top)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(self.top_shape(x.shape))

    def caffe_settings(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "axis": self.axis, "num_axes": self.num_axes}

    def extra_repr(self) -> str:
        return f"shape={list(self.shape)}, axis={self.axis}, num_axes={self.num_axes}"


class Crop(CaffeLayer):
    """Caffe's Crop: ``x`` cropped to the sizes of ``reference`` on every axis from ``axis`` on.

    ``offset``: none (0), one value for all cropped axes, or one per cropped axis.  Only the shape
    of ``reference`` is used; no gradient reaches it (as in Caffe).  Caffe reads
    ``reference.shape[i]`` for the cropped axes of ``x``, so ``reference`` needs at least as many
    axes as ``x`` (extra ones are ignored).
    """

    caffe_type = "Crop"

    def __init__(self, axis: int = 2, offset: Sequence[int] = ()) -> None:
        super().__init__()
        self.axis = _int("Crop", "axis", axis)
        self.offset = _ints("Crop", "offset", offset)
        if any(o < 0 for o in self.offset):
            raise LayerConfigError(f"Crop: offset={list(self.offset)} is not allowed; offsets are >= 0")

    def forward(self, x: Tensor, reference: Tensor) -> Tensor:
        n = x.dim()
        start = canonical_axis("Crop", "axis", self.axis, n)
        if len(self.offset) > 1 and start + len(self.offset) != n:
            raise InputShapeError(
                f"Crop: offset={list(self.offset)} has {len(self.offset)} values, but axis={self.axis} of the "
                f"{n}-D input crops {n - start} axes; give one value or one per cropped axis"
            )
        if reference.dim() < n:
            raise InputShapeError(
                f"Crop: the reference (second input) has shape {tuple(reference.shape)}, fewer axes than the "
                f"input {tuple(x.shape)}"
            )
        out = x
        for i in range(start, n):
            off = self.offset[0] if len(self.offset) == 1 else self.offset[i - start] if self.offset else 0
            size = reference.shape[i]
            if x.shape[i] - off < size:
                raise InputShapeError(
                    f"Crop: axis {i} of the input {tuple(x.shape)} is too small for size {size} (from the "
                    f"reference {tuple(reference.shape)}) at offset {off}"
                )
            out = out.narrow(i, off, size)
        return out

    def caffe_settings(self) -> dict[str, Any]:
        return {"axis": self.axis, "offset": list(self.offset)}

    def extra_repr(self) -> str:
        return f"axis={self.axis}, offset={list(self.offset)}"


class Permute(CaffeLayer):
    """The SSD fork's Permute: the axes in ``order``, then the axes it omits in their order.

    E.g. ``order=(0, 2, 3, 1)`` is NCHW -> NHWC and ``order=(1,)`` on 4-D input is ``(1, 0, 2, 3)``.
    Orders must be distinct and less than the input's number of axes.
    """

    caffe_type = "Permute"

    def __init__(self, order: Sequence[int] = ()) -> None:
        super().__init__()
        self.order = _ints("Permute", "order", order)
        if any(o < 0 for o in self.order):
            raise LayerConfigError(f"Permute: order={list(self.order)} is not allowed; orders are >= 0")
        if len(set(self.order)) != len(self.order):
            raise LayerConfigError(f"Permute: order={list(self.order)} has duplicate axes; each axis may appear once")

    def full_order(self, ndim: int) -> tuple[int, ...]:
        if any(o >= ndim for o in self.order):
            raise InputShapeError(
                f"Permute: order={list(self.order)} names an axis that a {ndim}-D input does not have; "
                f"orders must be less than {ndim}"
            )
        return (*self.order, *(i for i in range(ndim) if i not in self.order))

    def forward(self, x: Tensor) -> Tensor:
        order = self.full_order(x.dim())
        if order == tuple(range(x.dim())):
            return x  # Caffe shares the data
        # Caffe writes the permuted blob out; a contiguous result keeps later views cheap.
        return x.permute(order).contiguous()

    def caffe_settings(self) -> dict[str, Any]:
        return {"order": list(self.order)}

    def extra_repr(self) -> str:
        return f"order={list(self.order)}"


class Tile(CaffeLayer):
    """Caffe's Tile: the block of axes ``axis..`` repeated ``tiles`` times along ``axis``, i.e.
    ``out[..., t * A + a, ...] = x[..., a, ...]`` for an axis of size ``A``."""

    caffe_type = "Tile"

    def __init__(self, tiles: int, axis: int = 1) -> None:
        super().__init__()
        self.tiles = _int("Tile", "tiles", tiles)
        self.axis = _int("Tile", "axis", axis)
        if self.tiles <= 0:
            raise LayerConfigError(f"Tile: tiles={tiles} is not allowed; the number of tiles must be positive")

    def forward(self, x: Tensor) -> Tensor:
        axis = canonical_axis("Tile", "axis", self.axis, x.dim())
        reps = [1] * x.dim()
        reps[axis] = self.tiles
        return x.repeat(reps)

    def caffe_settings(self) -> dict[str, Any]:
        return {"tiles": self.tiles, "axis": self.axis}

    def extra_repr(self) -> str:
        return f"tiles={self.tiles}, axis={self.axis}"


class ArgMax(CaffeLayer):
    """Caffe's ArgMax: the indices (or values) of the ``top_k`` largest entries.

    With ``axis`` (``None``: not set), along that axis: the output is the input with that axis of
    size ``top_k`` holding indices, or values when ``out_max_val``.  Without, over all of each
    sample's entries: the output has shape ``(N, 1, top_k)`` (padded with 1s to the input's
    number of axes, at least 3), or ``(N, 2, top_k, ...)`` with ``out_max_val`` (channel 0 the
    indices, channel 1 the values).  Indices are in the input's dtype, as in Caffe.  Ties are
    ordered as Caffe's ``std::greater`` on (value, index) pairs orders them: the larger index
    first.  Caffe has no backward for ArgMax; the output carries no gradient.
    """

    caffe_type = "ArgMax"

    def __init__(self, top_k: int = 1, axis: int | None = None, out_max_val: bool = False) -> None:
        super().__init__()
        self.top_k = _int("ArgMax", "top_k", top_k)
        self.axis = None if axis is None else _int("ArgMax", "axis", axis)
        self.out_max_val = bool(out_max_val)
        if self.top_k < 1:
            raise LayerConfigError(f"ArgMax: top_k={top_k} is not allowed; top k must not be less than 1")

    def _top(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Values and indices of the ``top_k`` largest entries along the last dim, Caffe's order."""
        dim = x.shape[-1]
        # A stable descending sort keeps equal values in input order; sorting the reversed input
        # therefore puts the larger original index first, as Caffe does.
        values, rev = torch.sort(x.flip(-1), dim=-1, descending=True, stable=True)
        values, rev = values[..., : self.top_k], rev[..., : self.top_k]
        return values, (dim - 1 - rev).to(x.dtype)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 1:
            raise InputShapeError("ArgMax: needs an input with at least one axis (N, ...)")
        if self.axis is not None:
            axis = canonical_axis("ArgMax", "axis", self.axis, x.dim())
            if self.top_k > x.shape[axis]:
                raise InputShapeError(
                    f"ArgMax: top_k={self.top_k} is larger than the size {x.shape[axis]} of axis={self.axis} "
                    f"of the input {tuple(x.shape)}"
                )
            values, indices = self._top(x.movedim(axis, -1))
            return (values if self.out_max_val else indices).movedim(-1, axis).contiguous()
        flat = x.reshape(x.shape[0], -1)
        if self.top_k > flat.shape[1]:
            raise InputShapeError(
                f"ArgMax: top_k={self.top_k} is larger than the {flat.shape[1]} entries per sample of the "
                f"input {tuple(x.shape)}"
            )
        values, indices = self._top(flat)
        out = torch.stack((indices, values), 1) if self.out_max_val else indices.unsqueeze(1)
        return out.reshape(*out.shape, *(1,) * max(0, x.dim() - 3))

    def caffe_settings(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "axis": self.axis, "out_max_val": self.out_max_val}

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}, axis={self.axis}, out_max_val={self.out_max_val}"


# -- the converters -------------------------------------------------------------------------------


def _require_tops(layer: LayerSpec, ctx: BuildContext, *counts: int, at_least: int | None = None) -> None:
    n = len(layer.tops)
    if at_least is not None and n < at_least:
        raise ctx.error(f"has {n} tops, Caffe's {layer.type} takes at least {at_least}")
    if counts and n not in counts:
        raise ctx.error(f"has {n} tops, Caffe's {layer.type} takes {' or '.join(map(str, counts))}")


def _require_some_bottoms(layer: LayerSpec, ctx: BuildContext) -> None:
    if not layer.bottoms:
        raise ctx.error(f"has no bottoms, Caffe's {layer.type} takes at least 1")


def _not_in_place(layer: LayerSpec, ctx: BuildContext) -> None:
    """Caffe's ``CHECK_NE(top[i], bottom[0])``: "Layer does not allow in-place computation"."""
    for top in layer.tops:
        if top in layer.bottoms:
            raise ctx.error(f"top {top!r} is also its bottom; Caffe's {layer.type} does not allow in-place computation")


def _legacy_axis(ctx: BuildContext, p: Message, legacy: str) -> tuple[int, str]:
    """``axis``, or the legacy uint32 field ``legacy`` (never negative); giving both is an error."""
    if p.HasField("axis") and p.HasField(legacy):
        raise ctx.error(f"sets both axis={p.axis} and {legacy}={getattr(p, legacy)}; give only one", LayerConfigError)
    if p.HasField(legacy):
        value = getattr(p, legacy)
        if value > _INT32_MAX:
            raise ctx.error(f"{legacy}={value} is negative as an int32; it must be >= 0", LayerConfigError)
        return value, legacy
    return p.axis, "axis"


@register_layer("Concat")
def convert_concat(layer: LayerSpec, ctx: BuildContext) -> Concat:
    """``concat_param.axis`` (default 1, may be negative) or the legacy ``concat_dim`` (>= 0)."""
    _require_some_bottoms(layer, ctx)
    _require_tops(layer, ctx, 1)
    axis, name = _legacy_axis(ctx, layer.param.concat_param, "concat_dim")
    return Concat(axis, axis_param=name)


@register_layer("Slice")
def convert_slice(layer: LayerSpec, ctx: BuildContext) -> Slice:
    """``slice_param.axis`` (default 1) or legacy ``slice_dim``; ``slice_point`` or an equal split."""
    ctx.require_bottoms(1)
    _require_tops(layer, ctx, at_least=1)
    p = layer.param.slice_param
    axis, name = _legacy_axis(ctx, p, "slice_dim")
    return Slice(len(layer.tops), axis, list(p.slice_point), axis_param=name)


@register_layer("Split")
def convert_split(layer: LayerSpec, ctx: BuildContext) -> Split:
    """One bottom copied to every top."""
    ctx.require_bottoms(1)
    _require_tops(layer, ctx, at_least=1)
    _not_in_place(layer, ctx)
    return Split(len(layer.tops))


@register_layer("Silence")
def convert_silence(layer: LayerSpec, ctx: BuildContext) -> Silence:
    """Any number (>= 1) of bottoms, no tops."""
    _require_some_bottoms(layer, ctx)
    _require_tops(layer, ctx, 0)
    return Silence()


@register_layer("Flatten")
def convert_flatten(layer: LayerSpec, ctx: BuildContext) -> Flatten:
    """``flatten_param.axis`` (default 1) .. ``end_axis`` (default -1); not in place."""
    ctx.require_bottoms(1)
    _require_tops(layer, ctx, 1)
    _not_in_place(layer, ctx)
    p = layer.param.flatten_param
    return Flatten(p.axis, p.end_axis)


@register_layer("Reshape")
def convert_reshape(layer: LayerSpec, ctx: BuildContext) -> Reshape:
    """``reshape_param.shape`` with 0 = copy and -1 = infer, ``axis`` (default 0) and ``num_axes``
    (default -1); not in place."""
    ctx.require_bottoms(1)
    _require_tops(layer, ctx, 1)
    _not_in_place(layer, ctx)
    p = layer.param.reshape_param
    return Reshape(list(p.shape.dim), p.axis, p.num_axes)


@register_layer("Crop")
def convert_crop(layer: LayerSpec, ctx: BuildContext) -> Crop:
    """Two bottoms (data, reference); ``crop_param.axis`` (default 2) and ``offset``."""
    ctx.require_bottoms(2)
    _require_tops(layer, ctx, 1)
    p = layer.param.crop_param
    return Crop(p.axis, list(p.offset))


@register_layer("Permute")
def convert_permute(layer: LayerSpec, ctx: BuildContext) -> Permute:
    """``permute_param.order``; the axes it omits follow in their order (SSD's ``permute_layer``)."""
    ctx.require_bottoms(1)
    _require_tops(layer, ctx, 1)
    return Permute(list(layer.param.permute_param.order))


@register_layer("Tile")
def convert_tile(layer: LayerSpec, ctx: BuildContext) -> Tile:
    """``tile_param.tiles`` (required, > 0) along ``axis`` (default 1)."""
    ctx.require_bottoms(1)
    _require_tops(layer, ctx, 1)
    p = layer.param.tile_param
    if not p.HasField("tiles"):
        # Caffe: CHECK(tile_param.has_tiles()) "Number of tiles must be specified".
        raise ctx.error("tile_param.tiles is not set; the number of tiles must be specified", LayerConfigError)
    return Tile(p.tiles, p.axis)


@register_layer("ArgMax")
def convert_argmax(layer: LayerSpec, ctx: BuildContext) -> ArgMax:
    """``argmax_param.top_k`` (default 1), ``out_max_val`` (default false) and ``axis``, whose
    presence changes the output's layout (no default)."""
    ctx.require_bottoms(1)
    _require_tops(layer, ctx, 1)
    p = layer.param.argmax_param
    return ArgMax(p.top_k, p.axis if p.HasField("axis") else None, p.out_max_val)


# -- writer ----------------------------------------------------------------------------------------

_PARAM_FIELDS: dict[type, str] = {
    Concat: "concat_param",
    Slice: "slice_param",
    Flatten: "flatten_param",
    Reshape: "reshape_param",
    Crop: "crop_param",
    Permute: "permute_param",
    Tile: "tile_param",
    ArgMax: "argmax_param",
}


@register_writer(*_PARAM_FIELDS)
def write_shape(module: CaffeLayer, layer: Any) -> None:
    """The module's settings into its ``*_param`` (Reshape's shape is a ``BlobShape``; Tile's
    ``tiles`` is required, so always written)."""
    param = param_of(layer, _PARAM_FIELDS, module)
    settings = module.caffe_settings()
    if isinstance(module, Reshape):
        dims = settings.pop("shape")
        del param.shape.dim[:]
        param.shape.dim.extend(dims)
    write_fields(param, settings, keep_defaults=isinstance(module, Tile))
