"""Converters of the loss family used by train prototxts: SoftmaxWithLoss, EuclideanLoss, Accuracy.

Loss tops are scalars (shape ``()``), as in Caffe; :meth:`caffenorm.Net.loss` sums them with their
``loss_weight`` into the objective Caffe's solver minimises.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from caffenorm.caffe.registry import BuildContext, register_layer, register_writer, write_fields
from caffenorm.caffe.spec import LayerSpec
from caffenorm.errors import InputShapeError, LayerConfigError
from caffenorm.functional._checks import canonical_axis
from caffenorm.nn._base import CaffeLayer

__all__ = ["Accuracy", "EuclideanLoss", "SoftmaxWithLoss", "convert_accuracy", "convert_euclidean_loss",
           "convert_softmax_with_loss"]

_FLT_MIN = 1.1754943508222875e-38  # Caffe caps -log(p) at -log(FLT_MIN)
_NORMALIZATIONS = ("FULL", "VALID", "BATCH_SIZE", "NONE")


def _split(layer: str, scores: Tensor, labels: Tensor, axis: int) -> tuple[int, int, int, Tensor]:
    """Caffe's ``outer x classes x inner`` view of the scores and the labels as (outer, inner) ints."""
    ax = canonical_axis(layer, "axis", axis, scores.dim())
    outer, classes, inner = math.prod(scores.shape[:ax]), scores.shape[ax], math.prod(scores.shape[ax + 1 :])
    if labels.numel() != outer * inner:
        raise InputShapeError(
            f"{layer}: {labels.numel()} labels for scores of shape {tuple(scores.shape)} (axis {ax}); "
            f"expected one label per position: {outer} x {inner} = {outer * inner}"
        )
    return outer, classes, inner, labels.reshape(outer, inner).long()


class _SoftmaxLossFunction(torch.autograd.Function):
    """From scores ``(positions, classes)``: Caffe's forward ``-log(max(p_label, FLT_MIN))`` and its
    backward to the scores, ``p - onehot`` (which ignores the cap, as Caffe's does), both divided by
    the normaliser; ignored labels contribute nothing."""

    @staticmethod
    def forward(ctx: Any, scores: Tensor, labels: Tensor, valid: Tensor, normalizer: Tensor) -> Tensor:
        prob = torch.softmax(scores, dim=1)
        picked = prob.gather(1, labels.clamp(0, prob.shape[1] - 1).unsqueeze(1)).squeeze(1)
        loss = -(torch.log(picked.clamp_min(_FLT_MIN)) * valid).sum() / normalizer
        ctx.save_for_backward(prob, labels, valid, normalizer)
        return loss

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None, None]:
        prob, labels, valid, normalizer = ctx.saved_tensors
        grad = prob.clone()
        grad.scatter_add_(1, labels.clamp(0, prob.shape[1] - 1).unsqueeze(1), -torch.ones_like(valid).unsqueeze(1))
        grad *= (valid * (g / normalizer)).unsqueeze(1)
        return grad, None, None, None


