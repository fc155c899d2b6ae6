"""The ncnn emitter families, imported (and so registered) together: what the exporter and the
mapping table look up."""

from __future__ import annotations

from typing import Any

# Each family module registers its emitters when imported.
import caffenorm.export.ncnn.activation
import caffenorm.export.ncnn.conv
import caffenorm.export.ncnn.detection
import caffenorm.export.ncnn.eltwise
import caffenorm.export.ncnn.inner_product
import caffenorm.export.ncnn.input
import caffenorm.export.ncnn.norm
import caffenorm.export.ncnn.pooling
import caffenorm.export.ncnn.shape  # noqa: F401
from caffenorm.export.ncnn._registry import Emitter
from caffenorm.export.ncnn._registry import get_emitter as _registered
from caffenorm.export.ncnn._registry import mapping_table as _table

__all__ = ["get_emitter", "mapping_table"]


def get_emitter(module: Any) -> Emitter | None:
    """The ncnn emitter of a layer module (its class's or its nearest registered base's), or None."""
    return _registered(module)


def mapping_table() -> list[tuple[str, str, str]]:
    """``(Caffe type, module class name, ncnn layers)`` for every layer module class with an ncnn
    emitter, sorted by Caffe type; the third column is the first line of the emitter's docstring
    (the README's table)."""
    return _table()
