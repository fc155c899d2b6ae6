"""The exporter families, loaded on demand, and the mapping table they make.

Kept apart from the registry so that the registry imports nothing above it (the families import
the registry to register themselves).
"""

from __future__ import annotations

__all__ = ["load_families", "mapping_table"]


def load_families() -> None:
    """Import the family modules, registering their exporters (once; later calls are free)."""
    # Imported for their side effect: each module's decorators register its exporters.
    import caffenorm.export.onnx.activation
    import caffenorm.export.onnx.conv
    import caffenorm.export.onnx.detection
    import caffenorm.export.onnx.eltwise
    import caffenorm.export.onnx.inner_product
    import caffenorm.export.onnx.input
    import caffenorm.export.onnx.loss
    import caffenorm.export.onnx.norm
    import caffenorm.export.onnx.pooling
    import caffenorm.export.onnx.shape  # noqa: F401 - all ten: registered by importing


def mapping_table() -> list[tuple[str, str, str]]:
    """``(Caffe type, module class name, ONNX summary)`` for every module class with an exporter,
    sorted by Caffe type: the first paragraph of each exporter's docstring (refusals start with
    "Refused").  Data layers (Data, ImageData, ...) build the same module as Input and share its row."""
    from caffenorm.export.onnx._registry import registered

    load_families()
    rows = [(getattr(cls, "caffe_type", "") or cls.__name__, cls.__name__, reg.summary())
            for cls, reg in registered().items()]
    return sorted(rows, key=lambda r: (r[0].lower(), r[1]))
