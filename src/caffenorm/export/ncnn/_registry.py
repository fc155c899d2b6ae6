"""The registry of ncnn emitters, keyed by layer module class.

An emitter is ``fn(ctx, module, bottoms) -> tops``: it reads the layer's module (its settings and
blobs, never the prototxt), adds ncnn layers through the
:class:`~caffenorm.export.ncnn._model.EmitContext` and returns one ncnn blob per Caffe top.  The
first line of its docstring says what the layer maps to; :func:`mapping_table` collects those
lines (the README's table).

Lookup follows the class hierarchy (``type(module).__mro__``); registering a class twice is an
error.  The family modules register themselves when imported
(:mod:`caffenorm.export.ncnn._families` imports them all).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from caffenorm.export.ncnn._model import Blob, EmitContext

__all__ = ["Emitter", "get_emitter", "mapping_table", "register_emitter"]

# Returns one blob per Caffe top (None only for an input ncnn cannot take).
Emitter = Callable[["EmitContext", Any, Sequence["Blob"]], Sequence["Blob | None"]]

_EMITTERS: dict[type, Emitter] = {}


def register_emitter(*module_classes: type) -> Callable[[Emitter], Emitter]:
    """Register the decorated function as the ncnn emitter of each of ``module_classes``.

    Raises ValueError when a class already has an emitter (one mapping per class, so the table
    and the behaviour cannot disagree)."""

    def decorate(fn: Emitter) -> Emitter:
        for cls in module_classes:
            if cls in _EMITTERS:
                raise ValueError(
                    f"{cls.__name__} already has an ncnn emitter ({_EMITTERS[cls].__qualname__}); "
                    f"cannot register {fn.__qualname__} too"
                )
            _EMITTERS[cls] = fn
        return fn

    return decorate


def get_emitter(module: Any) -> Emitter | None:
    """The emitter of ``module``'s class or of its nearest registered base class; None if none
    (the family modules must have been imported: :func:`caffenorm.export.ncnn._families.get_emitter`)."""
    for cls in type(module).__mro__:
        if cls in _EMITTERS:
            return _EMITTERS[cls]
    return None


def summary(fn: Emitter) -> str:
    """The first line of an emitter's docstring: what the layer becomes in ncnn."""
    doc = (fn.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def mapping_table() -> list[tuple[str, str, str]]:
    """``(Caffe type, module class name, ncnn layers)`` for every registered module class, sorted
    by Caffe type; the third column is the first line of the emitter's docstring."""
    rows = [(getattr(cls, "caffe_type", "") or cls.__name__, cls.__name__, summary(fn)) for cls, fn in _EMITTERS.items()]
    return sorted(rows, key=lambda row: (row[0].lower(), row[1]))
