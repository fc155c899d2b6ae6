"""Converters and modules of the activation family: Caffe's neuron layers and Softmax.

ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, Power, Dropout, Softmax, BNLL, Exp, Log, Threshold, Clip
and Swish.  Each module computes Caffe's forward formula (``src/caffe/layers/<name>_layer.cpp``),
and autograd through it gives Caffe's ``Backward_cpu``: where Caffe picks a subgradient (ReLU and
PReLU at 0, Clip at its bounds, ELU at 0) the formula is written so that the same branch is
differentiated.  None but PReLU has blobs.  Shapes are read at forward time, so any batch and
spatial size works.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caffenorm.caffe.layers._fields import param_of
from caffenorm.caffe.registry import BuildContext, register_layer, register_writer, write_fields
from caffenorm.caffe.spec import LayerSpec
from caffenorm.errors import InputShapeError, LayerConfigError, NetDefinitionError
from caffenorm.functional._checks import canonical_axis, check_real
from caffenorm.nn._base import CaffeLayer

__all__ = [
    "BNLL",
    "ELU",
    "AbsVal",
    "Clip",
    "Dropout",
    "Exp",
    "Log",
    "PReLU",
    "Power",
    "ReLU",
    "Sigmoid",
    "Softmax",
    "Swish",
    "TanH",
    "Threshold",
]


def _f32(value: float) -> float:
    """``value`` rounded to float32: Caffe holds every setting (and what it derives from them) in
    its ``Dtype``, float for every released model."""
    return float(np.float32(value))


def _not_nan(layer: str, param: str, value: float) -> float:
    """A bound that may be infinite (e.g. a one-sided Clip) but not NaN."""
    v = float(value)
    if math.isnan(v):
        raise LayerConfigError(f"{layer}: {param}=nan is not allowed; give a number (inf is accepted)")
    return v


def _caffe_zero(y: Tensor) -> Tensor:
    """``y + 0.0``: Caffe's PReLU adds ``max(x, 0)`` (``+0.0`` for negative ``x``) to
    ``slope * min(x, 0)``, so a ``-0.0`` product (slope 0) comes out ``+0.0``; torch's kernels
    return the ``-0.0``."""
    return y + 0.0


class _Neuron(CaffeLayer):
    """An elementwise layer without blobs: one bottom, one top of the same shape."""

    same_shape = True


class ReLU(_Neuron):
    """Caffe's ReLU (``relu_layer.cpp``): ``max(x, 0) + negative_slope * min(x, 0)``.

    The gradient is ``1`` for ``x > 0`` and ``negative_slope`` for ``x <= 0`` (Caffe's rule at 0,
    where ReLU chains and padding put many values).  A ``-inf`` input gives NaN (``0 * -inf``),
    as Caffe's CPU and GPU kernels do (``torch.relu`` gives 0).  A negative input gives ``-0.0``
    where Caffe gives ``+0.0``: equal as numbers, and not worth a second pass on the hottest layer.
    """

    caffe_type = "ReLU"

    def __init__(self, negative_slope: float = 0.0) -> None:
        super().__init__()
        self.negative_slope = check_real("ReLU", "negative_slope", negative_slope)

    def forward(self, x: Tensor) -> Tensor:
        # leaky_relu is Caffe's GPU kernel, x > 0 ? x : x * slope, with the same subgradient.
        return F.leaky_relu(x, self.negative_slope)

    def caffe_settings(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope}


class PReLU(CaffeLayer):
    """Caffe's PReLU (``prelu_layer.cpp``): ReLU with a learned slope per channel (input axis 1).

    Args:
        channels: size of axis 1; ignored with ``channel_shared``.
        channel_shared: one slope for all channels.  Default: False

    Blobs (Caffe order): ``[weight]``, shape ``(channels,)``, or ``()`` when shared; it starts at
    0.25 (Caffe's filler when ``prelu_param.filler`` is not given).  Input: ``(N, C, ...)``, at
    least 2-D.
    """

    caffe_type = "PReLU"
    blob_attrs = ("weight",)
    same_shape = True

    def __init__(self, channels: int | None = None, channel_shared: bool = False) -> None:
        super().__init__()
        self.channel_shared = bool(channel_shared)
        if not self.channel_shared and (isinstance(channels, bool) or not isinstance(channels, int) or channels < 1):
            raise LayerConfigError(f"PReLU: channels={channels!r} must be a positive int unless channel_shared=True")
        self.channels = None if self.channel_shared else channels
        shape = () if self.channel_shared else (channels,)
        self.weight = nn.Parameter(torch.full(shape, 0.25))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise InputShapeError(f"PReLU: input has shape {tuple(x.shape)}; Caffe needs at least 2 axes (N, C, ...)")
        if not self.channel_shared and x.shape[1] != self.channels:
            raise InputShapeError(
                f"PReLU: input has {x.shape[1]} channels (shape {tuple(x.shape)}), "
                f"the slope blob has {self.channels}"
            )
        # torch.prelu over axis 1: x > 0 ? x : slope * x; its gradients are Caffe's (the slope's
        # is the sum of top_diff * x over x <= 0).
        return _caffe_zero(torch.prelu(x, self.weight.reshape(-1)))

    def caffe_settings(self) -> dict[str, Any]:
        return {"channel_shared": self.channel_shared}

    def extra_repr(self) -> str:
        return f"channels={self.channels}, channel_shared={self.channel_shared}"


class ELU(_Neuron):
    """Caffe's ELU (``elu_layer.cpp``): ``max(x, 0) + alpha * (exp(min(x, 0)) - 1)``.

    Computed as Caffe does, with ``exp(x) - 1`` rather than ``expm1``; the gradient at 0 is
    ``alpha`` (Caffe's ``x <= 0`` branch).
    """

    caffe_type = "ELU"

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = check_real("ELU", "alpha", alpha)

    def forward(self, x: Tensor) -> Tensor:
        # min(x, 0) inside exp: the unused branch never overflows, so its gradient is 0, not NaN.
        negative = self.alpha * (torch.exp(torch.clamp(x, max=0.0)) - 1.0)
        return torch.where(x > 0, x, negative)

    def caffe_settings(self) -> dict[str, Any]:
        return {"alpha": self.alpha}


class Sigmoid(_Neuron):
    """Caffe's Sigmoid (``sigmoid_layer.cpp``): ``1 / (1 + exp(-x))``."""

    caffe_type = "Sigmoid"

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)


class TanH(_Neuron):
    """Caffe's TanH (``tanh_layer.cpp``): ``tanh(x)``."""

    caffe_type = "TanH"

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x)


