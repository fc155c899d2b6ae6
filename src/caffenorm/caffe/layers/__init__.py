"""Layer converters, one family per module; importing this package registers them all."""

from caffenorm.caffe.layers import (  # noqa: F401
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
