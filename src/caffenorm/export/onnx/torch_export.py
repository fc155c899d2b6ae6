"""Exact ONNX translations of caffenorm's custom ops, for ``torch.onnx.export`` of a user's own
PyTorch model that contains caffenorm modules.

:class:`caffenorm.LRN` and :class:`caffenorm.Normalize` run the ``torch.library`` custom ops
``caffenorm::lrn`` (returns ``(y, S)``) and ``caffenorm::normalize`` (returns ``(y, norm)``), which
torch's exporters do not know.  This module gives both exporters the same translation, written
once over a two-method builder:

* the TorchScript exporter (``dynamo=False``): :func:`register_torch_onnx` registers symbolic
  functions with ``torch.onnx.register_custom_op_symbolic`` (for opset 13 and later);
  :func:`unregister_torch_onnx` removes them;
* the dynamo exporter (``dynamo=True``, the default): pass
  ``custom_translation_table=caffenorm.export.onnx.custom_translation_table()``.

Registration is explicit (importing :mod:`caffenorm.export.onnx` changes nothing in torch): the
registry is process-wide, and an unregistered export must keep failing with torch's error naming
the op rather than pick up a translation as a side effect of some other import.

The translations (exact, not approximations):

* LRN ACROSS_CHANNELS: ``y`` = ONNX ``LRN(size, alpha, beta, bias=k)`` (k kept); ``S = k +
  alpha * mean over the zero-padded (n, 1, 1) window of x**2`` (a 3-D ``AveragePool``, which is
  ``alpha/n * sum``).
* LRN WITHIN_CHANNEL: ``S = 1 + alpha * AveragePool_{n x n}(Pad_{(n-1)/2}(x**2))`` (k ignored, the
  divisor n*n with the padding counted, as Caffe), ``y = x * S**-beta``.
* Normalize: ``norm = sqrt(ReduceSumSquare(x) + eps)`` over C (per position) or C*H*W (across
  spatial), ``y = x / norm`` (``x * (1/norm)`` across spatial) times the scale, shared or per
  channel; ``norm`` reshaped to the op's ``(N, 1, 1)`` / ``(N, 1, H*W)``.

``S`` and ``norm`` are the ops' second outputs (kept for backward); exporters drop them when
nothing reads them.  float16/bfloat16 inputs are computed in float32 and cast back, as the ops do.
BatchNorm, Scale and Bias need nothing: they are plain torch ops (``batch_norm``, ``mul``,
``add``) that both exporters translate exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from caffenorm.functional.lrn import NormRegion

__all__ = ["custom_translation_table", "register_torch_onnx", "unregister_torch_onnx"]

# The TorchScript symbolics are registered for this opset and apply to every later one (the
# ops they emit exist with these signatures from opset 13; ReduceSumSquare's axes become an
# input at 18, handled below).
_TS_OPSET = 13
_OPS = ("caffenorm::lrn", "caffenorm::normalize")

# ONNX TensorProto data types
_FLOAT, _DOUBLE = 1, 11


class _Builder:
    """What the shared translations need from an exporter: nodes, constants and the input's facts."""

    opset: int

    def op(self, name: str, *inputs: Any, **attrs: Any) -> Any:
        raise NotImplementedError

    def const(self, values: Any, dtype: Any) -> Any:
        raise NotImplementedError

    def ints(self, values: Sequence[int]) -> Any:
        return self.const(np.asarray(list(values), dtype=np.int64), np.int64)

    def reduce_sum_square(self, x: Any, axes: Sequence[int]) -> Any:
        if self.opset >= 18:
            return self.op("ReduceSumSquare", x, self.ints(axes), keepdims=1)
        return self.op("ReduceSumSquare", x, axes=list(axes), keepdims=1)


def _compute_type(kind: str | None) -> tuple[Any, int, bool]:
    """(numpy dtype of the constants, ONNX type, whether to cast) for an input dtype name: float16
    and bfloat16 are computed in float32, as caffenorm's kernels do."""
    if kind == "double":
        return np.float64, _DOUBLE, False
    return np.float32, _FLOAT, kind in ("half", "bfloat16")


