"""The one exception hierarchy of caffenorm.

Every error a user can trigger with bad input derives from :class:`CaffeNormError`, so
``except caffenorm.CaffeNormError`` catches all of them.  Messages name the layer type (and, where
known, the layer name), the offending parameter or blob, the value received, what is allowed and
the likely fix.  Configuration and shape errors also derive from :class:`ValueError`, so code
written against plain torch layers keeps working.

Where an error happened in a model file is data, not text: :class:`Location` (file, line, column,
layer name and type) is attached to the error as ``err.location`` and formatted once, by
``str(err)``, as ``file:line[:column]: layer 'name' (Type): message``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "BlobError",
    "CaffeNormError",
    "CaffemodelError",
    "ExportError",
    "InputShapeError",
    "LayerConfigError",
    "Location",
    "ModelFileError",
    "NetDefinitionError",
    "PrototxtSyntaxError",
    "SolverError",
    "UnsupportedLayerError",
    "format_count",
    "format_shape",
    "summarize",
]

# Longest ``str(err)``: a message that lists a whole net (every layer of a mismatched caffemodel,
# a 5000-digit number from a fuzzed file) would bury its point; the tail is cut with a count.
MAX_MESSAGE_CHARS = 1000

E = TypeVar("E", bound="CaffeNormError")


@dataclass(frozen=True)
class Location:
    """Where in a model something is: a file, a line and column in it, a layer (name and type)."""

    file: str | None = None
    line: int | None = None
    column: int | None = None
    layer: str | None = None
    type: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.file:
            place = self.file
            if self.line:
                place += f":{self.line}"
                if self.column:
                    place += f":{self.column}"
            parts.append(place)
        if self.layer is not None:
            parts.append(f"layer {self.layer!r}" + (f" ({self.type})" if self.type else ""))
        return ": ".join(parts)


class CaffeNormError(Exception):
    """Base class of every error raised by caffenorm for bad input.

    ``message`` is the bare description; ``location`` (a :class:`Location` or None) says where.
    """

    def __init__(self, message: str = "", *, location: Location | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.location = location

    def at(self: E, location: Location | None) -> E:
        """Attach ``location`` unless the error already has one (the innermost place wins)."""
        if self.location is None and location is not None:
            self.location = location
        return self

    def __str__(self) -> str:
        if self.location is None:
            return _cap(self.message)
        message = self.message
        # A message from a layer module starts with its type ("LRN: ..."), which the location
        # already names.
        if self.location.type and message.startswith(f"{self.location.type}: "):
            message = message[len(self.location.type) + 2 :]
        where = str(self.location)
        return _cap(f"{where}: {message}" if where else message)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return _rebuild, (type(self), self.message, self.location)


def _rebuild(cls: type[CaffeNormError], message: str, location: Location | None) -> CaffeNormError:
    return cls(message, location=location)


def _cap(text: str) -> str:
    """``text`` cut to :data:`MAX_MESSAGE_CHARS`, saying how much was left out.  The middle goes:
    a message starts with what is wrong and ends with the fix, and both must stay."""
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    head, tail = MAX_MESSAGE_CHARS * 6 // 10, MAX_MESSAGE_CHARS * 3 // 10
    return f"{text[:head]} ... ({len(text) - head - tail:,} characters left out) ... {text[-tail:]}"


def format_count(n: int) -> str:
    """A count (elements, bytes) for a message, never a gigantic digit string: ``1,234,567``,
    ``1.23e+40`` beyond 10**15, ``more than 2**4000`` beyond float range (Python refuses to print
    ints of more than 4300 digits, and nobody reads them)."""
    n = int(n)
    if abs(n) < 10**15:
        return f"{n:,}"
    if n.bit_length() < 1000:
        return f"{float(n):.3g}"
    return f"{'-' if n < 0 else ''}more than 2**{n.bit_length() - 1}"


def format_shape(shape: object, max_axes: int = 8) -> str:
    """A shape for a message: ``(1, 3, 224, 224)``; huge dimensions through :func:`format_count`,
    more than ``max_axes`` axes shortened to the first and last ones and the axis count."""
    try:
        dims = [d if d is None else int(d) for d in shape]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return repr(shape)[:200]
    text = ["?" if d is None else (str(d) if abs(d) < 10**15 else format_count(d)) for d in dims]
    if len(text) > max_axes:
        return f"({', '.join(text[: max_axes - 2])}, ..., {text[-1]}; {len(text)} axes)"
    return f"({text[0]},)" if len(text) == 1 else f"({', '.join(text)})"


def summarize(items: object, first: int = 5) -> str:
    """``a, b, c`` -- or the ``first`` ones and how many more: ``a, b, c, d, e and 155 more``."""
    names = [str(item) for item in items]  # type: ignore[attr-defined]
    if len(names) <= first:
        return ", ".join(names)
    return f"{', '.join(names[:first])} and {len(names) - first:,} more"


class LayerConfigError(CaffeNormError, ValueError):
    """A layer parameter has a value Caffe does not accept (e.g. an even ``local_size``)."""


class InputShapeError(CaffeNormError, ValueError):
    """A tensor given to a layer has the wrong rank or a size that contradicts the layer's blobs."""


class BlobError(CaffeNormError, ValueError):
    """Blobs given to ``load_caffe_blobs`` have the wrong count or shape."""


class ModelFileError(CaffeNormError):
    """A model file cannot be read: missing, truncated, corrupted or not a Caffe file."""


class PrototxtSyntaxError(ModelFileError):
    """A ``.prototxt`` does not parse; the location gives the file, line and column."""


class CaffemodelError(ModelFileError):
    """A ``.caffemodel`` is truncated, corrupted, or does not fit the prototxt."""


class NetDefinitionError(CaffeNormError, ValueError):
    """The net itself is inconsistent: a bottom no layer produces, a Reshape whose sizes do not add
    up, dimensions too large to allocate, ..."""


class UnsupportedLayerError(CaffeNormError):
    """A layer type (or a setting of it) that caffenorm does not implement."""


class ExportError(CaffeNormError):
    """A net cannot be carried out of eager PyTorch exactly (a tracer, an exporter, a dtype): the
    message says what cannot be kept and how to get an exact result instead."""


class SolverError(CaffeNormError, ValueError):
    """A solver definition (``solver.prototxt``) or solver state (``.solverstate``) that Caffe
    would refuse or that does not fit the net: an unknown field or solver type, a ``step`` policy
    without a positive ``stepsize``, ``iter_size: 0``, a missing net file, a state whose history
    blobs belong to another net...  The message names the file, the field and the value."""
