"""The one exception hierarchy of caffenorm.

Every error a user can trigger with bad input derives from :class:`CaffeNormError`, so
``except caffenorm.CaffeNormError`` catches all of them.  Messages name the layer type (and, where
known, the layer name), the offending parameter or blob, the value received, what is allowed and
the likely fix.  Configuration and shape errors also derive from :class:`ValueError`, so code
written against plain torch layers keeps working.
"""

from __future__ import annotations

__all__ = [
    "CaffeNormError",
    "LayerConfigError",
    "InputShapeError",
    "BlobError",
    "ModelFileError",
    "PrototxtSyntaxError",
    "CaffemodelError",
    "NetDefinitionError",
    "UnsupportedLayerError",
]


class CaffeNormError(Exception):
    """Base class of every error raised by caffenorm for bad input."""


class LayerConfigError(CaffeNormError, ValueError):
    """A layer parameter has a value Caffe does not accept (e.g. an even ``local_size``)."""


class InputShapeError(CaffeNormError, ValueError):
    """A tensor given to a layer has the wrong rank or a size that contradicts the layer's blobs."""


class BlobError(CaffeNormError, ValueError):
    """Blobs given to ``load_caffe_blobs`` have the wrong count or shape."""


class ModelFileError(CaffeNormError):
    """A model file cannot be read: missing, truncated, corrupted or not a Caffe file."""


class PrototxtSyntaxError(ModelFileError):
    """A ``.prototxt`` does not parse; the message starts with ``file:line:column``."""


class CaffemodelError(ModelFileError):
    """A ``.caffemodel`` is truncated, corrupted, or does not fit the prototxt."""


class NetDefinitionError(CaffeNormError, ValueError):
    """The net itself is inconsistent: a bottom no layer produces, a Reshape whose sizes do not add
    up, dimensions too large to allocate, ..."""


class UnsupportedLayerError(CaffeNormError):
    """A layer type (or a setting of it) that caffenorm does not implement."""