def _lrn(b: _Builder, x: Any, kind: str | None, local_size: int, alpha: float, beta: float, k: float,
         norm_region: int) -> tuple[Any, Any]:
    """Caffe's LRN as ONNX: ``(y, S)``, both regions (see the module docstring)."""
    from caffenorm.functional.lrn import check_local_size

    n = check_local_size(int(local_size))
    half = (n - 1) // 2
    dtype, onnx_type, cast = _compute_type(kind)
    xc = b.op("Cast", x, to=onnx_type) if cast else x

    def c(v: float) -> Any:
        return b.const(np.asarray(v, dtype=dtype), dtype)

    sq = b.op("Mul", xc, xc)
    if int(norm_region) == NormRegion.WITHIN_CHANNEL:
        # Caffe's Power -> AVE pooling (n x n, divisor n*n: padding counted) -> Power(alpha, shift 1).
        # Explicit zero padding rather than pads + count_include_pad=1 (equal by ONNX's definition;
        # OpenCV dnn 4.x ignores count_include_pad).
        padded = b.op("Pad", sq, b.ints([0, 0, half, half, 0, 0, half, half]), c(0.0), mode="constant")
        mean = b.op("AveragePool", padded, kernel_shape=[n, n], strides=[1, 1])
        s = b.op("Add", b.op("Mul", mean, c(alpha)), c(1.0))
        y = b.op("Mul", xc, b.op("Pow", s, c(-beta)))
    else:
        y = b.op("LRN", xc, size=n, alpha=float(alpha), beta=float(beta), bias=float(k))
        # S = k + alpha/n * (sum over the channel window): the window mean of a (n, 1, 1) pooling.
        sq5 = b.op("Unsqueeze", sq, b.ints([1]))  # (N, 1, C, H, W): the channel window as a pooling
        padded = b.op("Pad", sq5, b.ints([0, 0, half, 0, 0, 0, 0, half, 0, 0]), c(0.0), mode="constant")
        mean = b.op("AveragePool", padded, kernel_shape=[n, 1, 1], strides=[1, 1, 1])
        s = b.op("Add", b.op("Mul", b.op("Squeeze", mean, b.ints([1])), c(alpha)), c(k))
    if cast:
        y = b.op("CastLike", y, x)
    return y, s


def _normalize(b: _Builder, x: Any, scale: Any, kind: str | None, rank: int | None, scale_rank: int | None,
               across_spatial: bool, eps: float) -> tuple[Any, Any]:
    """SSD's Normalize as ONNX: ``(y, norm)`` (see the module docstring)."""
    if rank is None or scale_rank is None:
        raise ValueError("caffenorm::normalize: the input's and the scale's ranks must be known to export it")
    dtype, onnx_type, cast = _compute_type(kind)
    xc = b.op("Cast", x, to=onnx_type) if cast else x
    s = b.op("Cast", scale, to=onnx_type) if cast else scale
    axes = list(range(1, rank)) if across_spatial else [1]
    ss = b.reduce_sum_square(xc, axes)
    nrm = b.op("Sqrt", b.op("Add", ss, b.const(np.asarray(eps, dtype=dtype), dtype)))  # eps inside the sqrt
    y = b.op("Mul", xc, b.op("Reciprocal", nrm)) if across_spatial else b.op("Div", xc, nrm)
    if scale_rank == 1:
        s = b.op("Reshape", s, b.ints([-1] + [1] * (rank - 2)))
    y = b.op("Mul", y, s)
    if cast:
        y = b.op("CastLike", y, x)
    norm = b.op("Reshape", nrm, b.ints([0, 1, -1]))  # the op's (N, 1, 1) or (N, 1, H*W)
    return y, norm


# -- TorchScript exporter ----------------------------------------------------------------------


class _TorchScriptBuilder(_Builder):
    def __init__(self, g: Any) -> None:
        self.g = g
        self.opset = int(g.opset)

    def op(self, name: str, *inputs: Any, **attrs: Any) -> Any:
        typed = {}
        for key, value in attrs.items():
            first = value[0] if isinstance(value, (list, tuple)) and value else value
            kind = "s" if isinstance(first, str) else "f" if isinstance(first, float) else "i"
            typed[f"{key}_{kind}"] = value  # TorchScript's g.op names each attribute's type
        return self.g.op(name, *inputs, **typed)

    def const(self, values: Any, dtype: Any) -> Any:
        return self.g.op("Constant", value_t=torch.from_numpy(np.asarray(values, dtype=dtype)))


def _ts_kind(value: Any) -> str | None:
    """The dtype of a TorchScript value as caffenorm's names it ('half', 'double', ...), if known."""
    try:
        name = value.type().scalarType()
    except (RuntimeError, AttributeError):  # not a tensor type with a known dtype
        return None
    return {"Half": "half", "BFloat16": "bfloat16", "Double": "double", "Float": "float"}.get(name)


def _ts_rank(value: Any) -> int | None:
    try:
        return value.type().dim()  # type: ignore[no-any-return]
    except (RuntimeError, AttributeError):  # not a tensor type with a known rank
        return None


def _lrn_symbolic(g: Any, x: Any, local_size: Any, alpha: Any, beta: Any, k: Any, norm_region: Any) -> Any:
    from torch.onnx import symbolic_helper as sh

    n, a, b_, kk, region = (sh._parse_arg(local_size, "i"), sh._parse_arg(alpha, "f"), sh._parse_arg(beta, "f"),
                            sh._parse_arg(k, "f"), sh._parse_arg(norm_region, "i"))
    return _lrn(_TorchScriptBuilder(g), x, _ts_kind(x), n, a, b_, kk, region)


