"""ncnn emitters of the norm family: LRN, BatchNorm (alone and fused with its Scale), Scale, Bias
and Normalize.

Checked against ncnn's sources (Tencent/ncnn ``src/layer/{lrn,batchnorm,scale,bias,normalize,
binaryop,memorydata}.cpp``) and by running every mode in the ncnn package:

* ncnn LRN computes ``x * (bias + alpha/n * S)^-beta`` over the channel window ``c-n/2 .. c+n/2``
  (ACROSS) and ``x * (bias + alpha/n^2 * S)^-beta`` over the zero-padded n x n window, divisor
  always n^2 (WITHIN).  With Caffe's odd n these are Caffe's windows and divisors; ``bias`` is
  Caffe's ``k`` for ACROSS and 1 for WITHIN (Caffe's WITHIN_CHANNEL ignores k).
* ncnn BatchNorm computes ``b*x + a`` with ``b = slope/sqrt(var + eps)``, ``a = bias - slope*mean/
  sqrt(var + eps)``: Caffe's formula with eps inside the sqrt, given Caffe's statistics
  ``mean = sum/s``, ``var = sum/s`` (0 when s == 0).
* ncnn Scale and Bias are per channel (axis 0 of the per-image blob, i.e. Caffe's axis 1); other
  spans of Caffe's Scale/Bias are a constant (MemoryData) broadcast by BinaryOp, a scalar is a
  BinaryOp with a scalar operand.
* ncnn Normalize with ``eps_mode`` 0 is Caffe's ``x / sqrt(sum x^2 + eps)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import torch

from caffenorm.export.ncnn._model import Blob, EmitContext, Weight, float32_array
from caffenorm.export.ncnn._registry import register_emitter
from caffenorm.functional.batch_norm import global_stats
from caffenorm.functional.lrn import NormRegion
from caffenorm.nn import LRN, BatchNorm, BatchNormScale, Bias, Normalize, Scale

__all__ = ["emit_batch_norm", "emit_batch_norm_scale", "emit_bias", "emit_lrn", "emit_normalize", "emit_scale"]

# ncnn LRN (src/layer/lrn.cpp)
LRN_REGION_TYPE: Final = 0  # 0 = ACROSS_CHANNELS, 1 = WITHIN_CHANNEL
LRN_LOCAL_SIZE: Final = 1
LRN_ALPHA: Final = 2
LRN_BETA: Final = 3
LRN_BIAS: Final = 4  # Caffe's k (ACROSS); WITHIN must get 1: Caffe ignores k there

# ncnn BatchNorm (src/layer/batchnorm.cpp); weights: slope, mean, var, bias (each [channels])
BATCHNORM_CHANNELS: Final = 0
BATCHNORM_EPS: Final = 1  # inside the sqrt; ncnn's default is 0, so always written

# ncnn Scale (src/layer/scale.cpp); weights: scale [n], bias [n] if bias_term
SCALE_DATA_SIZE: Final = 0
SCALE_BIAS_TERM: Final = 1

# ncnn Bias (src/layer/bias.cpp); weights: bias [n]; per channel of a 3-D/4-D blob only
BIAS_DATA_SIZE: Final = 0

# ncnn Normalize (src/layer/normalize.cpp); weights: scale [scale_data_size]
NORMALIZE_ACROSS_SPATIAL: Final = 0
NORMALIZE_CHANNEL_SHARED: Final = 1
NORMALIZE_EPS: Final = 2
NORMALIZE_SCALE_DATA_SIZE: Final = 3
NORMALIZE_ACROSS_CHANNEL: Final = 4  # 1: the sum runs over the channels (Caffe always does)
NORMALIZE_EPS_MODE: Final = 9  # 0 = Caffe: 1/sqrt(sum + eps)

# ncnn BinaryOp (src/layer/binaryop.cpp)
BINARYOP_OP_TYPE: Final = 0
BINARYOP_WITH_SCALAR: Final = 1
BINARYOP_B: Final = 2
BINARYOP_ADD: Final = 0
BINARYOP_MUL: Final = 2


def _scalar_op(ctx: EmitContext, x: Blob, op: int, value: float, *, suffix: str | None) -> Blob:
    """``x op value`` (ncnn BinaryOp with a scalar operand)."""
    params = {BINARYOP_OP_TYPE: op, BINARYOP_WITH_SCALAR: 1, BINARYOP_B: float(value)}
    return ctx.layer("BinaryOp", [x], params, shape=x.shape, suffix=suffix)


def _span_shape(ctx: EmitContext, x: Blob, blob_shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    """The per-image shape of a Caffe Scale/Bias blob spanning input axes ``axis..``: the blob's
    sizes there, 1 elsewhere (what BinaryOp broadcasts)."""
    first = ctx.axis(axis, len(x.shape) + 1)
    if first + len(blob_shape) > len(x.shape) or x.shape[first : first + len(blob_shape)] != blob_shape:
        raise ctx.refuse(f"internal: blob {blob_shape} does not span the input {x.shape} from axis {axis}")
    return (1,) * first + blob_shape + (1,) * (len(x.shape) - first - len(blob_shape))


def _broadcast_op(ctx: EmitContext, x: Blob, op: int, values: torch.Tensor, axis: int, *, suffix: str) -> Blob:
    """``x op values`` with a learned blob spanning input axes ``axis..`` (MemoryData + BinaryOp)."""
    shape = _span_shape(ctx, x, tuple(values.shape), axis)
    constant = ctx.constant(float32_array(values).reshape(shape), suffix=f"{suffix}_data")
    return ctx.layer("BinaryOp", [x, constant], {BINARYOP_OP_TYPE: op}, shape=x.shape, suffix=suffix)


def _per_channel(x: Blob, blob: torch.Tensor | None, axis: int) -> bool:
    """Whether a learned Scale/Bias blob is one value per channel: shape (C,) at Caffe axis 1."""
    rank = len(x.shape) + 1
    return blob is not None and blob.dim() == 1 and axis % rank == 1


@register_emitter(LRN)
def emit_lrn(ctx: EmitContext, module: LRN, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn LRN: 0=region (0 ACROSS, 1 WITHIN), 1=local_size, 2=alpha, 3=beta, 4=bias (k for ACROSS; 1 for WITHIN, where Caffe ignores k)."""
    (x,) = bottoms
    if len(x.shape) != 3:
        raise ctx.refuse(f"ncnn's LRN takes (C, H, W) images; the input has per-image shape {x.shape}")
    within = NormRegion(module.norm_region) == NormRegion.WITHIN_CHANNEL
    if within and module.k != 1:
        # Caffe builds WITHIN_CHANNEL from Power layers with shift 1: k plays no part.
        ctx.note(f"WITHIN_CHANNEL: ncnn's bias is 1, not k={module.k} (Caffe ignores k in this region)")
    # ncnn walks (and for WITHIN, pads) the whole window: a window far wider than the image (a
    # local_size of 2**31 - 1 took 17 s on a 4x3x3 input, found by fuzzing) is written as the
    # smallest one that still reaches everything, with alpha rescaled so that alpha / n (ACROSS)
    # or alpha / n**2 (WITHIN), the coefficient ncnn computes, stays Caffe's to float rounding.
    n = module.local_size
    reach = max(x.shape[1:]) if within else x.shape[0]
    alpha = float(module.alpha)
    if n > 2 * reach + 1:
        wide = n
        n = 2 * reach + 1
        alpha = alpha * (n / wide) ** (2 if within else 1)
        ctx.note(f"local_size {wide} reaches past the {'image' if within else 'channels'}: written as {n} with "
                 f"alpha {alpha:.8g} (the same alpha / n{'**2' if within else ''})")
    params = {
        LRN_REGION_TYPE: 1 if within else 0,
        LRN_LOCAL_SIZE: n,
        LRN_ALPHA: alpha,
        LRN_BETA: float(module.beta),
        LRN_BIAS: 1.0 if within else float(module.k),
    }
    return [ctx.layer("LRN", [x], params)]


