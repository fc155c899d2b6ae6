"""ncnn emitter of Caffe's Pooling.

ncnn's Pooling (``src/layer/pooling.cpp``) with ``pad_mode`` 1 ("valid") pads exactly the given
top/bottom/left/right amounts (-FLT_MAX for MAX, 0 for AVE) and then takes ``(size - kernel) /
stride + 1`` windows (floor).  Caffe's output size (ceil by default, then its drop rule, for both
axes when either is padded: :func:`~caffenorm.caffe.ops.pooling.pooled_size`) is reproduced by
padding the bottom/right up to the end of Caffe's last window.

AVE divisors: ncnn divides by ``kh*kw`` (``avgpool_count_include_pad`` 1) or by the window's part
inside its padded input minus the given pads (0).  Caffe divides by the window's part inside
``[-pad, size + pad)``: padding counts, except beyond ``size + pad`` (ceil-mode windows that
overhang the padded input).  Where every window fits inside the padded input, Caffe's divisor is
``kh*kw``: one Pooling with ``count_include_pad`` 1.  Where some overhang, the padding is made
explicit (a Padding layer of zeros) and the Pooling counts only what is inside that padded
input (``count_include_pad`` 0, the overhang given as its own padding): exactly Caffe's divisor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from caffenorm.caffe.layers.pooling import Pooling
from caffenorm.caffe.ops.pooling import _FLT_MAX, _inside, pooled_size
from caffenorm.export.ncnn._model import Blob, EmitContext, ParamValue
from caffenorm.export.ncnn._registry import register_emitter

__all__ = ["emit_pooling"]

# ncnn Pooling
POOLING_TYPE: Final = 0  # 0 = MAX, 1 = AVE
POOLING_KERNEL_W: Final = 1
POOLING_STRIDE_W: Final = 2
POOLING_PAD_LEFT: Final = 3
POOLING_GLOBAL: Final = 4
POOLING_PAD_MODE: Final = 5  # 1 = "valid": exactly the given pads (0, ncnn's default, adds its own tail)
POOLING_COUNT_INCLUDE_PAD: Final = 6  # AVE divisor: 1 = kh*kw, 0 = the window's part inside the input
POOLING_KERNEL_H: Final = 11
POOLING_STRIDE_H: Final = 12
POOLING_PAD_TOP: Final = 13
POOLING_PAD_RIGHT: Final = 14
POOLING_PAD_BOTTOM: Final = 15
POOLING_MAX: Final = 0
POOLING_AVE: Final = 1
PAD_MODE_VALID: Final = 1

# ncnn Padding (src/layer/padding.cpp)
PADDING_TOP: Final = 0
PADDING_BOTTOM: Final = 1
PADDING_LEFT: Final = 2
PADDING_RIGHT: Final = 3
PADDING_TYPE: Final = 4  # 0 = constant
PADDING_VALUE: Final = 5


@register_emitter(Pooling)
def emit_pooling(ctx: EmitContext, module: Pooling, bottoms: Sequence[Blob]) -> list[Blob]:
    """ncnn Pooling: 0=pooling_type, 1/11=kernel, 2/12=stride, 3/13/14/15=pad left/top/right/bottom (Caffe's plus the tail its rounding reads), 5=pad_mode 1, 6=avgpool_count_include_pad 1; MAX windows starting past the input: Padding (-FLT_MAX) after the Pooling; AVE windows overhanging the padded input: Padding (0-3, 4=0, 5=0) + Pooling with 6=0; global: the H x W kernel."""
    (x,) = bottoms
    if module.top_mask:
        raise ctx.refuse("the MAX mask top (Caffe's second top) has no ncnn counterpart")
    if len(x.shape) != 3:
        raise ctx.refuse(f"ncnn's Pooling takes (C, H, W) images; the input has per-image shape {x.shape}")
    channels, height, width = x.shape
    hw = (height, width)
    if module.global_pooling:
        # Caffe's global pooling is the kernel H x W, stride 1, pad 0: written as such (ncnn's own
        # global pooling gives a 1-D blob where Caffe keeps (C, 1, 1)).
        kernel, stride, pad = hw, (1, 1), (0, 0)
    else:
        assert module.kernel_size is not None
        kernel, stride, pad = module.kernel_size, module.stride, module.pad
    any_pad = pad != (0, 0)
    out = tuple(
        pooled_size(n, k, s, p, module.round_mode, any_pad=any_pad) for n, k, s, p in zip(hw, kernel, stride, pad)
    )
    if (channels, *out) != ctx.out_shapes[0]:
        raise ctx.refuse(f"internal: pooled size {out} differs from the net's {ctx.out_shapes[0]}")
    # Where the last window ends, measured from the start of the padded input.
    ends = [(o - 1) * s + k for o, s, k in zip(out, stride, kernel)]
    overhang = any(e > n + 2 * p for e, n, p in zip(ends, hw, pad))
    ave = module.pool == "AVE"
    if ave and overhang and any((o - 1) * s - p > n for o, s, p, n in zip(out, stride, pad, hw)):
        # Only without padding can a ceil-mode window start beyond the input; its Caffe divisor
        # is negative (the result -0), ncnn's is 0 (NaN).
        raise ctx.refuse(
            f"AVE pooling whose last window starts beyond the input (kernel {kernel}, stride {stride}, input {hw}): "
            "Caffe divides its empty sum by a negative pool size (-0), ncnn by 0 (NaN)"
        )
    params: dict[int, ParamValue] = {
        POOLING_TYPE: POOLING_AVE if ave else POOLING_MAX,
        POOLING_KERNEL_W: kernel[1],
        POOLING_KERNEL_H: kernel[0],
        POOLING_STRIDE_W: stride[1],
        POOLING_STRIDE_H: stride[0],
        POOLING_PAD_MODE: PAD_MODE_VALID,
    }
    if ave and overhang:
        ctx.note(f"AVE windows overhang the padded input {tuple(n + 2 * p for n, p in zip(hw, pad))}: "
                 "zero Padding, then Pooling dividing by the part inside it (Caffe's border divisor)")
        source = x
        if any_pad:
            padded = (channels, height + 2 * pad[0], width + 2 * pad[1])
            source = ctx.layer(
                "Padding",
                [x],
                {PADDING_TOP: pad[0], PADDING_BOTTOM: pad[0], PADDING_LEFT: pad[1], PADDING_RIGHT: pad[1],
                 PADDING_TYPE: 0, PADDING_VALUE: 0.0},
                shape=padded,
                suffix="pad",
            )
        tail = [max(0, e - (n + 2 * p)) for e, n, p in zip(ends, hw, pad)]
        params.update({
            POOLING_PAD_LEFT: 0, POOLING_PAD_TOP: 0, POOLING_PAD_RIGHT: tail[1], POOLING_PAD_BOTTOM: tail[0],
            POOLING_COUNT_INCLUDE_PAD: 0,
        })
        return [ctx.layer("Pooling", [source], params)]
    # MAX windows that start beyond the padded input (stride > kernel, no padding) hold nothing:
    # Caffe gives them -FLT_MAX.  They are appended to the pooled output by a Padding layer rather
    # than read from an input padded out to them (a stride of 4096 on 16 x 13 took 9 s that way).
    inside = _inside(hw, out, stride, pad)
    ends = [(i - 1) * s + k for i, s, k in zip(inside, stride, kernel)]
    # Caffe's pads, and at the bottom/right what its last window reads beyond them (for MAX the
    # -FLT_MAX padding never wins over an image value).
    tail = [max(0, e - n - p) for e, n, p in zip(ends, hw, pad)]
    params.update({
        POOLING_PAD_LEFT: pad[1], POOLING_PAD_TOP: pad[0], POOLING_PAD_RIGHT: tail[1], POOLING_PAD_BOTTOM: tail[0],
        POOLING_COUNT_INCLUDE_PAD: 1,
    })
    if inside == out:
        return [ctx.layer("Pooling", [x], params)]
    pooled = ctx.layer("Pooling", [x], params, shape=(channels, *inside), suffix="inside")
    empty = [o - i for o, i in zip(out, inside)]
    return [ctx.layer(
        "Padding",
        [pooled],
        {PADDING_TOP: 0, PADDING_BOTTOM: empty[0], PADDING_LEFT: 0, PADDING_RIGHT: empty[1], PADDING_TYPE: 0,
         PADDING_VALUE: -_FLT_MAX},
    )]
