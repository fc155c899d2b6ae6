"""Layer families: each module holds the converters (Caffe type -> module), the Caffe-only
modules and the writers of one family.  Importing this package registers them all."""

from caffenorm.caffe.layers import (  # noqa: F401 - imported to register the converters and writers
    activation,
    conv,
    detection,
    eltwise,
    inner_product,
    input,
    loss,
    norm,
    pooling,
    shape,
)
from caffenorm.caffe.registry import layer_table, supported_layers

__all__ = ["layer_table", "supported_layers"]
