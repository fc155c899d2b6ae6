"""caffenorm: Caffe's normalization layers, exactly as Caffe computes them, in PyTorch."""

from caffenorm import functional
from caffenorm.errors import BlobError, CaffeNormError, InputShapeError, LayerConfigError
from caffenorm.functional.lrn import NormRegion
from caffenorm.nn import LRN, BatchNorm, BatchNormScale, Bias, CaffeLayer, Normalize, Scale

__version__ = "0.1.0"

__all__ = [
    "LRN",
    "BatchNorm",
    "BatchNormScale",
    "Bias",
    "BlobError",
    "CaffeLayer",
    "CaffeNormError",
    "InputShapeError",
    "LayerConfigError",
    "NormRegion",
    "Normalize",
    "Scale",
    "__version__",
    "functional",
]
