"""The Eltwise converter and module: Caffe's elementwise SUM (with coefficients), PROD and MAX of
two or more bottoms of one shape (``eltwise_layer.cpp``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from caffenorm.caffe.registry import BuildContext, register_layer, register_writer, write_fields
from caffenorm.caffe.spec import LayerSpec
from caffenorm.errors import InputShapeError, LayerConfigError, NetDefinitionError
from caffenorm.functional._checks import check_real
from caffenorm.nn._base import CaffeLayer, setting_repr

__all__ = ["Eltwise", "convert_eltwise", "write_eltwise"]

_OPERATIONS = ("PROD", "SUM", "MAX")  # caffe.proto's EltwiseOp numbering: PROD=0 SUM=1 MAX=2


class Eltwise(CaffeLayer):
    """Caffe's Eltwise over two or more tensors of the same shape.

    * ``SUM``: ``coeff[0] * x0 + coeff[1] * x1 + ...``, added in bottom order (``coeff`` empty:
      all 1).
    * ``PROD``: ``x0 * x1 * ...``, multiplied in bottom order.  The gradient is the product of the
      other inputs, i.e. Caffe's ``stable_prod_grad: true`` (the default); Caffe's unstable form,
      ``top / x_i``, differs only where an input is 0 (it gives NaN there), so it is not
      reproduced and ``stable_prod_grad`` is only recorded.
    * ``MAX``: Caffe's running comparison, which decides ties and NaNs: ``x0 > x1 ? x0 : x1``
      (a tie between the first two goes to ``x1``), then each later ``x_i`` replaces the running
      max only if strictly greater (a later tie keeps the earlier input).  The gradient goes to
      the selected input only, as Caffe's ``max_idx_`` mask does.

    Args:
        operation: ``"SUM"``, ``"PROD"`` or ``"MAX"`` (or caffe.proto's numbers 1, 0, 2).
            Default: ``"SUM"``
        coeff: one coefficient per input, SUM only (Caffe ignores them for MAX and refuses them
            for PROD).  Default: none (all 1)
        stable_prod_grad: recorded for round trips; see PROD above.  Default: True

    No blobs.  Forward: ``eltwise(x0, x1, ...)``.
    """

    caffe_type = "Eltwise"

    def __init__(
        self, operation: str | int = "SUM", coeff: Sequence[float] = (), stable_prod_grad: bool = True
    ) -> None:
        super().__init__()
        if isinstance(operation, int) and not isinstance(operation, bool) and 0 <= operation < len(_OPERATIONS):
            operation = _OPERATIONS[operation]
        op = str(operation).upper() if isinstance(operation, str) else None
        if op not in _OPERATIONS:
            raise LayerConfigError(f"Eltwise: operation={operation!r} is not allowed; use 'SUM', 'PROD' or 'MAX'")
        self.coeff = tuple(check_real("Eltwise", f"coeff[{i}]", c) for i, c in enumerate(coeff))
        if op == "PROD" and self.coeff:
            raise LayerConfigError(
                f"Eltwise: coeff={list(self.coeff)} with operation PROD; Caffe takes coefficients for SUM only"
            )
        self.operation = op
        self.stable_prod_grad = bool(stable_prod_grad)

    def forward(self, *bottoms: Tensor) -> Tensor:
        if len(bottoms) < 2:
            raise InputShapeError(f"Eltwise: got {len(bottoms)} input(s); Caffe's Eltwise takes at least 2")
        shapes = [tuple(b.shape) for b in bottoms]
        if any(s != shapes[0] for s in shapes):
            raise InputShapeError(
                f"Eltwise: inputs must all have the same shape (Caffe does not broadcast), got {shapes}"
            )
        if self.coeff and self.operation == "SUM" and len(self.coeff) != len(bottoms):
            raise InputShapeError(
                f"Eltwise: {len(self.coeff)} coefficients for {len(bottoms)} inputs; give one per input"
            )
        if self.operation == "SUM":
            return self._sum(bottoms)
        if self.operation == "PROD":
            out = bottoms[0] * bottoms[1]
            for b in bottoms[2:]:
                out = out * b
            return out
        # MAX: torch.where keeps Caffe's tie/NaN rule and routes the gradient to the chosen input.
        out = torch.where(bottoms[0] > bottoms[1], bottoms[0], bottoms[1])
        for b in bottoms[2:]:
            out = torch.where(b > out, b, out)
        return out

    def _sum(self, bottoms: Sequence[Tensor]) -> Tensor:
        coeff = self.coeff or (1.0,) * len(bottoms)
        out = bottoms[0] if coeff[0] == 1 else bottoms[0] * coeff[0]
        for c, b in zip(coeff[1:], bottoms[1:]):
            out = out + b if c == 1 else torch.add(out, b, alpha=c)
        return out

    def caffe_settings(self) -> dict[str, Any]:
        return {"operation": self.operation, "coeff": list(self.coeff), "stable_prod_grad": self.stable_prod_grad}

    def extra_repr(self) -> str:
        return f"operation={self.operation!r}, coeff={setting_repr(list(self.coeff))}, stable_prod_grad={self.stable_prod_grad}"


@register_layer("Eltwise")
def convert_eltwise(layer: LayerSpec, ctx: BuildContext) -> Eltwise:
    """Caffe's LayerSetUp checks: at least 2 bottoms, one top, ``coeff`` empty or one per bottom,
    no ``coeff`` with PROD.  Equal bottom shapes are checked when the shapes are known (Reshape)."""
    if len(layer.bottoms) < 2:
        raise ctx.error(f"has {len(layer.bottoms)} bottom(s), Caffe's Eltwise takes at least 2")
    if len(layer.tops) != 1:
        raise ctx.error(f"has {len(layer.tops)} tops, Caffe's Eltwise takes exactly 1", NetDefinitionError)
    p = layer.param.eltwise_param
    if len(p.coeff) not in (0, len(layer.bottoms)):
        raise ctx.error(
            f"has {len(p.coeff)} coeff for {len(layer.bottoms)} bottoms; Caffe takes one coefficient per bottom "
            "(or none)",
            LayerConfigError,
        )
    operation = p.DESCRIPTOR.fields_by_name["operation"].enum_type.values_by_number[p.operation].name
    module = Eltwise(operation, list(p.coeff), p.stable_prod_grad)  # the net adds the layer's location to errors
    shapes = ctx.bottom_shapes
    if all(s is not None for s in shapes) and any(s != shapes[0] for s in shapes):
        named = ", ".join(f"{b} {s}" for b, s in zip(layer.bottoms, shapes))
        raise ctx.error(
            f"bottoms must all have the same shape (Caffe does not broadcast), got {named}", InputShapeError
        )
    return module


@register_writer(Eltwise)
def write_eltwise(module: Eltwise, layer: Any) -> None:
    """``eltwise_param``: operation, coeff, stable_prod_grad."""
    write_fields(layer.eltwise_param, module.caffe_settings())
