"""ncnn emitter of Caffe's Eltwise.

ncnn's Eltwise (``src/layer/eltwise.cpp``) has Caffe's three operations under Caffe's numbers
(PROD 0, SUM 1, MAX 2) and SUM's per-input coefficients, applied in input order as Caffe does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from caffenorm.caffe.layers.eltwise import Eltwise
from caffenorm.export.ncnn._model import Blob, EmitContext, ParamValue
from caffenorm.export.ncnn._registry import register_emitter

__all__ = ["emit_eltwise"]

ELTWISE_OP_TYPE: Final = 0
ELTWISE_COEFFS: Final = 1  # array, SUM only
_OPERATIONS: Final = {"PROD": 0, "SUM": 1, "MAX": 2}


@register_emitter(Eltwise)
def emit_eltwise(ctx: EmitContext, module: Eltwise, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Eltwise: 0=op_type (PROD 0, SUM 1, MAX 2), 1=coeffs (array, SUM)."""
    params: dict[int, ParamValue] = {ELTWISE_OP_TYPE: _OPERATIONS[module.operation]}
    if module.operation == "SUM" and module.coeff:
        params[ELTWISE_COEFFS] = [float(c) for c in module.coeff]
    return [ctx.layer("Eltwise", bottoms, params)]