def _batch_norm_layer(
    ctx: EmitContext, x: Blob, bn: BatchNorm, slope: np.ndarray | None, bias: np.ndarray | None
) -> Blob:
    if not bn.uses_global_stats():
        raise ctx.refuse(
            "BatchNorm normalises with batch statistics here (training mode or use_global_stats: false); ncnn "
            "only has stored statistics: call net.eval() (and keep use_global_stats unset or true)"
        )
    # Caffe's statistics exactly as caffenorm derives them (f = 0 if s == 0 else 1/s, in float32).
    mean, var = global_stats(bn.mean_sum.detach().cpu(), bn.var_sum.detach().cpu(), bn.scale_factor.detach().cpu(),
                             torch.float32)
    mean_np, var_np = float32_array(mean), float32_array(var)
    if np.any(var_np + np.float32(bn.eps) == 0):
        raise ctx.refuse(
            f"eps={bn.eps} and a zero variance: Caffe divides by sqrt(0) (inf/NaN), ncnn substitutes 1e-4"
        )
    channels = mean_np.size
    slope = np.ones(channels, np.float32) if slope is None else slope
    bias = np.zeros(channels, np.float32) if bias is None else bias
    params = {BATCHNORM_CHANNELS: channels, BATCHNORM_EPS: float(bn.eps)}
    weights = [Weight(slope), Weight(mean_np), Weight(var_np), Weight(bias)]
    return ctx.layer("BatchNorm", [x], params, weights)


