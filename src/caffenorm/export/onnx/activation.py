"""ONNX exporters of the activation family: Caffe's neuron layers and Softmax.

Each follows the formula of the caffenorm module (``caffenorm/caffe/layers/activation.py``),
which is Caffe's ``Forward_cpu``; scalar settings are float32 in Caffe and are written as float32
constants.
"""

from __future__ import annotations

from caffenorm.caffe.graph import Node
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
from caffenorm.export.onnx._context import FLOAT, ExportContext
from caffenorm.export.onnx._registry import register_exporter

__all__ = [
    "export_absval",
    "export_bnll",
    "export_clip",
    "export_dropout",
    "export_elu",
    "export_exp",
    "export_log",
    "export_power",
    "export_prelu",
    "export_relu",
    "export_sigmoid",
    "export_softmax",
    "export_swish",
    "export_tanh",
    "export_threshold",
]


@register_exporter(ReLU)
def export_relu(node: Node, ctx: ExportContext) -> None:
    """``Relu``, or ``LeakyRelu(alpha=negative_slope)`` when the slope is not 0."""
    relu = node.module
    assert isinstance(relu, ReLU)
    if relu.negative_slope == 0:
        ctx.op("Relu", ctx.input(0), top=0)
    else:
        ctx.op("LeakyRelu", ctx.input(0), top=0, alpha=float(relu.negative_slope))


@register_exporter(PReLU)
def export_prelu(node: Node, ctx: ExportContext) -> None:
    """``PRelu`` with the slope blob shaped ``(C, 1, ...)`` over axis 1 (``(1,)`` when channel_shared)."""
    prelu = node.module
    assert isinstance(prelu, PReLU)
    ndim = len(ctx.in_shape(0))
    slope = prelu.weight.detach().reshape(-1)
    if not prelu.channel_shared:
        slope = slope.reshape(-1, *(1,) * (ndim - 2))
    ctx.op("PRelu", ctx.input(0), ctx.tensor(slope, "slope"), top=0)


@register_exporter(ELU)
def export_elu(node: Node, ctx: ExportContext) -> None:
    """``Elu(alpha)``: ``x`` for x > 0, ``alpha * (exp(x) - 1)`` otherwise (both 0 at 0)."""
    elu = node.module
    assert isinstance(elu, ELU)
    ctx.op("Elu", ctx.input(0), top=0, alpha=float(elu.alpha))


@register_exporter(Sigmoid)
def export_sigmoid(node: Node, ctx: ExportContext) -> None:
    """``Sigmoid``."""
    ctx.op("Sigmoid", ctx.input(0), top=0)


@register_exporter(TanH)
def export_tanh(node: Node, ctx: ExportContext) -> None:
    """``Tanh``."""
    ctx.op("Tanh", ctx.input(0), top=0)


@register_exporter(AbsVal)
def export_absval(node: Node, ctx: ExportContext) -> None:
    """``Abs``."""
    ctx.op("Abs", ctx.input(0), top=0)


@register_exporter(Power)
def export_power(node: Node, ctx: ExportContext) -> None:
    """``Mul(scale)``, ``Add(shift)``, ``Pow(power)`` (each skipped when it is the identity, as
    Caffe does); power or scale 0: ``ConstantOfShape`` of 1 or ``shift**power`` (the input ignored,
    NaN included, as in Caffe)."""
    power = node.module
    assert isinstance(power, Power)
    x = ctx.input(0)
    constant = power._constant
    if constant is not None:
        shape = ctx.op("Shape", x)
        value = _float_tensor(constant)
        ctx.op("ConstantOfShape", shape, top=0, value=value)
        return
    y = x
    steps = []
    if power.scale != 1:
        steps.append(("Mul", power.scale))
    if power.shift != 0:
        steps.append(("Add", power.shift))
    if power.power != 1:
        steps.append(("Pow", power.power))
    if not steps:
        ctx.bind(0, x)
        return
    for i, (op, value) in enumerate(steps):
        last = i == len(steps) - 1
        y = ctx.op(op, y, ctx.const(value), top=0 if last else None)


@register_exporter(Dropout)
def export_dropout(node: Node, ctx: ExportContext) -> None:
    """Identity (Caffe's TEST phase); a net in training mode is refused."""
    if node.module.training:
        raise ctx.error("Dropout is active (the net is in training mode); call net.eval() before exporting")
    ctx.bind(0, ctx.input(0))


