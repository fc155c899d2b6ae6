"""A Caffe ``TransformationParameter`` message (a data layer's ``transform_param``) as a plain
:class:`caffenorm.transform.Transform`.

Field by field (BVLC ``caffe.proto`` and ``data_transformer.cpp``, plus the SSD fork):

* ``scale``, ``mirror``, ``force_color``, ``force_gray``: copied.
* ``mean_value``: :attr:`Transform.mean`; ``mean_file``: a binary ``BlobProto`` (``.binaryproto``)
  read into :attr:`Transform.mean_image`.  Both set is an error, as Caffe's CHECK.
* ``crop_size``; else SSD's ``crop_h`` and ``crop_w`` (SSD crops only when both are > 0).
* SSD's ``resize_param``: only ``resize_mode: WARP`` to ``height`` x ``width`` with linear
  interpolation (the ``interp_mode`` default, or ``LINEAR`` alone), which is :attr:`Transform.size`.
  Aspect-keeping modes and a random choice of interpolations are not reproduced.
* SSD's ``noise_param``, ``distort_param`` and ``expand_param`` (random photometric distortion,
  zoom-out) are refused when they would do something; ``emit_constraint`` only concerns box
  annotations and is ignored.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError, Message

from caffenorm.caffe import schema
from caffenorm.caffe.io import blob_to_array
from caffenorm.errors import LayerConfigError, Location, ModelFileError, UnsupportedLayerError
from caffenorm.transform import Phase, Transform

__all__ = ["read_mean_file", "resolve_mean_file", "transform_from_param"]


def resolve_mean_file(mean_file: str, source: str | os.PathLike[str]) -> Path:
    """Where ``mean_file`` (as written in the prototxt ``source``) is.

    A relative path is looked up next to the prototxt first, then in the current directory:
    Caffe itself opens it relative to the directory it runs in (BVLC's models name
    ``data/ilsvrc12/imagenet_mean.binaryproto``, relative to the Caffe root), so both are tried,
    the prototxt's directory first.  Raises ``ModelFileError`` naming the prototxt and every
    place looked at.
    """
    path = Path(mean_file)
    if path.is_absolute():
        candidates = [path]
    else:
        src = Path(source)
        # A source that is not a file (e.g. "<string>") has no directory to resolve against.
        candidates = [src.parent / path] if src.name and not str(source).startswith("<") else []
        candidates.append(Path.cwd() / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = " and ".join(str(c) for c in dict.fromkeys(candidates))
    raise ModelFileError(
        f"{source}: transform_param's mean_file {mean_file!r} not found (looked at {looked}); "
        "put the .binaryproto there, or give its absolute path"
    )


def read_mean_file(path: str | os.PathLike[str]) -> np.ndarray:
    """A ``mean_file`` (binary ``BlobProto``) as a float32 ``(C, H, W)`` array, as Caffe's
    ``data_mean_.FromProto`` reads it (legacy num/channels/height/width or ``shape``)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise ModelFileError(f"{p}: cannot read the mean file: {err.strerror or err}") from None
    blob = schema.BlobProto()
    try:
        blob.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise ModelFileError(f"{p}: not a binary BlobProto (.binaryproto mean file): {err}") from None
    array = blob_to_array(blob, str(p))
    shape = array.shape
    if array.ndim == 4 and shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or 0 in array.shape:
        raise ModelFileError(
            f"{p}: a mean file holds one (1, C, H, W) image, this one has shape {shape}"
            + (" (empty, or not a mean file)" if 0 in shape or not shape else "")
        )
    return array.astype(np.float32, copy=False)


def _crop(param: Message, source: str) -> tuple[int, int] | None:
    if param.crop_size:
        return (param.crop_size, param.crop_size)
    if param.crop_h and param.crop_w:
        return (param.crop_h, param.crop_w)
    if param.crop_h or param.crop_w:
        # SSD's DataTransformer crops only when both are > 0; do what it does, but say so.
        warnings.warn(
            f"{source}: transform_param sets only one of crop_h ({param.crop_h}) and crop_w ({param.crop_w}); "
            "Caffe (SSD) then does not crop at all, and neither does caffenorm",
            stacklevel=3,
        )
    return None


