"""The registry of ONNX exporters, keyed by layer module class.

An exporter is ``fn(node, ctx) -> None``: it reads the node's module (settings and blobs) and
emits ONNX nodes and initializers through the :class:`~caffenorm.export.onnx._context.ExportContext`,
binding each of the node's tops to an ONNX value.  The first line of its docstring says what the
layer maps to; :func:`caffenorm.export.onnx.mapping_table` collects those lines (the README's table).

Lookup follows the class hierarchy (``type(module).__mro__``), like the writers' registry in
:mod:`caffenorm.caffe.registry`; registering a class twice is an error.  An exporter that only
explains why a layer cannot be exported is registered with ``refuses=True``; it is called before
anything else is done for its node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from caffenorm.caffe.graph import Node
    from caffenorm.export.onnx._context import ExportContext

__all__ = ["Exporter", "Registered", "get_exporter", "register_exporter", "registered"]

Exporter = Callable[["Node", "ExportContext"], None]


@dataclass(frozen=True)
class Registered:
    """An exporter and whether it only refuses (raises an :class:`~caffenorm.ExportError` saying why)."""

    fn: Exporter
    refuses: bool = False

    def summary(self) -> str:
        """The first paragraph of the exporter's docstring, on one line."""
        doc = (self.fn.__doc__ or "").strip().split("\n\n")[0]
        return " ".join(doc.split())


_EXPORTERS: dict[type, Registered] = {}


def register_exporter(*module_classes: type, refuses: bool = False) -> Callable[[Exporter], Exporter]:
    """Register ``fn`` as the ONNX exporter of each module class; a class registered twice is an error."""

    def decorate(fn: Exporter) -> Exporter:
        for cls in module_classes:
            if cls in _EXPORTERS:
                raise ValueError(f"{cls.__name__} already has an ONNX exporter: {_EXPORTERS[cls].fn.__qualname__}")
            _EXPORTERS[cls] = Registered(fn, refuses)
        return fn

    return decorate


def registered() -> dict[type, Registered]:
    """Every registered module class and its exporter (a copy)."""
    return dict(_EXPORTERS)


def get_exporter(module: Any) -> Registered | None:
    """The exporter of ``module``'s class or of its nearest registered base; None if there is none."""
    for cls in type(module).__mro__:
        if cls in _EXPORTERS:
            return _EXPORTERS[cls]
    return None
