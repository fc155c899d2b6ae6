"""The registry of layer converters: Caffe type string -> function building the layer's module.

A converter is ``fn(layer: LayerSpec, ctx: BuildContext) -> CaffeLayer``.  The module it returns is
called with the layer's bottoms as positional tensors and returns one tensor per top (a tuple when
there are several).  Its ``caffe_blobs()`` / ``load_caffe_blobs()`` give the layer's blobs in
Caffe's order.  Adding a layer type is one converter in the family module under
``caffenorm/caffe/layers/`` plus its test.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from google.protobuf.message import Message
from torch import Tensor

from caffenorm.caffe.fillers import check_filler, fill
from caffenorm.caffe.spec import LayerSpec
from caffenorm.errors import CaffeNormError, NetDefinitionError, UnsupportedLayerError
from caffenorm.nn._base import CaffeLayer

__all__ = [
    "MAX_ELEMENTS",
    "BuildContext",
    "Converter",
    "get_converter",
    "layer_table",
    "register_layer",
    "supported_layers",
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

    def error(self, message: str, cls: type[CaffeNormError] = NetDefinitionError) -> CaffeNormError:
        return cls(f"{self.layer.where()}: {message}")

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

    def check_elements(self, shape: Sequence[int], what: str) -> None:
        """Refuse absurd sizes before allocating."""
        if any(int(d) < 0 for d in shape):
            raise self.error(f"{what} of shape {tuple(shape)} has a negative dimension")
        count = math.prod(int(d) for d in shape)
        if count > MAX_ELEMENTS:
            raise self.error(
                f"{what} of shape {tuple(shape)} has {count:,} elements (limit {MAX_ELEMENTS:,}); "
                "check the prototxt's sizes"
            )

    def fill(self, tensor: Tensor, filler: Message | None) -> None:
        """Initialise ``tensor`` in place from a Caffe ``FillerParameter`` (as Caffe would on setup)."""
        if filler is None:
            return
        try:
            if self.deferred_fills is not None:
                check_filler(filler)
                self.deferred_fills.append((tensor, filler))
            else:
                fill(tensor, filler, self.generator)
        except CaffeNormError as err:
            raise self.error(str(err), type(err)) from None


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
    """Every Caffe layer type caffenorm can build, sorted."""
    _load_families()
    return sorted(_CONVERTERS)


def layer_table() -> list[tuple[str, str, str]]:
    """(Caffe type, family module, first line of the converter's docstring) for every type."""
    _load_families()
    rows = []
    for caffe_type in sorted(_CONVERTERS):
        fn = _CONVERTERS[caffe_type]
        summary = (fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        rows.append((caffe_type, fn.__module__.rsplit(".", 1)[-1], " ".join(summary.split())))
    return rows


def get_converter(layer: LayerSpec) -> Converter:
    _load_families()
    try:
        return _CONVERTERS[layer.type]
    except KeyError:
        close = difflib.get_close_matches(layer.type, _CONVERTERS, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UnsupportedLayerError(
            f"{layer.where()}: layer type {layer.type!r} is not supported; {hint}"
            f"supported types: {', '.join(sorted(_CONVERTERS))}"
        ) from None


def _load_families() -> None:
    # Importing the family modules registers their converters (deferred to avoid an import cycle).
    import caffenorm.caffe.layers  # noqa: F401
