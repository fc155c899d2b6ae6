"""ncnn emitters of the activation family: Caffe's neuron layers, Dropout and Softmax.

Each maps to the ncnn layer of the same function (``src/layer/<name>.cpp``), checked there:
ReLU ``x < 0 ? x*slope : x``, PReLU per channel (axis 0 of the image), ELU ``x < 0 ?
alpha*(exp(x)-1) : x``, BNLL ``log(1 + exp(x))`` computed stably, Power ``(shift + x*scale)^power``,
Exp ``exp(shift + x*scale)`` or ``base^(shift + x*scale)`` (Caffe: ``exp(x*log(base)*scale) *
base^shift``, the same function rounded differently), Log ``log(shift + x*scale) / log(base)``,
Threshold ``x > t``, Softmax over ncnn axis = Caffe axis - 1 (``fixbug0`` set, as ncnn requires
for a non-zero axis).  Clip: ncnn applies ``min`` then ``max`` where Caffe applies ``std::min``
with max first, so ``min > max`` is written as ``Clip(min, min)`` (Caffe's constant ``min``), and
an infinite bound (which ncnn's parameter text cannot hold) is a BinaryOp MAX/MIN with a scalar.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from caffenorm.caffe.layers.activation import (
    BNLL,
    ELU,
    AbsVal,
    Clip,
    Dropout,
    Exp,
    Log,
    Power,
    PReLU,
    ReLU,
    Sigmoid,
    Softmax,
    Swish,
    TanH,
    Threshold,
)
from caffenorm.export.ncnn._model import Blob, EmitContext, ParamValue, Weight, float32_array
from caffenorm.export.ncnn._registry import register_emitter
from caffenorm.export.ncnn.norm import BINARYOP_B, BINARYOP_MUL, BINARYOP_OP_TYPE, BINARYOP_WITH_SCALAR

__all__ = [
    "emit_absval",
    "emit_bnll",
    "emit_clip",
    "emit_dropout",
    "emit_elu",
    "emit_exp",
    "emit_log",
    "emit_power",
    "emit_prelu",
    "emit_relu",
    "emit_sigmoid",
    "emit_softmax",
    "emit_swish",
    "emit_tanh",
    "emit_threshold",
]

RELU_SLOPE: Final = 0
PRELU_NUM_SLOPE: Final = 0  # weights: slope [num_slope]
ELU_ALPHA: Final = 0
POWER_POWER: Final = 0
POWER_SCALE: Final = 1
POWER_SHIFT: Final = 2
EXP_LOG_BASE: Final = 0  # -1 = e, as in Caffe
EXP_LOG_SCALE: Final = 1
EXP_LOG_SHIFT: Final = 2
CLIP_MIN: Final = 0
CLIP_MAX: Final = 1
THRESHOLD_THRESHOLD: Final = 0
SOFTMAX_AXIS: Final = 0
SOFTMAX_FIXBUG0: Final = 1  # must be 1 for a non-zero axis (ncnn refuses old 3-D axis handling)
DROPOUT_SCALE: Final = 0  # 1 = identity (Caffe's TEST phase)
BINARYOP_MAX: Final = 4
BINARYOP_MIN: Final = 5

@register_emitter(Sigmoid)
def emit_sigmoid(ctx: EmitContext, module: Sigmoid, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Sigmoid (no parameters)."""
    return [ctx.layer("Sigmoid", bottoms)]


