"""The registries of the Caffe layer families: converters (Caffe type -> module) and writers
(module -> Caffe ``LayerParameter``).

A converter is ``fn(layer: LayerSpec, ctx: BuildContext) -> CaffeLayer``.  The module it returns is
called with the layer's bottoms as positional tensors and returns one tensor per top (a tuple when
there are several).  Its ``caffe_blobs()`` / ``load_caffe_blobs()`` give the layer's blobs in
Caffe's order, and ``caffe_settings()`` its configuration in Caffe's field names.

A writer is ``fn(module, layer: LayerParameter) -> None``: it writes the module's current settings
into ``layer`` (a copy of the definition the layer was read from, so fields the module does not
model, such as fillers or ``engine``, are kept).  Adding a layer type is one converter (and, if its
module has settings, one writer) in the family module under ``caffenorm/caffe/layers/`` plus its
test.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from google.protobuf.message import Message
from torch import Tensor

from caffenorm.caffe.fillers import check_filler, fill
from caffenorm.caffe.memory import Budget
from caffenorm.caffe.spec import LayerSpec
from caffenorm.errors import (
    CaffeNormError,
    LayerConfigError,
    NetDefinitionError,
    UnsupportedLayerError,
    format_count,
    format_shape,
)
from caffenorm.nn._base import CaffeLayer

__all__ = [
    "MAX_ELEMENTS",
    "BuildContext",
    "Converter",
    "Writer",
    "get_converter",
    "get_writer",
    "is_repeated",
    "layer_table",
    "register_layer",
    "register_writer",
    "supported_layers",
    "write_fields",
]

# A blob or parameter larger than this is refused before anything is allocated (2**31 floats =
# 8 GiB): a typo in a prototxt should be an error, not an out-of-memory kill.
MAX_ELEMENTS = 2**31


@dataclass
class BuildContext:
    """What a converter may use besides the layer itself: bottom shapes, phase, a seeded generator
    for fillers, and helpers that raise errors naming the layer."""

    layer: LayerSpec
    bottom_shapes: Sequence[tuple[int, ...] | None]
    phase: str
    generator: torch.Generator = field(default_factory=torch.Generator)
    # When set, fills are recorded here instead of run (weights will come from a caffemodel).
    deferred_fills: list[tuple[Tensor, Message]] | None = None
    # The net's memory budget: blobs checked with check_elements are counted before allocation.
    budget: Budget | None = None

    def error(self, message: str, cls: type[CaffeNormError] = NetDefinitionError) -> CaffeNormError:
        return cls(message, location=self.layer.location)

    def shape(self, index: int = 0) -> tuple[int, ...]:
        """The shape of bottom ``index``; an error if it is not known before the first forward."""
        if index >= len(self.bottom_shapes):
            raise self.error(f"needs at least {index + 1} bottom(s), has {len(self.bottom_shapes)}")
        shape = self.bottom_shapes[index]
        if shape is None:
            raise self.error(
                f"needs the shape of bottom {self.layer.bottoms[index]!r} to be built, and it is unknown; "
                "pass input_shapes={...} to caffenorm.load"
            )
        return shape

    def require_bottoms(self, *counts: int) -> None:
        if len(self.layer.bottoms) not in counts:
            allowed = " or ".join(map(str, counts))
            raise self.error(f"has {len(self.layer.bottoms)} bottoms, Caffe's {self.layer.type} takes {allowed}")

    def require_tops(self, *counts: int) -> None:
        if len(self.layer.tops) not in counts:
            allowed = " or ".join(map(str, counts))
            raise self.error(f"has {len(self.layer.tops)} tops, Caffe's {self.layer.type} takes {allowed}")

    def check_elements(self, shape: Sequence[int], what: str, *, blob: bool = True) -> None:
        """Refuse absurd sizes before allocating: a negative dimension, more than
        :data:`MAX_ELEMENTS` elements, or (for a parameter blob, ``blob=True``) a net that would no
        longer fit the memory budget.  Counts are Python ints (no overflow, whatever the dims)."""
        if any(int(d) < 0 for d in shape):
            raise self.error(f"{what} of shape {format_shape(shape)} has a negative dimension")
        count = math.prod(int(d) for d in shape)
        if count > MAX_ELEMENTS:
            raise self.error(
                f"{what} of shape {format_shape(shape)} has {format_count(count)} elements (limit "
                f"{MAX_ELEMENTS:,}); check the prototxt's sizes"
            )
        if blob and self.budget is not None:
            self.budget.add_params(shape, f"{what} of layer {self.layer.name!r}", self.layer.location)

    def fill(self, tensor: Tensor, filler: Message | None) -> None:
        """Initialise ``tensor`` in place from a Caffe ``FillerParameter`` (as Caffe would on setup)."""
        if filler is None:
            return
        try:
            # Checked now, as Caffe checks at set-up, even if a caffemodel will replace the values.
            check_filler(filler, tuple(tensor.shape))
            if self.deferred_fills is not None:
                self.deferred_fills.append((tensor, filler))
            else:
                fill(tensor, filler, self.generator)
        except CaffeNormError as err:
            raise err.at(self.layer.location) from None


Converter = Callable[[LayerSpec, BuildContext], CaffeLayer]
_CONVERTERS: dict[str, Converter] = {}


def register_layer(*caffe_types: str) -> Callable[[Converter], Converter]:
    """Register ``fn`` as the converter of each Caffe type string; a type registered twice is an error."""

    def decorate(fn: Converter) -> Converter:
        for caffe_type in caffe_types:
            if caffe_type in _CONVERTERS:
                raise ValueError(
                    f"Caffe type {caffe_type!r} already has a converter: {_CONVERTERS[caffe_type].__qualname__}"
                )
            _CONVERTERS[caffe_type] = fn
        return fn

    return decorate


def supported_layers() -> list[str]:
    """Every registered Caffe layer type, sorted (all of them once :mod:`caffenorm.caffe.layers`
    is imported)."""
    return sorted(_CONVERTERS)


def layer_table() -> list[tuple[str, str, str]]:
    """(Caffe type, family module, first line of the converter's docstring) for every type."""
    rows = []
    for caffe_type in sorted(_CONVERTERS):
        fn = _CONVERTERS[caffe_type]
        summary = (fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        rows.append((caffe_type, fn.__module__.rsplit(".", 1)[-1], " ".join(summary.split())))
    return rows


def get_converter(layer: LayerSpec) -> Converter:
    try:
        return _CONVERTERS[layer.type]
    except KeyError:
        close = difflib.get_close_matches(layer.type, _CONVERTERS, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UnsupportedLayerError(
            f"layer type {layer.type!r} is not supported; {hint}supported types: {', '.join(sorted(_CONVERTERS))}",
            location=layer.location,
        ) from None


Writer = Callable[[Any, Message], None]
_WRITERS: dict[type, Writer] = {}


def register_writer(*module_classes: type) -> Callable[[Writer], Writer]:
    """Register ``fn`` as the writer of each module class; a class registered twice is an error."""

    def decorate(fn: Writer) -> Writer:
        for cls in module_classes:
            if cls in _WRITERS:
                raise ValueError(f"{cls.__name__} already has a writer: {_WRITERS[cls].__qualname__}")
            _WRITERS[cls] = fn
        return fn

    return decorate


def get_writer(module: CaffeLayer) -> Writer | None:
    """The writer of ``module``'s class (or of its nearest registered base); None when the layer has
    no settings beyond its definition (Sigmoid, Split, ...), which is then written as read."""
    for cls in type(module).__mro__:
        if cls in _WRITERS:
            return _WRITERS[cls]
    return None


def write_fields(message: Message, settings: Mapping[str, Any], *, keep_defaults: bool = False) -> None:
    """Write ``settings`` (Caffe field name -> plain value) into the protobuf ``message``.

    Enum fields take their value's name; repeated fields a sequence; ``None`` clears the field
    (for fields whose *presence* means something, e.g. BatchNorm's ``use_global_stats``).  A value
    equal to the field's default is only written if the field was already set (or with
    ``keep_defaults``), so a saved prototxt stays as short as the one read.
    """
    for name, value in settings.items():
        field = message.DESCRIPTOR.fields_by_name.get(name)
        if field is None:
            raise LayerConfigError(f"{message.DESCRIPTOR.name} has no field {name!r}")
        if value is None:
            message.ClearField(name)
            continue
        if is_repeated(field):
            values = [_enum_number(field, v) for v in value] if field.enum_type else list(value)
            del getattr(message, name)[:]
            getattr(message, name).extend(values)
            continue
        if field.enum_type:
            value = _enum_number(field, value)
        elif field.type == field.TYPE_BOOL:
            value = bool(value)
        elif field.cpp_type in (field.CPPTYPE_FLOAT, field.CPPTYPE_DOUBLE):
            value = float(value)
        elif field.cpp_type in (field.CPPTYPE_INT32, field.CPPTYPE_INT64, field.CPPTYPE_UINT32, field.CPPTYPE_UINT64):
            value = int(value)
        present = message.HasField(name)
        if not present and not keep_defaults and _equal_default(field, value):
            continue
        setattr(message, name, value)


def is_repeated(field: Any) -> bool:
    """Whether a protobuf field is repeated (``is_repeated`` since protobuf 5.x, ``label`` before)."""
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return bool(field.label == field.LABEL_REPEATED)


def _enum_number(field: Any, value: Any) -> int:
    if isinstance(value, str):
        try:
            return int(field.enum_type.values_by_name[value.upper()].number)
        except KeyError:
            allowed = ", ".join(field.enum_type.values_by_name)
            raise LayerConfigError(f"{field.full_name}: {value!r} is not one of {allowed}") from None
    return int(value)


def _equal_default(field: Any, value: Any) -> bool:
    default = field.default_value
    if field.cpp_type == field.CPPTYPE_FLOAT:
        # A float field holds float32: compare what would be stored.
        return bool(np.float32(value) == np.float32(default))
    return bool(value == default)
