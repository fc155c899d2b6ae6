"""Layer modules named after the Caffe layer types; keyword arguments are Caffe's field names."""

from caffenorm.nn._base import CaffeLayer
from caffenorm.nn.batch_norm import BatchNorm, BatchNormScale
from caffenorm.nn.lrn import LRN
from caffenorm.nn.normalize import Normalize
from caffenorm.nn.scale import Bias, Scale

__all__ = ["LRN", "BatchNorm", "BatchNormScale", "Bias", "CaffeLayer", "Normalize", "Scale"]