@register_emitter(TanH)
def emit_tanh(ctx: EmitContext, module: TanH, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn TanH (no parameters)."""
    return [ctx.layer("TanH", bottoms)]


@register_emitter(AbsVal)
def emit_absval(ctx: EmitContext, module: AbsVal, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn AbsVal (no parameters)."""
    return [ctx.layer("AbsVal", bottoms)]


@register_emitter(BNLL)
def emit_bnll(ctx: EmitContext, module: BNLL, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn BNLL (no parameters; log(1 + exp(x)) computed stably, as Caffe)."""
    return [ctx.layer("BNLL", bottoms)]


@register_emitter(ReLU)
def emit_relu(ctx: EmitContext, module: ReLU, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn ReLU: 0=slope (negative_slope; omitted when 0)."""
    params = {RELU_SLOPE: float(module.negative_slope)} if module.negative_slope else {}
    return [ctx.layer("ReLU", bottoms, params)]


@register_emitter(PReLU)
def emit_prelu(ctx: EmitContext, module: PReLU, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn PReLU: 0=num_slope (channels, or 1 when channel_shared); slope data."""
    slope = float32_array(module.weight)
    return [ctx.layer("PReLU", bottoms, {PRELU_NUM_SLOPE: slope.size}, [Weight(slope)])]


@register_emitter(ELU)
def emit_elu(ctx: EmitContext, module: ELU, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn ELU: 0=alpha."""
    return [ctx.layer("ELU", bottoms, {ELU_ALPHA: float(module.alpha)})]


@register_emitter(Power)
def emit_power(ctx: EmitContext, module: Power, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Power: 0=power, 1=scale, 2=shift."""
    params = {POWER_POWER: float(module.power), POWER_SCALE: float(module.scale), POWER_SHIFT: float(module.shift)}
    return [ctx.layer("Power", bottoms, params)]


def _exp_log_params(module: Exp | Log) -> dict[int, ParamValue]:
    return {EXP_LOG_BASE: float(module.base), EXP_LOG_SCALE: float(module.scale), EXP_LOG_SHIFT: float(module.shift)}


@register_emitter(Exp)
def emit_exp(ctx: EmitContext, module: Exp, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Exp: 0=base (-1 = e), 1=scale, 2=shift."""
    return [ctx.layer("Exp", bottoms, _exp_log_params(module))]


@register_emitter(Log)
def emit_log(ctx: EmitContext, module: Log, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Log: 0=base (-1 = e), 1=scale, 2=shift."""
    return [ctx.layer("Log", bottoms, _exp_log_params(module))]


@register_emitter(Clip)
def emit_clip(ctx: EmitContext, module: Clip, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Clip: 0=min, 1=max (min, min when min > max); one infinite bound: BinaryOp MIN/MAX (1=with_scalar 1, 2=the other bound); both: Noop."""
    low, high = float(module.min), float(module.max)
    (x,) = bottoms
    if math.isfinite(low) and math.isfinite(high):
        # Caffe: max(min, min(x, max)), which is the constant min when min > max; ncnn clamps to
        # min first and then to max, which would give max there.
        return [ctx.layer("Clip", [x], {CLIP_MIN: low, CLIP_MAX: max(low, high)})]
    if low == -math.inf and high == math.inf:
        return [ctx.layer("Noop", [x])]
    if low == -math.inf and math.isfinite(high):
        return [ctx.layer("BinaryOp", [x], {BINARYOP_OP_TYPE: BINARYOP_MIN, BINARYOP_WITH_SCALAR: 1, BINARYOP_B: high})]
    if high == math.inf and math.isfinite(low):
        return [ctx.layer("BinaryOp", [x], {BINARYOP_OP_TYPE: BINARYOP_MAX, BINARYOP_WITH_SCALAR: 1, BINARYOP_B: low})]
    raise ctx.refuse(f"Clip(min={low}, max={high}): a constant infinite output, which ncnn's parameters cannot hold")


@register_emitter(Threshold)
def emit_threshold(ctx: EmitContext, module: Threshold, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Threshold: 0=threshold."""
    if not math.isfinite(module.threshold):
        raise ctx.refuse(f"threshold={module.threshold} (ncnn's parameters hold finite numbers only)")
    return [ctx.layer("Threshold", bottoms, {THRESHOLD_THRESHOLD: float(module.threshold)})]


@register_emitter(Swish)
def emit_swish(ctx: EmitContext, module: Swish, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Swish (beta 1); other beta: BinaryOp MUL scalar (2=beta), Sigmoid, BinaryOp MUL."""
    (x,) = bottoms
    if module.beta == 1:
        return [ctx.layer("Swish", [x])]
    scaled = ctx.layer("BinaryOp", [x], {BINARYOP_OP_TYPE: BINARYOP_MUL, BINARYOP_WITH_SCALAR: 1,
                                         BINARYOP_B: float(module.beta)}, suffix="beta")
    gate = ctx.layer("Sigmoid", [scaled], suffix="sigmoid")
    return [ctx.layer("BinaryOp", [x, gate], {BINARYOP_OP_TYPE: BINARYOP_MUL})]


@register_emitter(Dropout)
def emit_dropout(ctx: EmitContext, module: Dropout, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Dropout: 0=scale 1 (the identity: Caffe's TEST phase)."""
    if module.training:
        raise ctx.refuse("Dropout is active (training mode); call net.eval() for Caffe's TEST phase")
    return [ctx.layer("Dropout", bottoms, {DROPOUT_SCALE: 1.0})]


@register_emitter(Softmax)
def emit_softmax(ctx: EmitContext, module: Softmax, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Softmax: 0=axis (Caffe axis - 1), 1=fixbug0 1."""
    (x,) = bottoms
    axis = ctx.axis(module.axis, len(x.shape) + 1)
    return [ctx.layer("Softmax", [x], {SOFTMAX_AXIS: axis, SOFTMAX_FIXBUG0: 1})]