@register_exporter(Softmax)
def export_softmax(node: Node, ctx: ExportContext) -> None:
    """``Softmax(axis)`` (opset >= 13: over that one axis, as Caffe)."""
    softmax = node.module
    assert isinstance(softmax, Softmax)
    ctx.op("Softmax", ctx.input(0), top=0, axis=softmax.axis % len(ctx.in_shape(0)))


@register_exporter(BNLL)
def export_bnll(node: Node, ctx: ExportContext) -> None:
    """``Relu(x) + Log(1 + Exp(-Abs(x)))``: Caffe's overflow-free ``log(1 + exp(x))``.

    That is Caffe's two branches in one (``x + log(1 + exp(-x))`` for x > 0, ``log(1 + exp(x))``
    otherwise); ONNX's Softplus is specified as the naive ``log(exp(x) + 1)``, which runtimes may
    compute literally and overflow to inf for x > 88.
    """
    x = ctx.input(0)
    tail = ctx.op("Log", ctx.op("Add", ctx.op("Exp", ctx.op("Neg", ctx.op("Abs", x))), ctx.const(1.0)))
    ctx.op("Add", ctx.op("Relu", x), tail, top=0)


@register_exporter(Exp)
def export_exp(node: Node, ctx: ExportContext) -> None:
    """``Exp(x * log(base) * scale) * base**shift`` (each factor skipped when 1), in Caffe's float32."""
    exp = node.module
    assert isinstance(exp, Exp)
    x = ctx.input(0)
    inner, outer = exp.inner_scale, exp.outer_scale
    if inner != 1:
        x = ctx.op("Mul", x, ctx.const(inner))
    if outer == 1:
        ctx.op("Exp", x, top=0)
        return
    ctx.op("Mul", ctx.op("Exp", x), ctx.const(outer), top=0)


@register_exporter(Log)
def export_log(node: Node, ctx: ExportContext) -> None:
    """``Log(shift + scale * x) * (1 / log(base))`` (each step skipped when it is the identity)."""
    log = node.module
    assert isinstance(log, Log)
    x = ctx.input(0)
    if log.scale != 1:
        x = ctx.op("Mul", x, ctx.const(log.scale))
    if log.shift != 0:
        x = ctx.op("Add", x, ctx.const(log.shift))
    if log.base_scale == 1:
        ctx.op("Log", x, top=0)
        return
    ctx.op("Mul", ctx.op("Log", x), ctx.const(log.base_scale), top=0)


@register_exporter(Threshold)
def export_threshold(node: Node, ctx: ExportContext) -> None:
    """``Cast(Greater(x, threshold), float)``: 1 where x > threshold, else 0 (NaN: 0)."""
    threshold = node.module
    assert isinstance(threshold, Threshold)
    above = ctx.op("Greater", ctx.input(0), ctx.const(threshold.threshold))
    ctx.op("Cast", above, top=0, to=FLOAT)


@register_exporter(Clip)
def export_clip(node: Node, ctx: ExportContext) -> None:
    """``Where``/comparisons for ``std::max(min, std::min(x, max))``: NaN gives min, and min > max
    gives min everywhere (ONNX's Clip propagates NaN and is undefined for min > max)."""
    clip = node.module
    assert isinstance(clip, Clip)
    x = ctx.input(0)
    lo, hi = ctx.const(clip.min), ctx.const(clip.max)
    inside = ctx.op("And", ctx.op("GreaterOrEqual", x, lo), ctx.op("LessOrEqual", x, hi))
    outside = ctx.op("Where", ctx.op("Greater", x, hi), ctx.const(clip._above), lo)
    ctx.op("Where", inside, x, outside, top=0)


@register_exporter(Swish)
def export_swish(node: Node, ctx: ExportContext) -> None:
    """``x * Sigmoid(beta * x)``."""
    swish = node.module
    assert isinstance(swish, Swish)
    x = ctx.input(0)
    arg = x if swish.beta == 1 else ctx.op("Mul", x, ctx.const(swish.beta))
    ctx.op("Mul", x, ctx.op("Sigmoid", arg), top=0)


def _float_tensor(value: float) -> object:
    """A one-element float32 ``TensorProto`` (ConstantOfShape's ``value``)."""
    from onnx import helper

    return helper.make_tensor("value", FLOAT, [1], [float(value)])
