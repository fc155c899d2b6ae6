"""Functional form of the layers: these own the math; the modules in :mod:`caffenorm.nn` own the
configuration.  ``import caffenorm.functional as CF``."""

from caffenorm.functional.batch_norm import batch_norm, bias, scale
from caffenorm.functional.lrn import NormRegion, lrn
from caffenorm.functional.normalize import normalize

__all__ = ["NormRegion", "batch_norm", "bias", "lrn", "normalize", "scale"]
