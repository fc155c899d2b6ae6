"""Converters of SSD's detection layers (weiliu89/caffe, branch ``ssd``): PriorBox and
DetectionOutput, and their layer modules.

The math is in :mod:`caffenorm.caffe.ops.detection`, which takes plain values; this module reads
the ``caffe.PriorBoxParameter`` / ``caffe.DetectionOutputParameter`` messages
(:func:`resolve_prior_box_param`, :func:`resolve_detection_output_param`, with the checks of the
layers' ``LayerSetUp``) and builds the modules (:func:`prior_box_from_param`,
:func:`detection_output_from_param`).

The modules' forwards are one custom op each (``caffenorm::prior_box``,
``caffenorm::detection_output``), so they trace and export: PriorBox's output shape follows the
input shapes, DetectionOutput's row count stays data dependent in the exported program.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from caffenorm.caffe.layers._fields import write_pair
from caffenorm.caffe.ops.detection import (
    _check_detection_settings,
    _code_name,
    _hw,
    _variances,
    detection_output_op,
    prior_box,
    prior_box_op,
    prior_box_sizes,
)
from caffenorm.caffe.registry import BuildContext, register_layer, register_writer, write_fields
from caffenorm.caffe.spec import LayerSpec
from caffenorm.errors import LayerConfigError
from caffenorm.nn._base import CaffeLayer, Shape, setting_repr

__all__ = [
    "DetectionOutput",
    "PriorBox",
    "convert_detection_output",
    "convert_prior_box",
    "detection_output_from_param",
    "prior_box_from_param",
    "resolve_detection_output_param",
    "resolve_prior_box_param",
]


# ---------------------------------------------------------------------------------------
# PriorBox
# ---------------------------------------------------------------------------------------


class PriorBox(CaffeLayer):
    """SSD's ``PriorBox`` layer: ``forward(feature, image)`` -> ``(1, 2, H*W*P*4)``.

    The computation is :func:`~caffenorm.caffe.ops.detection.prior_box`, run as the custom op
    ``caffenorm::prior_box`` (:func:`~caffenorm.caffe.ops.detection.prior_box_op`). Only the
    shapes of the two NCHW inputs are used (the feature map's ``H, W`` and the image's ``img_h,
    img_w``, unless ``img_hw`` overrides the latter); nothing reads the batch size. The result
    takes the feature map's dtype (float32 for non-float inputs) and device. No parameters, no
    gradient.

    Args:
        min_sizes, max_sizes, aspect_ratios, flip, clip, variances, step_h, step_w, offset: as
            in :func:`~caffenorm.caffe.ops.detection.prior_box` (``step_h``/``step_w`` already
            resolved from ``step``).
        img_hw: the resolved ``img_size`` / ``img_h`` + ``img_w`` override, or None.
    """

    caffe_type = "PriorBox"

    def __init__(
        self,
        min_sizes: Sequence[float],
        max_sizes: Sequence[float] = (),
        aspect_ratios: Sequence[float] = (),
        flip: bool = True,
        clip: bool = False,
        variances: Sequence[float] = (0.1,),
        step_h: float = 0.0,
        step_w: float = 0.0,
        offset: float = 0.5,
        img_hw: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.min_sizes = [float(v) for v in min_sizes]
        self.max_sizes = [float(v) for v in max_sizes]
        self.aspect_ratios = [float(v) for v in aspect_ratios]
        self.flip = bool(flip)
        self.clip = bool(clip)
        self.variances = [float(v) for v in variances]
        self.step_h = float(step_h)
        self.step_w = float(step_w)
        self.offset = float(offset)
        self.img_hw = None if img_hw is None else _hw("PriorBox", "img_hw", img_hw)
        # Validate now (a bad prototxt should fail when the model is built, not at forward).
        self.num_priors = len(prior_box_sizes(self.min_sizes, self.max_sizes, self.aspect_ratios, self.flip))
        prior_box((1, 1), (1, 1), **self._settings())

    def _settings(self) -> dict[str, Any]:
        return dict(
            min_sizes=self.min_sizes,
            max_sizes=self.max_sizes,
            aspect_ratios=self.aspect_ratios,
            flip=self.flip,
            clip=self.clip,
            variances=self.variances,
            step_h=self.step_h,
            step_w=self.step_w,
            offset=self.offset,
        )

    def caffe_settings(self) -> dict[str, Any]:
        return {
            "min_size": list(self.min_sizes),
            "max_size": list(self.max_sizes),
            "aspect_ratio": list(self.aspect_ratios),
            "flip": self.flip,
            "clip": self.clip,
            "variance": list(self.variances),
            "step_h": self.step_h,
            "step_w": self.step_w,
            "offset": self.offset,
            "img_hw": self.img_hw,
        }

    def forward(self, feature: Tensor, image: Tensor) -> Tensor:
        img_h, img_w = self.img_hw or (0, 0)  # 0: the op takes the image tensor's H, W
        return prior_box_op(feature, image, **self._settings(), img_h=img_h, img_w=img_w)

    def extra_repr(self) -> str:
        r = setting_repr
        s = f"min_sizes={r(self.min_sizes)}, max_sizes={r(self.max_sizes)}, aspect_ratios={r(self.aspect_ratios)}"
        s += f", flip={self.flip}, clip={self.clip}, variances={r(self.variances)}, offset={r(self.offset)}"
        if self.step_h or self.step_w:
            s += f", step_h={r(self.step_h)}, step_w={r(self.step_w)}"
        if self.img_hw:
            s += f", img_hw={self.img_hw}"
        return s


def resolve_prior_box_param(
    param: Any, feature_hw: tuple[int, int], image_hw: tuple[int, int]
) -> dict[str, Any]:
    """Keyword arguments for :func:`~caffenorm.caffe.ops.detection.prior_box` from a
    ``caffe.PriorBoxParameter`` message.

    Resolution and checks follow ``PriorBoxLayer::LayerSetUp`` / ``Forward_cpu``:

    * image size: ``img_h`` + ``img_w`` (both > 0; not together with ``img_size``), else
      ``img_size`` (> 0) for both, else the shape of the image bottom (``image_hw``);
    * step: ``step_h`` + ``step_w`` (both > 0; not together with ``step``), else ``step`` (> 0)
      for both, else 0 (meaning ``image / feature``);
    * ``min_size`` required, each > 0; ``max_size`` none or one per ``min_size``, each greater;
    * ``variance``: none (0.1), one, or exactly four, each > 0.

    Returns ``feature_hw`` and ``image_hw`` too, so ``prior_box(**resolve_prior_box_param(...))``.
    """
    layer = "PriorBox"
    has = param.HasField
    if has("img_h") or has("img_w"):
        if has("img_size"):
            raise LayerConfigError("PriorBox: either img_size or img_h/img_w should be specified; not both")
        if not (param.img_h > 0 and param.img_w > 0):
            raise LayerConfigError(
                f"PriorBox: img_h={param.img_h}, img_w={param.img_w}: both must be given and larger than 0"
            )
        image_hw = (int(param.img_h), int(param.img_w))
    elif has("img_size"):
        if not param.img_size > 0:
            raise LayerConfigError("PriorBox: img_size should be larger than 0")
        image_hw = (int(param.img_size), int(param.img_size))
    if has("step_h") or has("step_w"):
        if has("step"):
            raise LayerConfigError("PriorBox: either step or step_h/step_w should be specified; not both")
        if not (param.step_h > 0 and param.step_w > 0):
            raise LayerConfigError(
                f"PriorBox: step_h={param.step_h}, step_w={param.step_w}: both must be given and larger than 0"
            )
        step_h, step_w = float(param.step_h), float(param.step_w)
    elif has("step"):
        if not param.step > 0:
            raise LayerConfigError(f"PriorBox: step={param.step} should be larger than 0")
        step_h = step_w = float(param.step)
    else:
        step_h = step_w = 0.0
    variances = _variances([float(v) for v in param.variance])
    kwargs: dict[str, Any] = dict(
        feature_hw=_hw(layer, "feature_hw", feature_hw),
        image_hw=_hw(layer, "image_hw", image_hw),
        min_sizes=[float(v) for v in param.min_size],
        max_sizes=[float(v) for v in param.max_size],
        aspect_ratios=[float(v) for v in param.aspect_ratio],
        flip=bool(param.flip),
        clip=bool(param.clip),
        variances=variances,
        step_h=step_h,
        step_w=step_w,
        offset=float(param.offset),
    )
    prior_box_sizes(kwargs["min_sizes"], kwargs["max_sizes"], kwargs["aspect_ratios"], kwargs["flip"])  # validate
    return kwargs


def prior_box_from_param(param: Any) -> PriorBox:
    """A :class:`PriorBox` from a ``caffe.PriorBoxParameter`` message (checks as
    :func:`resolve_prior_box_param`); ``img_size`` / ``img_h`` + ``img_w`` become ``img_hw``."""
    kw = resolve_prior_box_param(param, (1, 1), (1, 1))
    has_img = param.HasField("img_size") or param.HasField("img_h") or param.HasField("img_w")
    image_hw = kw.pop("image_hw")
    del kw["feature_hw"]
    return PriorBox(**kw, img_hw=image_hw if has_img else None)


@register_layer("PriorBox")
def convert_prior_box(layer: LayerSpec, ctx: BuildContext) -> PriorBox:
    """Bottoms (feature map, image); only their shapes are read, at every forward."""
    ctx.require_bottoms(2)
    return prior_box_from_param(layer.param.prior_box_param)


# ---------------------------------------------------------------------------------------
# DetectionOutput
# ---------------------------------------------------------------------------------------


class DetectionOutput(CaffeLayer):
    """SSD's ``DetectionOutput`` layer: ``forward(loc, conf, prior)`` -> ``(1, 1, num_kept, 7)``.

    The computation and the arguments are those of
    :func:`~caffenorm.caffe.ops.detection.detection_output`, run as the custom op
    ``caffenorm::detection_output`` (:func:`~caffenorm.caffe.ops.detection.detection_output_op`),
    whose row count ``num_kept`` stays data dependent under ``torch.export`` / ``torch.jit.trace``
    / ``torch.compile``. :func:`detection_output_from_param` builds one from a
    ``caffe.DetectionOutputParameter``. No parameters, no gradient.
    """

    caffe_type = "DetectionOutput"

    def __init__(
        self,
        num_classes: int,
        share_location: bool = True,
        background_label_id: int = 0,
        nms_threshold: float = 0.3,
        top_k: int = -1,
        eta: float = 1.0,
        keep_top_k: int = -1,
        confidence_threshold: float | None = None,
        code_type: str | int = "CENTER_SIZE",
        variance_encoded_in_target: bool = False,
    ) -> None:
        super().__init__()
        (
            self.num_classes,
            self.background_label_id,
            self.nms_threshold,
            self.top_k,
            self.eta,
            self.keep_top_k,
            self.confidence_threshold,
            self.code_type,
        ) = _check_detection_settings(
            num_classes,
            share_location,
            background_label_id,
            nms_threshold,
            top_k,
            eta,
            keep_top_k,
            confidence_threshold,
            code_type,
        )
        self.share_location = bool(share_location)
        self.variance_encoded_in_target = bool(variance_encoded_in_target)

    def settings(self) -> Mapping[str, Any]:
        """The resolved settings, as keyword arguments of ``detection_output`` (and its op)."""
        return dict(
            num_classes=self.num_classes,
            share_location=self.share_location,
            background_label_id=self.background_label_id,
            nms_threshold=self.nms_threshold,
            top_k=self.top_k,
            eta=self.eta,
            keep_top_k=self.keep_top_k,
            confidence_threshold=self.confidence_threshold,
            code_type=self.code_type,
            variance_encoded_in_target=self.variance_encoded_in_target,
        )

    def caffe_settings(self) -> dict[str, Any]:
        return dict(self.settings())

    def output_shapes(self, *shapes: Sequence[int]) -> list[Shape]:
        """``(1, 1, None, 7)``: the number of detections depends on the data."""
        return [(1, 1, None, 7)]

    def forward(self, loc: Tensor, conf: Tensor, prior: Tensor) -> Tensor:
        return detection_output_op(loc, conf, prior, **self.settings())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={setting_repr(v)}" for k, v in self.settings().items())


def resolve_detection_output_param(param: Any) -> dict[str, Any]:
    """Keyword arguments for :func:`~caffenorm.caffe.ops.detection.detection_output` from a
    ``caffe.DetectionOutputParameter``.

    Caffe's rules (``DetectionOutputLayer::LayerSetUp``): ``num_classes`` is required;
    ``confidence_threshold`` is ``-FLT_MAX`` unless set (returned as None); ``nms_param``
    gives ``nms_threshold`` (default 0.3, must be >= 0), ``eta`` (default 1, in (0, 1]) and
    ``top_k`` (-1 unless set); ``code_type`` defaults to CORNER in caffe.proto.

    Side effects only, not supported: ``save_output_param`` (Caffe writes VOC/COCO/ILSVRC
    result files and *deletes* ``output_directory`` first) and ``visualize`` (draws on a 4th
    bottom) do not change the output blob; they are ignored with a warning.
    """
    if not param.HasField("num_classes"):
        raise LayerConfigError("DetectionOutput: detection_output_param must specify num_classes")
    nms_param = param.nms_param
    if param.HasField("save_output_param") and param.save_output_param.output_directory:
        warnings.warn(
            "DetectionOutput: save_output_param is ignored; caffenorm does not write result files "
            f"(output_directory {param.save_output_param.output_directory!r} is left untouched). "
            "The detections are in the output tensor.",
            UserWarning,
            stacklevel=2,
        )
    if param.visualize:
        warnings.warn(
            "DetectionOutput: visualize is ignored; caffenorm draws nothing (the output is unchanged)",
            UserWarning,
            stacklevel=2,
        )
    kwargs: dict[str, Any] = dict(
        num_classes=int(param.num_classes),
        share_location=bool(param.share_location),
        background_label_id=int(param.background_label_id),
        nms_threshold=float(nms_param.nms_threshold),
        top_k=int(nms_param.top_k) if nms_param.HasField("top_k") else -1,
        eta=float(nms_param.eta),
        keep_top_k=int(param.keep_top_k),
        confidence_threshold=float(param.confidence_threshold) if param.HasField("confidence_threshold") else None,
        code_type=_code_name(int(param.code_type)),
        variance_encoded_in_target=bool(param.variance_encoded_in_target),
    )
    _check_detection_settings(
        kwargs["num_classes"],
        kwargs["share_location"],
        kwargs["background_label_id"],
        kwargs["nms_threshold"],
        kwargs["top_k"],
        kwargs["eta"],
        kwargs["keep_top_k"],
        kwargs["confidence_threshold"],
        kwargs["code_type"],
    )
    return kwargs


def detection_output_from_param(param: Any) -> DetectionOutput:
    """A :class:`DetectionOutput` from a ``caffe.DetectionOutputParameter`` message (checks and
    warnings as :func:`resolve_detection_output_param`)."""
    return DetectionOutput(**resolve_detection_output_param(param))


@register_layer("DetectionOutput")
def convert_detection_output(layer: LayerSpec, ctx: BuildContext) -> DetectionOutput:
    """Bottoms (loc, conf, prior); a third-party ``save_output_param`` is ignored with a warning
    (it only writes files)."""
    ctx.require_bottoms(3)
    return detection_output_from_param(layer.param.detection_output_param)


@register_writer(PriorBox)
def write_prior_box(module: PriorBox, layer: Any) -> None:
    """``prior_box_param``: the sizes, ratios, flip, clip, variances, offset; ``step`` (or
    ``step_h``/``step_w``) and ``img_size`` (or ``img_h``/``img_w``) only where set."""
    param = layer.prior_box_param
    settings = module.caffe_settings()
    for field in ("min_size", "max_size", "aspect_ratio", "variance"):
        del getattr(param, field)[:]
    write_fields(param, {k: settings[k] for k in ("min_size", "max_size", "aspect_ratio", "variance")})
    write_fields(param, {k: settings[k] for k in ("flip", "clip", "offset")})
    steps = (settings["step_h"], settings["step_w"])
    if steps == (0.0, 0.0):
        for field in ("step", "step_h", "step_w"):
            param.ClearField(field)
    elif steps[0] == steps[1] and not param.HasField("step_h"):
        write_fields(param, {"step": steps[0]}, keep_defaults=True)
    else:
        param.ClearField("step")
        write_fields(param, {"step_h": steps[0], "step_w": steps[1]}, keep_defaults=True)
    if settings["img_hw"] is None:
        for field in ("img_size", "img_h", "img_w"):
            param.ClearField(field)
    else:
        write_pair(param, "img_size", settings["img_hw"], None, repeated=False)


@register_writer(DetectionOutput)
def write_detection_output(module: DetectionOutput, layer: Any) -> None:
    """``detection_output_param`` and its ``nms_param`` (``top_k`` -1 and no
    ``confidence_threshold`` are written as absent fields, Caffe's way of saying "none")."""
    param = layer.detection_output_param
    settings = module.caffe_settings()
    write_fields(param, {"num_classes": settings["num_classes"]}, keep_defaults=True)
    write_fields(
        param,
        {
            "share_location": settings["share_location"],
            "background_label_id": settings["background_label_id"],
            "keep_top_k": settings["keep_top_k"],
            "confidence_threshold": settings["confidence_threshold"],
            "code_type": settings["code_type"],
            "variance_encoded_in_target": settings["variance_encoded_in_target"],
        },
    )
    top_k = settings["top_k"]
    write_fields(
        param.nms_param,
        {"nms_threshold": settings["nms_threshold"], "eta": settings["eta"], "top_k": None if top_k == -1 else top_k},
    )
