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
]

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
            return self.message
        message = self.message
        # A message from a layer module starts with its type ("LRN: ..."), which the location
        # already names.
        if self.location.type and message.startswith(f"{self.location.type}: "):
            message = message[len(self.location.type) + 2 :]
        where = str(self.location)
        return f"{where}: {message}" if where else message

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return _rebuild, (type(self), self.message, self.location)


def _rebuild(cls: type[CaffeNormError], message: str, location: Location | None) -> CaffeNormError:
    return cls(message, location=location)


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