class SoftmaxWithLoss(CaffeLayer):
    """Caffe's SoftmaxWithLoss (``softmax_loss_layer.cpp``): softmax over ``axis``, then the mean
    negative log-likelihood of the labels under Caffe's ``normalization`` (VALID: over the labels
    not equal to ``ignore_label``; FULL: over all positions; BATCH_SIZE: over the outer size; NONE).
    A second top, if requested, is the probability blob."""

    caffe_type = "SoftmaxWithLoss"

    def __init__(
        self, axis: int = 1, ignore_label: int | None = None, normalization: str = "VALID", tops: int = 1
    ) -> None:
        super().__init__()
        if normalization not in _NORMALIZATIONS:
            raise LayerConfigError(f"SoftmaxWithLoss: normalization={normalization!r}; use one of {_NORMALIZATIONS}")
        self.axis, self.ignore_label, self.normalization, self.tops = axis, ignore_label, normalization, tops

    def forward(self, scores: Tensor, labels: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        outer, classes, inner, lab = _split("SoftmaxWithLoss", scores, labels, self.axis)
        rows = scores.reshape(outer, classes, inner).transpose(1, 2).reshape(outer * inner, classes)
        flat = lab.reshape(-1)
        valid = torch.ones_like(flat, dtype=scores.dtype)
        if self.ignore_label is not None:
            valid = (flat != self.ignore_label).to(scores.dtype)
        count = {"FULL": outer * inner, "BATCH_SIZE": outer, "NONE": 1}.get(self.normalization)
        normalizer = valid.sum() if count is None else torch.tensor(float(count), device=scores.device)
        loss = _SoftmaxLossFunction.apply(rows, flat, valid, normalizer.clamp_min(1.0).to(scores.dtype))
        if self.tops == 1:
            return loss
        return loss, torch.softmax(scores, dim=canonical_axis("SoftmaxWithLoss", "axis", self.axis, scores.dim()))

    def caffe_settings(self) -> dict[str, Any]:
        return {"axis": self.axis, "ignore_label": self.ignore_label, "normalization": self.normalization}

    def extra_repr(self) -> str:
        return f"axis={self.axis}, ignore_label={self.ignore_label}, normalization={self.normalization}, tops={self.tops}"


class EuclideanLoss(CaffeLayer):
    """Caffe's EuclideanLoss: ``sum((a - b)**2) / (2 * N)`` with ``N = a.shape[0]``."""

    caffe_type = "EuclideanLoss"

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if a.numel() != b.numel():
            raise InputShapeError(f"EuclideanLoss: inputs of shapes {tuple(a.shape)} and {tuple(b.shape)} differ in size")
        diff = a - b.reshape(a.shape)
        return (diff * diff).sum() / (2 * a.shape[0])


class Accuracy(CaffeLayer):
    """Caffe's Accuracy (``accuracy_layer.cpp``): the fraction of positions whose label is among the
    ``top_k`` scores (a label ties in its favour: it counts as correct unless ``top_k`` classes score
    strictly higher); ``ignore_label`` positions are skipped.  A second top gives the per-class
    accuracy.  No gradient."""

    caffe_type = "Accuracy"

    def __init__(self, top_k: int = 1, axis: int = 1, ignore_label: int | None = None, tops: int = 1) -> None:
        super().__init__()
        if top_k < 1:
            raise LayerConfigError(f"Accuracy: top_k={top_k} must be >= 1")
        self.top_k, self.axis, self.ignore_label, self.tops = top_k, axis, ignore_label, tops

    @torch.no_grad()
    def forward(self, scores: Tensor, labels: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        outer, classes, inner, lab = _split("Accuracy", scores, labels, self.axis)
        s = scores.reshape(outer, classes, inner).transpose(1, 2).reshape(-1, classes)
        flat = lab.reshape(-1)
        keep = torch.ones_like(flat, dtype=torch.bool) if self.ignore_label is None else flat != self.ignore_label
        picked = s.gather(1, flat.clamp(0, classes - 1).unsqueeze(1))
        correct = ((s > picked).sum(dim=1) < self.top_k) & keep
        accuracy = correct.sum().to(s.dtype) / keep.sum().clamp_min(1).to(s.dtype)
        if self.tops == 1:
            return accuracy
        index = flat.clamp(0, classes - 1)
        per_class_total = torch.zeros(classes, dtype=s.dtype, device=s.device).index_add_(0, index, keep.to(s.dtype))
        per_class_hits = torch.zeros(classes, dtype=s.dtype, device=s.device).index_add_(0, index, correct.to(s.dtype))
        return accuracy, per_class_hits / per_class_total.clamp_min(1)

    def caffe_settings(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "axis": self.axis, "ignore_label": self.ignore_label}

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}, axis={self.axis}, ignore_label={self.ignore_label}, tops={self.tops}"


def _ignore_label(param: Any) -> int | None:
    return param.ignore_label if param.HasField("ignore_label") else None


@register_layer("SoftmaxWithLoss")
def convert_softmax_with_loss(layer: LayerSpec, ctx: BuildContext) -> SoftmaxWithLoss:
    """Mean negative log-likelihood after a softmax; ``loss_param`` ignore_label and normalization
    (the legacy ``normalize: false`` means BATCH_SIZE); a second top is the probabilities."""
    ctx.require_bottoms(2)
    ctx.require_tops(1, 2)
    lp = layer.param.loss_param
    if lp.HasField("normalize"):
        normalization = "VALID" if lp.normalize else "BATCH_SIZE"
    else:
        normalization = lp.DESCRIPTOR.fields_by_name["normalization"].enum_type.values_by_number[lp.normalization].name
    return SoftmaxWithLoss(layer.param.softmax_param.axis, _ignore_label(lp), normalization, len(layer.tops))


@register_layer("EuclideanLoss")
def convert_euclidean_loss(layer: LayerSpec, ctx: BuildContext) -> EuclideanLoss:
    """``sum((a - b)**2) / (2 N)``."""
    ctx.require_bottoms(2)
    ctx.require_tops(1)
    return EuclideanLoss()


@register_layer("Accuracy")
def convert_accuracy(layer: LayerSpec, ctx: BuildContext) -> Accuracy:
    """``accuracy_param`` top_k, axis, ignore_label; a second top gives per-class accuracy."""
    ctx.require_bottoms(2)
    ctx.require_tops(1, 2)
    p = layer.param.accuracy_param
    return Accuracy(p.top_k, p.axis, _ignore_label(p), len(layer.tops))


@register_writer(SoftmaxWithLoss)
def write_softmax_with_loss(module: SoftmaxWithLoss, layer: Any) -> None:
    """``softmax_param.axis`` and ``loss_param``: the legacy ``normalize`` is replaced by the
    ``normalization`` it meant."""
    write_fields(layer.softmax_param, {"axis": module.axis})
    if layer.loss_param.HasField("normalize"):
        layer.loss_param.ClearField("normalize")
        write_fields(layer.loss_param, {"normalization": module.normalization}, keep_defaults=True)
    write_fields(layer.loss_param, {"ignore_label": module.ignore_label, "normalization": module.normalization})


@register_writer(Accuracy)
def write_accuracy(module: Accuracy, layer: Any) -> None:
    """``accuracy_param``: top_k, axis, ignore_label."""
    write_fields(layer.accuracy_param, module.caffe_settings())