class AbsVal(_Neuron):
    """Caffe's AbsVal (``absval_layer.cpp``): ``|x|``; the gradient is ``sign(x)`` (0 at 0)."""

    caffe_type = "AbsVal"

    def forward(self, x: Tensor) -> Tensor:
        return torch.abs(x)


class Power(_Neuron):
    """Caffe's Power (``power_layer.cpp``): ``(shift + scale * x) ** power``.

    As in Caffe, ``power == 0`` or ``scale == 0`` ignores the input: every output is
    ``1`` (power 0) or ``shift ** power``, even where ``x`` is NaN or infinite, and the gradient
    is 0.  Otherwise the steps Caffe skips (scale 1, shift 0, power 1) are skipped too.
    (``torch.pow`` takes a square root for power 0.5, so ``-inf`` gives NaN where C's ``pow``
    gives ``+inf``; finite inputs agree.)
    """

    caffe_type = "Power"

    def __init__(self, power: float = 1.0, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.power = check_real("Power", "power", power)
        self.scale = check_real("Power", "scale", scale)
        self.shift = check_real("Power", "shift", shift)

    @property
    def _constant(self) -> float | None:
        """The output when the input is ignored (power or scale 0), else None.  Derived from the
        settings at each call, so an edited setting takes effect."""
        if self.power * self.scale != 0:
            return None
        with np.errstate(all="ignore"):
            return 1.0 if self.power == 0 else float(np.float32(self.shift) ** np.float32(self.power))

    def forward(self, x: Tensor) -> Tensor:
        if self._constant is not None:
            # A constant still wired to x, so backward gives x a zero gradient as Caffe does.
            return torch.where(torch.ones_like(x, dtype=torch.bool), x.new_full((), self._constant), x)
        y = x
        if self.scale != 1:
            y = y * self.scale
        if self.shift != 0:
            y = y + self.shift
        if self.power != 1:
            y = torch.pow(y, self.power)
        return y

    def caffe_settings(self) -> dict[str, Any]:
        return {"power": self.power, "scale": self.scale, "shift": self.shift}


class Dropout(_Neuron):
    """Caffe's Dropout (``dropout_layer.cpp``), following ``module.training``.

    Training: each value is kept with probability ``1 - dropout_ratio`` and the kept ones are
    multiplied by ``1 / (1 - dropout_ratio)``; evaluation (Caffe's TEST phase): the identity.
    The mask comes from torch's generator (seed it with ``torch.manual_seed``), not Caffe's.
    """

    caffe_type = "Dropout"

    def __init__(self, dropout_ratio: float = 0.5) -> None:
        super().__init__()
        ratio = check_real("Dropout", "dropout_ratio", dropout_ratio, minimum=0.0)
        if ratio >= 1:
            raise LayerConfigError(
                f"Dropout: dropout_ratio={dropout_ratio!r} is not allowed; it must be in [0, 1) "
                "(Caffe scales the kept values by 1 / (1 - dropout_ratio))"
            )
        self.dropout_ratio = ratio

    @property
    def scale(self) -> float:
        """``1 / (1 - dropout_ratio)`` in float32, as Caffe's ``scale_`` (follows an edited ratio)."""
        return _f32(1.0 / (1.0 - _f32(self.dropout_ratio)))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        mask = torch.empty_like(x).bernoulli_(1.0 - self.dropout_ratio)
        return x * mask * self.scale

    def caffe_settings(self) -> dict[str, Any]:
        return {"dropout_ratio": self.dropout_ratio}


class Softmax(_Neuron):
    """Caffe's Softmax (``softmax_layer.cpp``) over ``axis`` (negative counts from the end):
    ``exp(x - max) / sum(exp(x - max))``, the max subtracted for stability as Caffe does."""

    caffe_type = "Softmax"
    same_shape = False  # run it at load time too: that checks the axis against the bottom

    def __init__(self, axis: int = 1) -> None:
        super().__init__()
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise LayerConfigError(f"Softmax: axis={axis!r} must be an integer")
        self.axis = axis

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(x, canonical_axis("Softmax", "axis", self.axis, x.dim()))

    def caffe_settings(self) -> dict[str, Any]:
        return {"axis": self.axis}


class BNLL(_Neuron):
    """Caffe's BNLL (``bnll_layer.cpp``): ``log(1 + exp(x))``, computed without overflow (for
    ``x > 0`` as ``x + log(1 + exp(-x))``); the gradient is ``sigmoid(x)``."""

    caffe_type = "BNLL"

    def forward(self, x: Tensor) -> Tensor:
        # softplus: log1p(exp(x)), and x itself beyond 20 where the correction is below float32's
        # resolution of x -- the values Caffe's formula rounds to.
        return F.softplus(x)


class Exp(_Neuron):
    """Caffe's Exp (``exp_layer.cpp``): ``base ** (shift + scale * x)``; ``base=-1`` means e.

    Computed as Caffe does: ``exp(inner_scale * x) * outer_scale`` with
    ``inner_scale = log(base) * scale`` and ``outer_scale = base ** shift``.
    """

    caffe_type = "Exp"

    def __init__(self, base: float = -1.0, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.base, self.scale, self.shift = _exp_log_settings("Exp", base, scale, shift)

    @property
    def inner_scale(self) -> float:
        """``log(base) * scale`` in float32 (derived at each call: edits take effect)."""
        log_base = 1.0 if self.base == -1 else _f32(math.log(self.base))
        return _f32(log_base * self.scale)

    @property
    def outer_scale(self) -> float:
        """``base ** shift`` in float32 (1 when ``shift`` is 0, as Caffe skips it)."""
        if self.shift == 0:
            return 1.0
        with np.errstate(all="ignore"):
            if self.base == -1:
                return float(np.exp(np.float32(self.shift)))
            return float(np.float32(self.base) ** np.float32(self.shift))

    def forward(self, x: Tensor) -> Tensor:
        y = torch.exp(x if self.inner_scale == 1 else x * self.inner_scale)
        return y if self.outer_scale == 1 else y * self.outer_scale

    def caffe_settings(self) -> dict[str, Any]:
        return {"base": self.base, "scale": self.scale, "shift": self.shift}


class Log(_Neuron):
    """Caffe's Log (``log_layer.cpp``): ``log_base(shift + scale * x)``; ``base=-1`` means e.

    Computed as Caffe does: ``log(shift + scale * x) * (1 / log(base))``.  ``base`` 1 is refused
    (``1 / log(1)`` is infinite; Caffe CHECK-fails).
    """

    caffe_type = "Log"

    def __init__(self, base: float = -1.0, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.base, self.scale, self.shift = _exp_log_settings("Log", base, scale, shift)
        if self.base == 1:
            raise LayerConfigError(
                "Log: base=1 is not allowed (1 / log(1) is infinite); use base > 0, != 1, or -1 for e"
            )

    @property
    def base_scale(self) -> float:
        """``1 / log(base)`` in float32 (derived at each call: edits take effect)."""
        return 1.0 if self.base == -1 else _f32(1.0 / _f32(math.log(self.base)))

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.scale != 1:
            y = y * self.scale
        if self.shift != 0:
            y = y + self.shift
        y = torch.log(y)
        return y if self.base_scale == 1 else y * self.base_scale

    def caffe_settings(self) -> dict[str, Any]:
        return {"base": self.base, "scale": self.scale, "shift": self.shift}


def _exp_log_settings(layer: str, base: float, scale: float, shift: float) -> tuple[float, float, float]:
    """Exp's and Log's shared checks: ``base > 0`` or exactly ``-1`` (e), all finite."""
    b = check_real(layer, "base", base)
    if b != -1 and b <= 0:
        raise LayerConfigError(f"{layer}: base={base!r} is not allowed; it must be > 0, or -1 for e")
    return b, check_real(layer, "scale", scale), check_real(layer, "shift", shift)


class Threshold(_Neuron):
    """Caffe's Threshold (``threshold_layer.cpp``): 1 where ``x > threshold``, else 0 (NaN: 0).

    Caffe has no backward for it; here the output does not depend on the input in autograd.
    """

    caffe_type = "Threshold"

    def __init__(self, threshold: float = 0.0) -> None:
        super().__init__()
        self.threshold = _not_nan("Threshold", "threshold", threshold)

    def forward(self, x: Tensor) -> Tensor:
        return (x > self.threshold).to(x.dtype)

    def caffe_settings(self) -> dict[str, Any]:
        return {"threshold": self.threshold}


class Clip(_Neuron):
    """Caffe's Clip (``clip_layer.cpp``): ``std::max(min, std::min(x, max))``.

    Unlike ``torch.clamp``: a NaN input gives ``min``, ``min > max`` gives ``min`` everywhere,
    and the gradient passes where ``min <= x <= max`` (bounds included).
    """

    caffe_type = "Clip"

    def __init__(self, min: float, max: float) -> None:  # noqa: A002 - Caffe's field names
        super().__init__()
        self.min = _not_nan("Clip", "min", min)
        self.max = _not_nan("Clip", "max", max)

    @property
    def _above(self) -> float:
        """``std::max(min, max)``: the output above ``max`` (``min`` when it is the larger bound)."""
        return self.max if self.min < self.max else self.min

    def forward(self, x: Tensor) -> Tensor:
        inside = (x >= self.min) & (x <= self.max)
        outside = torch.where(x > self.max, x.new_full((), self._above), x.new_full((), self.min))
        return torch.where(inside, x, outside)

    def caffe_settings(self) -> dict[str, Any]:
        return {"min": self.min, "max": self.max}


class Swish(_Neuron):
    """Caffe's Swish (``swish_layer.cpp``): ``x * sigmoid(beta * x)``."""

    caffe_type = "Swish"

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = check_real("Swish", "beta", beta)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x if self.beta == 1 else x * self.beta)

    def caffe_settings(self) -> dict[str, Any]:
        return {"beta": self.beta}


# -- converters ----------------------------------------------------------------------------------


def _one_to_one(layer: LayerSpec, ctx: BuildContext) -> None:
    """Caffe's NeuronLayer (and Softmax): exactly one bottom and one top."""
    ctx.require_bottoms(1)
    if len(layer.tops) != 1:
        raise ctx.error(f"has {len(layer.tops)} tops, Caffe's {layer.type} takes exactly 1", NetDefinitionError)


@register_layer("ReLU")
def convert_relu(layer: LayerSpec, ctx: BuildContext) -> ReLU:
    """``relu_param.negative_slope``; engine CUDNN falls back to Caffe's kernel for a leaky ReLU
    and computes the same function otherwise, so the engine is not read."""
    _one_to_one(layer, ctx)
    return ReLU(layer.param.relu_param.negative_slope)


@register_layer("PReLU")
def convert_prelu(layer: LayerSpec, ctx: BuildContext) -> PReLU:
    """Slope blob ``(C,)`` (C = bottom axis 1) or ``()`` with ``channel_shared``; filler default
    constant 0.25 (a filler given without a value is Caffe's constant 0)."""
    _one_to_one(layer, ctx)
    shape = ctx.shape(0)
    if len(shape) < 2:
        raise ctx.error(f"needs a bottom with at least 2 axes (N, C, ...), got shape {shape}", InputShapeError)
    p = layer.param.prelu_param
    ctx.check_elements((shape[1],), "slope blob")
    module = PReLU(shape[1], p.channel_shared)
    ctx.fill(module.weight, p.filler if p.HasField("filler") else None)
    return module


@register_layer("ELU")
def convert_elu(layer: LayerSpec, ctx: BuildContext) -> ELU:
    """``x`` for x > 0, ``alpha * (exp(x) - 1)`` otherwise (``exp - 1`` as Caffe, not ``expm1``)."""
    _one_to_one(layer, ctx)
    return ELU(layer.param.elu_param.alpha)


@register_layer("Sigmoid")
def convert_sigmoid(layer: LayerSpec, ctx: BuildContext) -> Sigmoid:
    """``1 / (1 + exp(-x))``."""
    _one_to_one(layer, ctx)
    return Sigmoid()


@register_layer("TanH")
def convert_tanh(layer: LayerSpec, ctx: BuildContext) -> TanH:
    """``tanh(x)``."""
    _one_to_one(layer, ctx)
    return TanH()


@register_layer("AbsVal")
def convert_absval(layer: LayerSpec, ctx: BuildContext) -> AbsVal:
    """``|x|``, gradient ``sign(x)`` (0 at 0)."""
    _one_to_one(layer, ctx)
    return AbsVal()


@register_layer("Power")
def convert_power(layer: LayerSpec, ctx: BuildContext) -> Power:
    """``(shift + scale * x) ** power``, with Caffe's constant output when power or scale is 0."""
    _one_to_one(layer, ctx)
    p = layer.param.power_param
    return Power(p.power, p.scale, p.shift)


@register_layer("Dropout")
def convert_dropout(layer: LayerSpec, ctx: BuildContext) -> Dropout:
    """Active when the net is in training mode (``phase="train"`` or ``net.train()``)."""
    _one_to_one(layer, ctx)
    return Dropout(layer.param.dropout_param.dropout_ratio)


@register_layer("Softmax")
def convert_softmax(layer: LayerSpec, ctx: BuildContext) -> Softmax:
    """``softmax_param.axis`` (checked against the bottom's axes at forward); every engine
    computes the same function."""
    _one_to_one(layer, ctx)
    return Softmax(layer.param.softmax_param.axis)


@register_layer("BNLL")
def convert_bnll(layer: LayerSpec, ctx: BuildContext) -> BNLL:
    """``log(1 + exp(x))``, computed stably as Caffe does."""
    _one_to_one(layer, ctx)
    return BNLL()


@register_layer("Exp")
def convert_exp(layer: LayerSpec, ctx: BuildContext) -> Exp:
    """``base ** (shift + scale * x)`` (base -1 meaning e)."""
    _one_to_one(layer, ctx)
    p = layer.param.exp_param
    return Exp(p.base, p.scale, p.shift)


@register_layer("Log")
def convert_log(layer: LayerSpec, ctx: BuildContext) -> Log:
    """``log_base(shift + scale * x)`` (base -1 meaning e; base 1 refused)."""
    _one_to_one(layer, ctx)
    p = layer.param.log_param
    return Log(p.base, p.scale, p.shift)


@register_layer("Threshold")
def convert_threshold(layer: LayerSpec, ctx: BuildContext) -> Threshold:
    """``1`` where ``x > threshold``, else ``0``; no gradient."""
    _one_to_one(layer, ctx)
    return Threshold(layer.param.threshold_param.threshold)


@register_layer("Clip")
def convert_clip(layer: LayerSpec, ctx: BuildContext) -> Clip:
    """``clip_param.min`` and ``max`` are required fields in caffe.proto."""
    _one_to_one(layer, ctx)
    p = layer.param.clip_param
    missing = [name for name in ("min", "max") if not p.HasField(name)]
    if missing:
        raise ctx.error(f"clip_param needs {' and '.join(missing)} (required fields, no default)", LayerConfigError)
    return Clip(p.min, p.max)


@register_layer("Swish")
def convert_swish(layer: LayerSpec, ctx: BuildContext) -> Swish:
    """``x * sigmoid(beta * x)``."""
    _one_to_one(layer, ctx)
    return Swish(layer.param.swish_param.beta)


# -- writer ----------------------------------------------------------------------------------------

# The LayerParameter field that holds each module's settings.
_PARAM_FIELDS: dict[type, str] = {
    ReLU: "relu_param",
    PReLU: "prelu_param",
    ELU: "elu_param",
    Power: "power_param",
    Dropout: "dropout_param",
    Softmax: "softmax_param",
    Exp: "exp_param",
    Log: "log_param",
    Threshold: "threshold_param",
    Clip: "clip_param",
    Swish: "swish_param",
}


@register_writer(*_PARAM_FIELDS)
def write_activation(module: CaffeLayer, layer: Any) -> None:
    """The module's settings into its ``*_param`` (Clip's required ``min``/``max`` always written)."""
    param = param_of(layer, _PARAM_FIELDS, module)
    write_fields(param, module.caffe_settings(), keep_defaults=isinstance(module, Clip))
