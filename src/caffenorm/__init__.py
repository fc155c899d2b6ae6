"""caffenorm: Caffe's normalization layers, exactly as Caffe computes them, in PyTorch."""

from caffenorm import functional, optim
from caffenorm.caffe.graph import Graph, Node
from caffenorm.caffe.net import Net, load
from caffenorm.caffe.solver import Solver, TestScores
from caffenorm.errors import (
    BlobError,
    CaffemodelError,
    CaffeNormError,
    ExportError,
    InputShapeError,
    LayerConfigError,
    Location,
    ModelFileError,
    NetDefinitionError,
    PrototxtSyntaxError,
    SolverError,
    UnsupportedLayerError,
)
from caffenorm.functional.lrn import NormRegion
from caffenorm.nn import LRN, BatchNorm, BatchNormScale, Bias, CaffeLayer, Normalize, Scale
from caffenorm.precision import full_float32
from caffenorm.transform import Transform, load_image, transform_batch, transform_image

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
    "ExportError",
    "Graph",
    "InputShapeError",
    "LayerConfigError",
    "Location",
    "ModelFileError",
    "Net",
    "NetDefinitionError",
    "Node",
    "NormRegion",
    "Normalize",
    "PrototxtSyntaxError",
    "Scale",
    "Solver",
    "SolverError",
    "TestScores",
    "Transform",
    "UnsupportedLayerError",
    "__version__",
    "full_float32",
    "functional",
    "optim",
    "load",
    "load_image",
    "transform_batch",
    "transform_image",
]