@register_emitter(BatchNorm)
def emit_batch_norm(ctx: EmitContext, module: BatchNorm, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn BatchNorm: 0=channels, 1=eps; weights slope 1, mean = sum/s and var = sum/s (0 when s == 0), bias 0."""
    return [_batch_norm_layer(ctx, bottoms[0], module, None, None)]


@register_emitter(BatchNormScale)
def emit_batch_norm_scale(ctx: EmitContext, module: BatchNormScale, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn BatchNorm: 0=channels, 1=eps; weights slope = the Scale's gamma, mean and var as for BatchNorm, bias = its beta (or 0)."""
    scale = module.scale
    bias = None if scale.bias is None else float32_array(scale.bias)
    return [_batch_norm_layer(ctx, bottoms[0], module.batch_norm, float32_array(scale.weight), bias)]


@register_emitter(Scale)
def emit_scale(ctx: EmitContext, module: Scale, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Scale: 0=scale_data_size, 1=bias_term (per channel); scalar: BinaryOp MUL then ADD (0=op_type, 1=with_scalar 1, 2=b); other spans: MemoryData + BinaryOp; a second input at axis 0: Reshape + BinaryOp MUL."""
    x = bottoms[0]
    if module.scale_from_input:
        return [_from_input(ctx, module, bottoms, BINARYOP_MUL, "Scale")]
    weight = module.weight
    assert weight is not None
    if weight.dim() == 0:
        # A 0-axis blob multiplies everything (Caffe ignores axis then).
        y = _scalar_op(ctx, x, BINARYOP_MUL, float(weight.detach()), suffix=None if module.bias is None else "mul")
        if module.bias is not None:
            y = _scalar_op(ctx, y, BINARYOP_ADD, float(module.bias.detach()), suffix=None)
        return [y]
    if _per_channel(x, weight, module.axis):
        params = {SCALE_DATA_SIZE: weight.numel(), SCALE_BIAS_TERM: int(module.bias is not None)}
        weights = [Weight(float32_array(weight))]
        if module.bias is not None:
            weights.append(Weight(float32_array(module.bias)))
        return [ctx.layer("Scale", [x], params, weights)]
    ctx.note(f"Scale over input axes from {module.axis} with blob {tuple(weight.shape)}: MemoryData + BinaryOp")
    if module.bias is None:
        return [_broadcast_op(ctx, x, BINARYOP_MUL, weight, module.axis, suffix="mul")]
    y = _broadcast_op(ctx, x, BINARYOP_MUL, weight, module.axis, suffix="mul")
    return [_broadcast_op(ctx, y, BINARYOP_ADD, module.bias, module.axis, suffix="add")]


@register_emitter(Bias)
def emit_bias(ctx: EmitContext, module: Bias, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Bias: 0=bias_data_size (per channel of a 3-D/4-D image); scalar: BinaryOp ADD (1=with_scalar 1, 2=b); other spans: MemoryData + BinaryOp ADD; a second input at axis 0: Reshape + BinaryOp ADD."""
    x = bottoms[0]
    if module.bias_from_input:
        return [_from_input(ctx, module, bottoms, BINARYOP_ADD, "Bias")]
    bias = module.bias
    assert bias is not None
    if bias.dim() == 0:
        return [_scalar_op(ctx, x, BINARYOP_ADD, float(bias.detach()), suffix=None)]
    if _per_channel(x, bias, module.axis) and len(x.shape) >= 3:
        return [ctx.layer("Bias", [x], {BIAS_DATA_SIZE: bias.numel()}, [Weight(float32_array(bias))])]
    # ncnn's Bias reads channels only (a 1-D/2-D blob has one), so these go through BinaryOp.
    return [_broadcast_op(ctx, x, BINARYOP_ADD, bias, module.axis, suffix="add")]


def _from_input(ctx: EmitContext, module: Scale | Bias, bottoms: Sequence[Blob], op: int, kind: str) -> Blob:
    """Caffe's two-bottom Scale/Bias, ``x op y`` with ``y`` spanning ``x``'s axes from ``axis``:
    supported when ``axis`` is 0 (e.g. an SE block's per-sample channel gates), where ``y``'s first
    axis is the batch; ``y`` is reshaped to ``x``'s rank and broadcast by BinaryOp."""
    x, y = bottoms
    rank = len(x.shape) + 1
    axis = module.axis + rank if module.axis < 0 else module.axis
    if axis != 0:
        raise ctx.refuse(
            f"{kind} with a second input at axis={module.axis}: the second input's first axis is then not "
            "the batch axis, and ncnn runs one image at a time"
        )
    if isinstance(module, Scale) and module.bias is not None:
        raise ctx.refuse(
            f"the learned bias of a two-input Scale has the second input's shape, batch axis included "
            f"({tuple(module.bias.shape)}); ncnn has no batch axis"
        )
    shape = y.shape + (1,) * (len(x.shape) - len(y.shape))
    if len(shape) != len(x.shape) or any(a != b for a, b in zip(shape, x.shape) if a != 1):
        raise ctx.refuse(f"internal: the second input {y.shape} does not span the input {x.shape}")
    factor = ctx.reshape(y, shape, suffix="operand") if shape != y.shape else y
    return ctx.layer("BinaryOp", [x, factor], {BINARYOP_OP_TYPE: op}, shape=x.shape)


@register_emitter(Normalize)
def emit_normalize(ctx: EmitContext, module: Normalize, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Normalize: 0=across_spatial, 1=channel_shared, 2=eps, 3=scale_data_size, 4=across_channel 1, 9=eps_mode 0 (eps inside the sqrt); 1-D/2-D images reshaped to (C, H, 1) around it."""
    (x,) = bottoms
    # ncnn's Normalize reads channels and h*w: give it Caffe's legacy (C, H, W) view.
    image = x.shape + (1,) * (3 - len(x.shape))
    if len(image) != 3:
        raise ctx.refuse(f"Caffe's Normalize reads at most 4 axes; the input has per-image shape {x.shape}")
    inner = ctx.reshape(x, image, suffix="chw") if image != x.shape else x
    params = {
        NORMALIZE_ACROSS_SPATIAL: int(module.across_spatial),
        NORMALIZE_CHANNEL_SHARED: int(module.channel_shared),
        NORMALIZE_EPS: float(module.eps),
        NORMALIZE_SCALE_DATA_SIZE: module.weight.numel(),
        NORMALIZE_ACROSS_CHANNEL: 1,
        NORMALIZE_EPS_MODE: 0,
    }
    weights = [Weight(float32_array(module.weight))]
    if image == x.shape:
        return [ctx.layer("Normalize", [inner], params, weights)]
    y = ctx.layer("Normalize", [inner], params, weights, shape=image, suffix="chw_norm")
    return [ctx.reshape(y, x.shape)]
