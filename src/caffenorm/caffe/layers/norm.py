"""Converters of the normalization family: LRN, BatchNorm, Scale, Bias, Normalize.

The mapping from Caffe fields to module arguments is one-to-one: the modules take Caffe's field
names.  What needs care is recorded where it happens: fillers (a ``filler`` given without a value
is constant 0, not 1), Scale's two-bottom form, and blob shapes derived from the bottoms.
"""

from __future__ import annotations

from typing import Any

from caffenorm.caffe.layers._fields import param_of
from caffenorm.caffe.registry import BuildContext, register_layer, register_writer, write_fields
from caffenorm.caffe.spec import LayerSpec
from caffenorm.errors import LayerConfigError, UnsupportedLayerError
from caffenorm.functional._checks import canonical_axis
from caffenorm.nn import LRN, BatchNorm, Bias, Normalize, Scale

__all__ = [
    "convert_batch_norm",
    "convert_bias",
    "convert_lrn",
    "convert_normalize",
    "convert_scale",
    "write_norm",
]


@register_layer("LRN")
def convert_lrn(layer: LayerSpec, ctx: BuildContext) -> LRN:
    """ACROSS_CHANNELS with ``k``; WITHIN_CHANNEL with ``k`` ignored and the n*n divisor (padding counted)."""
    ctx.require_bottoms(1)
    ctx.require_tops(1)
    shape = ctx.shape(0)
    if len(shape) != 4:
        raise ctx.error(f"needs a 4-D (N, C, H, W) bottom, as Caffe's LRN does; got shape {shape}")
    p = layer.param.lrn_param
    if p.engine == p.CUDNN and p.norm_region == p.WITHIN_CHANNEL:
        # Caffe's cuDNN WITHIN path (cudnnDivisiveNormalization) uses k; CPU Caffe does not.
        raise ctx.error("engine CUDNN with WITHIN_CHANNEL computes something else than CPU Caffe; "
                        "use engine CAFFE (or DEFAULT) to get Caffe's reference result", UnsupportedLayerError)
    return LRN(p.local_size, p.alpha, p.beta, p.k, p.norm_region)


@register_layer("BatchNorm")
def convert_batch_norm(layer: LayerSpec, ctx: BuildContext) -> BatchNorm:
    """Stored sums divided by the scale factor (0 -> zero statistics, no NaN); batch statistics and
    Caffe's blob updates in TRAIN unless ``use_global_stats`` says otherwise; any (N, C, ...) bottom."""
    ctx.require_bottoms(1)
    ctx.require_tops(1)
    shape = ctx.shape(0)
    if len(shape) < 2:
        raise ctx.error(f"needs an (N, C, ...) bottom, got shape {shape}")
    p = layer.param.batch_norm_param
    use_global = p.use_global_stats if p.HasField("use_global_stats") else None
    return BatchNorm(shape[1], use_global, p.moving_average_fraction, p.eps)


def _blob_shape(ctx: BuildContext, shape: tuple[int, ...], axis: int, num_axes: int) -> tuple[int, ...]:
    """Caffe's Scale/Bias one-bottom blob shape: ``shape[axis : axis + num_axes]``."""
    start = canonical_axis(ctx.layer.type, "axis", axis, len(shape))
    if num_axes < -1:
        raise ctx.error(f"num_axes={num_axes} is not allowed; use -1 or >= 0", LayerConfigError)
    end = len(shape) if num_axes == -1 else start + num_axes
    if end > len(shape):
        raise ctx.error(f"axis={axis} + num_axes={num_axes} exceeds the bottom's {len(shape)} axes {shape}",
                        LayerConfigError)
    return shape[start:end]


@register_layer("Scale")
def convert_scale(layer: LayerSpec, ctx: BuildContext) -> Scale:
    """Any ``axis``/``num_axes`` (0: scalar blob, -1: to the end), ``bias_term``, the two-bottom form
    (blobs ``[bias]`` only), and Caffe's filler defaults (no filler: 1; a filler without value: 0)."""
    ctx.require_bottoms(1, 2)
    ctx.require_tops(1)
    p = layer.param.scale_param
    if len(layer.bottoms) == 2:
        # The scale is bottom[1]; only the bias (shaped like bottom[1]) is learned.
        module = Scale(ctx.shape(1) if p.bias_term else None, p.axis, p.num_axes, p.bias_term, scale_from_input=True)
    else:
        shape = _blob_shape(ctx, ctx.shape(0), p.axis, p.num_axes)
        ctx.check_elements(shape, "scale blob")
        module = Scale(shape, p.axis, p.num_axes, p.bias_term)
        # No filler: 1.  A filler given without a value is Caffe's constant 0.
        ctx.fill(module.weight, p.filler if p.HasField("filler") else None)
    if module.bias is not None:
        ctx.fill(module.bias, p.bias_filler if p.HasField("bias_filler") else None)
    return module


@register_layer("Bias")
def convert_bias(layer: LayerSpec, ctx: BuildContext) -> Bias:
    """Scale's axis rules for an added blob, or the two-bottom form."""
    ctx.require_bottoms(1, 2)
    ctx.require_tops(1)
    p = layer.param.bias_param
    if len(layer.bottoms) == 2:
        return Bias(None, p.axis, p.num_axes, bias_from_input=True)
    shape = _blob_shape(ctx, ctx.shape(0), p.axis, p.num_axes)
    ctx.check_elements(shape, "bias blob")
    module = Bias(shape, p.axis, p.num_axes)
    ctx.fill(module.bias, p.filler if p.HasField("filler") else None)
    return module


@register_layer("Normalize")
def convert_normalize(layer: LayerSpec, ctx: BuildContext) -> Normalize:
    """SSD's ``norm_param``: eps inside the sqrt, ``across_spatial``, ``channel_shared`` (blob ``()``
    or ``(C,)``), ``scale_filler`` (default 1)."""
    ctx.require_bottoms(1)
    ctx.require_tops(1)
    shape = ctx.shape(0)
    if not 2 <= len(shape) <= 4:
        raise ctx.error(f"needs a 2-D to 4-D bottom (Caffe reads at most 4 axes), got shape {shape}")
    p = layer.param.norm_param
    module = Normalize(shape[1], p.across_spatial, p.channel_shared, p.eps)
    # No scale_filler: constant 1 (SSD prototxts give value 20).
    ctx.fill(module.weight, p.scale_filler if p.HasField("scale_filler") else None)
    return module


_PARAM_FIELDS: dict[type, str] = {
    LRN: "lrn_param",
    BatchNorm: "batch_norm_param",
    Scale: "scale_param",
    Bias: "bias_param",
    Normalize: "norm_param",
}


@register_writer(*_PARAM_FIELDS)
def write_norm(module: Any, layer: Any) -> None:
    """The module's current settings (an edited ``k``, ``eps``, ...) into its ``*_param``."""
    write_fields(param_of(layer, _PARAM_FIELDS, module), module.caffe_settings())
