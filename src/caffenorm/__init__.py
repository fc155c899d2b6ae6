"""caffenorm: Caffe's normalization layers, exactly as Caffe computes them, in PyTorch."""

from caffenorm import functional
from caffenorm.errors import (
    BlobError,
    CaffemodelError,
    CaffeNormError,
    InputShapeError,
    LayerConfigError,
    ModelFileError,
    NetDefinitionError,
    PrototxtSyntaxError,
    UnsupportedLayerError,
)
from caffenorm.functional.lrn import NormRegion
from caffenorm.caffe.net import Net, load
from caffenorm.nn import LRN, BatchNorm, BatchNormScale, Bias, CaffeLayer, Normalize, Scale

__version__ = "0.1.0"

__all__ = [
    "LRN",
    "BatchNorm",
    "BatchNormScale",
    "Bias",
    "BlobError",
    "CaffemodelError",
    "CaffeLayer",
    "CaffeNormError",
    "InputShapeError",
    "LayerConfigError",
    "ModelFileError",
    "Net",
    "NetDefinitionError",
    "NormRegion",
    "Normalize",
    "PrototxtSyntaxError",
    "Scale",
    "UnsupportedLayerError",
    "__version__",
    "functional",
    "load",
]
