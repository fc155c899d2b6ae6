"""ncnn emitter of Caffe's InnerProduct.

ncnn's InnerProduct (``src/layer/innerproduct.cpp``) flattens a 1-D, 3-D or 4-D blob (channel by
channel, row-major: Caffe's order) and gives a 1-D blob; a 2-D blob whose rows have ``num_input``
values is taken as a batch of rows (one output row each).  Caffe's ``axis`` keeps the axes before
it: with ``axis`` 1 the image is flattened (a 2-D image is reshaped to 1-D first, or ncnn would
take it as rows); with a later axis the leading axes become rows of a 2-D blob, reshaped back
after.  Weights ``(num_output, K)`` (tagged, as ncnn reads them), ``transpose: true`` blobs
transposed to that layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from caffenorm.caffe.layers.inner_product import InnerProduct
from caffenorm.export.ncnn._model import Blob, EmitContext, Weight, float32_array
from caffenorm.export.ncnn._registry import register_emitter

__all__ = ["emit_inner_product"]

# ncnn InnerProduct; weights: weight [num_output x num_input] (tagged), bias [num_output]
INNERPRODUCT_NUM_OUTPUT: Final = 0
INNERPRODUCT_BIAS_TERM: Final = 1
INNERPRODUCT_WEIGHT_DATA_SIZE: Final = 2


@register_emitter(InnerProduct)
def emit_inner_product(ctx: EmitContext, module: InnerProduct, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn InnerProduct: 0=num_output, 1=bias_term, 2=weight_data_size; a Reshape before it for a 2-D image or axis > 1 (rows), and after it for axis > 2."""
    (x,) = bottoms
    first = ctx.axis(module.axis, len(x.shape) + 1)
    lead, k = x.shape[:first], math.prod(x.shape[first:])
    weight = float32_array(module.weight).reshape(module.weight.shape)
    if module.transpose:
        weight = weight.T  # Caffe's transposed blob is (K, num_output)
    params = {
        INNERPRODUCT_NUM_OUTPUT: module.num_output,
        INNERPRODUCT_BIAS_TERM: int(module.bias is not None),
        INNERPRODUCT_WEIGHT_DATA_SIZE: weight.size,
    }
    weights = [Weight(weight.reshape(-1).copy(), tagged=True)]
    if module.bias is not None:
        weights.append(Weight(float32_array(module.bias)))
    if not lead:
        source = ctx.reshape(x, (k,), suffix="flatten") if len(x.shape) == 2 else x
        return [ctx.layer("InnerProduct", [source], params, weights, shape=(module.num_output,))]
    rows = math.prod(lead)
    source = ctx.reshape(x, (rows, k), suffix="rows") if x.shape != (rows, k) else x
    if len(lead) == 1:
        return [ctx.layer("InnerProduct", [source], params, weights, shape=(rows, module.num_output))]
    y = ctx.layer("InnerProduct", [source], params, weights, shape=(rows, module.num_output), suffix="rows_ip")
    return [ctx.reshape(y, (*lead, module.num_output))]