def _resize(param: Message, source: str) -> tuple[int, int] | None:
    if not param.HasField("resize_param"):
        return None
    rp = param.resize_param
    warp = schema.ResizeParameter.WARP  # type: ignore[attr-defined]
    linear = schema.ResizeParameter.LINEAR  # type: ignore[attr-defined]
    mode = schema.ResizeParameter.Resize_mode.Name(rp.resize_mode)  # type: ignore[attr-defined]
    if rp.resize_mode != warp:
        raise UnsupportedLayerError(
            f"{source}: transform_param's resize_param resize_mode {mode} is not reproduced (only WARP, a plain "
            "resize to height x width): resize the images yourself and drop resize_param"
        )
    if any(m != linear for m in rp.interp_mode):
        names = [schema.ResizeParameter.Interp_mode.Name(m) for m in rp.interp_mode]  # type: ignore[attr-defined]
        raise UnsupportedLayerError(
            f"{source}: transform_param's resize_param interp_mode {names} is not reproduced (SSD picks one at "
            "random per image); only LINEAR (the default) is: set interp_mode: LINEAR"
        )
    if rp.height <= 0 or rp.width <= 0 or rp.height_scale or rp.width_scale:
        raise UnsupportedLayerError(
            f"{source}: transform_param's resize_param needs height and width > 0 (got {rp.height} x {rp.width}"
            f"{', with height_scale/width_scale' if rp.height_scale or rp.width_scale else ''}): only a fixed "
            "WARP resize is reproduced"
        )
    return (rp.height, rp.width)


def _refuse_random_augmentation(param: Message, source: str) -> None:
    """SSD's photometric distortion, noise and zoom-out: refused when they would change an image."""
    active = []
    if param.HasField("distort_param"):
        d = param.distort_param
        if any(getattr(d, f) > 0 for f in ("brightness_prob", "contrast_prob", "hue_prob", "saturation_prob",
                                           "random_order_prob")):
            active.append("distort_param")
    if param.HasField("noise_param") and param.noise_param.prob > 0:
        active.append("noise_param")
    if param.HasField("expand_param") and param.expand_param.prob > 0 and param.expand_param.max_expand_ratio > 1:
        active.append("expand_param")
    if active:
        raise UnsupportedLayerError(
            f"{source}: transform_param's {', '.join(active)} (SSD's random training augmentation) is not "
            "reproduced: drop it (a TEST-phase transform has none), or augment the images yourself"
        )


def transform_from_param(param: Message, source: str, *, phase: Phase = "test") -> Transform:
    """The :class:`~caffenorm.transform.Transform` of a ``TransformationParameter`` message.

    ``source`` is the prototxt the message comes from: errors name it, and a relative
    ``mean_file`` is resolved against its directory (then the current directory, where Caffe
    looks; see :func:`resolve_mean_file`).  ``phase`` is the data layer's phase (``"train"``:
    random crop offsets); as in Caffe, ``mirror: true`` flips at random in either phase.
    """
    if not isinstance(param, Message) or param.DESCRIPTOR.name != "TransformationParameter":
        raise TypeError(f"expected a caffe TransformationParameter message, got {type(param).__name__}")
    if param.HasField("mean_file") and len(param.mean_value):
        raise LayerConfigError(
            f"{source}: transform_param sets both mean_file and mean_value; Caffe refuses this ('Cannot specify "
            "mean_file and mean_value at the same time'): keep one"
        )
    if param.force_color and param.force_gray:
        raise LayerConfigError(
            f"{source}: transform_param sets both force_color and force_gray; Caffe refuses this: set at most one"
        )
    _refuse_random_augmentation(param, source)
    mean_image = None
    if param.HasField("mean_file"):
        mean_image = read_mean_file(resolve_mean_file(param.mean_file, source))
    try:
        return Transform(
            size=_resize(param, source),
            crop=_crop(param, source),
            mirror=param.mirror,
            mean=tuple(param.mean_value),
            mean_image=mean_image,
            scale=param.scale,  # a float32 value, as Caffe's Dtype scale
            force_color=param.force_color,
            force_gray=param.force_gray,
            phase=phase,
        )
    except LayerConfigError as err:
        message = f"transform_param: {err.message.removeprefix('Transform: ')}"
        raise LayerConfigError(message, location=Location(str(source))) from None