def _normalize_symbolic(g: Any, x: Any, scale: Any, across_spatial: Any, eps: Any, caffe_backward: Any) -> Any:
    from torch.onnx import symbolic_helper as sh

    across, e = sh._parse_arg(across_spatial, "b"), sh._parse_arg(eps, "f")
    return _normalize(_TorchScriptBuilder(g), x, scale, _ts_kind(x), _ts_rank(x), _ts_rank(scale), bool(across), e)


_registered = False


def register_torch_onnx() -> None:
    """Register the translations of ``caffenorm::lrn`` and ``caffenorm::normalize`` with
    torch.onnx's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``), for opset 13 and
    later.  Idempotent.  For the dynamo exporter pass :func:`custom_translation_table` instead."""
    global _registered
    torch.onnx.register_custom_op_symbolic("caffenorm::lrn", _lrn_symbolic, _TS_OPSET)
    torch.onnx.register_custom_op_symbolic("caffenorm::normalize", _normalize_symbolic, _TS_OPSET)
    _registered = True


def unregister_torch_onnx() -> None:
    """Undo :func:`register_torch_onnx`: torch's exporter then stops at the ops again, with its
    error naming them."""
    global _registered
    if not _registered:
        return
    for name in _OPS:
        torch.onnx.unregister_custom_op_symbolic(name, _TS_OPSET)
        _drop_empty_group(name)
    _registered = False


def _drop_empty_group(name: str) -> None:
    """torch leaves an empty function group behind when the last custom symbolic of an op is
    unregistered, and its exporter then fails with "min() arg is an empty sequence" instead of
    naming the op; remove the group so the registry is as before (torch internals, so guarded)."""
    try:
        from torch.onnx._internal.torchscript_exporter import registration

        group = registration.registry.get_function_group(name)
        if group is not None and len(group._functions) == 0:
            del registration.registry._registry[name]
    except (ImportError, AttributeError, KeyError):  # pragma: no cover - another torch layout
        return  # the registry is then only less tidy: torch's error is less clear, nothing breaks


# -- dynamo exporter ---------------------------------------------------------------------------


class _OnnxScriptBuilder(_Builder):
    """Ops recorded by the dynamo exporter's tracer (which evaluates ``onnxscript`` calls)."""

    opset = 18  # the exporter builds at opset >= 18 (lower requests are converted afterwards)

    def __init__(self) -> None:
        from onnxscript import opset18

        self.ops = opset18

    def op(self, name: str, *inputs: Any, **attrs: Any) -> Any:
        return getattr(self.ops, name)(*inputs, **attrs)

    def const(self, values: Any, dtype: Any) -> Any:
        from onnxscript import ir

        return self.ops.Constant(value=ir.tensor(np.asarray(values, dtype=dtype)))


def _ir_kind(value: Any) -> str | None:
    from onnxscript import ir

    names = {ir.DataType.FLOAT16: "half", ir.DataType.BFLOAT16: "bfloat16", ir.DataType.DOUBLE: "double",
             ir.DataType.FLOAT: "float"}
    return names.get(getattr(value, "dtype", None))


def _ir_rank(value: Any) -> int | None:
    shape = getattr(value, "shape", None)
    return None if shape is None else len(shape)


def _lrn_translation(x: Any, local_size: int, alpha: float, beta: float, k: float, norm_region: int) -> Any:
    """``caffenorm::lrn`` for the dynamo exporter."""
    return _lrn(_OnnxScriptBuilder(), x, _ir_kind(x), local_size, alpha, beta, k, norm_region)


def _normalize_translation(x: Any, scale: Any, across_spatial: bool, eps: float, caffe_backward: bool) -> Any:
    """``caffenorm::normalize`` for the dynamo exporter."""
    return _normalize(_OnnxScriptBuilder(), x, scale, _ir_kind(x), _ir_rank(x), _ir_rank(scale),
                      bool(across_spatial), float(eps))


def custom_translation_table() -> dict[Callable[..., Any], Callable[..., Any]]:
    """``{torch.ops.caffenorm.lrn.default: ..., torch.ops.caffenorm.normalize.default: ...}`` for
    ``torch.onnx.export(model, args, dynamo=True, custom_translation_table=...)``.

    Needs ``onnxscript`` (which the dynamo exporter needs anyway); checked here so a missing package
    is an :class:`~caffenorm.ExportError` saying ``pip install caffenorm[onnx] onnxscript``.
    """
    from caffenorm.errors import ExportError

    try:
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ExportError(
            f"torch.onnx's dynamo exporter and these translations need 'onnxscript' ({err}); install it with: "
            "pip install caffenorm[onnx] onnxscript"
        ) from None
    import caffenorm.functional.lrn
    import caffenorm.functional.normalize  # noqa: F401

    return {
        torch.ops.caffenorm.lrn.default: _lrn_translation,
        torch.ops.caffenorm.normalize.default: _normalize_translation,
    }
