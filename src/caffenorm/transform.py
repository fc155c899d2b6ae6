"""Caffe's input preprocessing, as a plain-numpy library: ``TransformationParameter`` (what Caffe's
data layers do to every image, BVLC ``src/caffe/data_transformer.cpp``) plus what deploy-time
users of pycaffe's ``caffe.io.Transformer`` need (resize to the net's input, channel swap,
``raw_scale``, ``input_scale``).

A :class:`Transform` is a frozen description; :func:`transform_image` applies it to one HWC image
and returns a float32 CHW array, :func:`transform_batch` to several and returns NCHW.
:func:`load_image` reads a file as Caffe's tools do (OpenCV, BGR, HWC, uint8).

The order of operations, for an HWC image ``x`` (OpenCV's BGR order, as Caffe decodes images)::

    x1 = color(x)                         force_gray: BGR -> gray; force_color: gray -> BGR
    x2 = resize(x1, size)                 cv2.resize(..., INTER_LINEAR), in x1's own dtype
    x3 = float32(x2)                      shape (H, W, C)
    h_off, w_off                          crop offsets (centre in TEST, random in TRAIN)
    flip                                  mirror coin (random, in either phase, as Caffe)
    out[c, i, j] = (x3[h_off + i, w_off + j', swap[c]] * raw_scale
                    - M[c, h_off + i, w_off + j']) * scale
        with j' = crop_w - 1 - j if flip else j,
             M  = the mean image, or mean[c] (one value: the same for every channel)

i.e. crop, then channel swap, raw_scale, minus the mean, times scale, and the mirror flips the
result: a mean *image* is cropped at the same offset as the pixels and subtracted at each
pixel's source position (Caffe reads ``mean[(c*H + h_off+h)*W + w_off+w]`` for the pixel it
writes to the mirrored place), so mirroring never moves the mean relative to its pixel.
Caffe's own steps are ``color``, ``crop``, ``mirror``, ``(pixel - mean) * scale``; resize,
channel swap and ``raw_scale`` are pycaffe's deploy-time additions (identities by default), and
pycaffe's ``input_scale`` is Caffe's ``scale`` (both multiply after the mean).

Arithmetic is float32 in that order, as Caffe's ``Dtype = float`` computes it (one rounding for
``pixel - mean`` and one for ``* scale``); a step that is an identity (``raw_scale`` 1, no mean)
is skipped, so it cannot round.

This module holds plain Python/numpy values only: it imports neither protobuf nor
``caffenorm.caffe`` (``caffenorm.caffe.transform_param`` converts a ``TransformationParameter``
message into a :class:`Transform`).  OpenCV is optional and imported only where needed (resize,
color conversion, :func:`load_image`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from caffenorm.errors import CaffeNormError, InputShapeError, LayerConfigError, ModelFileError

__all__ = ["Phase", "Transform", "load_image", "transform_batch", "transform_image"]

Phase = Literal["test", "train"]

_OPENCV_FIX = "pip install 'opencv-python-headless<5'"


def _cv2(purpose: str) -> Any:
    try:
        import cv2
    except ImportError:
        raise CaffeNormError(f"{purpose} needs OpenCV: {_OPENCV_FIX}") from None
    return cv2


# ------------------------------------------------------------------------------------------------
# The description
# ------------------------------------------------------------------------------------------------


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise LayerConfigError(f"Transform: {what} must be a positive integer, got {value!r}")
    return int(value)


def _finite(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LayerConfigError(f"Transform: {what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise LayerConfigError(f"Transform: {what} must be finite, got {value!r}")
    return number


def _hw(value: Any, what: str, fix: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise LayerConfigError(f"Transform: {what} must be (height, width), got {value!r}; {fix}")
    return _positive_int(value[0], f"{what} height"), _positive_int(value[1], f"{what} width")


@dataclass(frozen=True, eq=False)
class Transform:
    """What Caffe (and pycaffe's ``Transformer``) do to an image before it enters the net.

    Fields (all optional; the default ``Transform()`` only converts HWC to float32 CHW):

    ``size``
        ``(H, W)`` to resize to first (pycaffe's resize to the input blob; Caffe's
        ``ImageData``'s ``new_height``/``new_width``, SSD's ``resize_param`` WARP).  OpenCV
        ``cv2.resize(..., interpolation=INTER_LINEAR)`` as ``cv::resize``'s default in Caffe's
        ``ReadImageToCVMat``, done in the image's own dtype: a uint8 image is rounded back to uint8
        as in Caffe.  (pycaffe's ``caffe.io.resize_image`` uses scikit-image instead and differs
        slightly; we follow Caffe's C++ tools.)  ``None``: no resize.
    ``crop``
        ``(h, w)`` or one int for a square (Caffe's ``crop_size``; SSD's ``crop_h``/``crop_w``);
        ``None``/0: no crop.  TEST: centred, ``h_off = (H - h) // 2``, ``w_off = (W - w) // 2``.
        TRAIN: random (see :func:`transform_image`).
    ``mirror``
        Flip left-right with probability 1/2.  As in Caffe, this is random in *both* phases
        (``do_mirror = param_.mirror() && Rand(2)`` has no phase check; test nets set
        ``mirror: false``), so it needs a generator.
    ``mean``
        Caffe's ``mean_value``: one value (used for every channel) or one per channel, in the
        net's channel order (after ``channel_swap``), e.g. ``(104, 117, 123)`` for BGR.
    ``mean_image``
        Caffe's ``mean_file`` as a ``(C, H, W)`` array (``(1, C, H, W)`` accepted) at the
        *uncropped* image size (after resize); cropped at the same offset as the image.  At most
        one of ``mean`` and ``mean_image`` (Caffe: "Cannot specify mean_file and mean_value at
        the same time").
    ``scale``
        Multiplies after the mean: Caffe's ``scale`` = pycaffe's ``input_scale``
        (e.g. 0.00390625 = 1/256, or 0.017 for the MobileNet-style ``(x - mean) * 0.017``).
    ``raw_scale``
        Multiplies before the mean (pycaffe's ``raw_scale``: 255 for images in [0, 1]).
    ``channel_swap``
        A permutation; output channel ``c`` is input channel ``channel_swap[c]`` (pycaffe's
        ``set_channel_swap``: ``(2, 1, 0)`` turns RGB into Caffe's BGR).
    ``force_color`` / ``force_gray``
        Convert to 3-channel BGR / 1-channel gray first (Caffe decodes the image that way), with
        ``cv2.cvtColor`` (gray = 0.299 R + 0.587 G + 0.114 B of a BGR image, OpenCV's rounding).
        Decoding a JPEG straight to gray (``load_image(path, color=False)``, what Caffe does)
        can differ from converting decoded BGR by one grey level.  At most one of the two.
    ``phase``
        ``"test"`` (centre crop) or ``"train"`` (random crop), as Caffe's ``DataTransformer``
        is built for one phase.

    Equality compares every field (the mean image by value); ``dataclasses.replace`` makes a
    changed copy (e.g. ``replace(t, phase="train")``).
    """

    size: tuple[int, int] | None = None
    crop: tuple[int, int] | int | None = None
    mirror: bool = False
    mean: tuple[float, ...] = ()
    mean_image: np.ndarray | None = None
    scale: float = 1.0
    raw_scale: float = 1.0
    channel_swap: tuple[int, ...] | None = None
    force_color: bool = False
    force_gray: bool = False
    phase: Phase = "test"

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)  # frozen: normalise once, here

        if self.size is not None:
            put("size", _hw(self.size, "size", "give the net's input (H, W), e.g. (224, 224)"))
        crop = self.crop
        if crop is None or (isinstance(crop, (int, np.integer)) and not isinstance(crop, bool) and crop == 0):
            put("crop", None)  # Caffe's crop_size: 0 means no crop
        elif isinstance(crop, (tuple, list)) and len(crop) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v == 0 for v in crop
        ):
            put("crop", None)
        else:
            put("crop", _hw(crop, "crop", "give a positive int (square crop) or (h, w); 0 or None for no crop"))

        put("mean", self._mean_values(self.mean))
        put("mean_image", self._mean_image(self.mean_image))
        if self.mean and self.mean_image is not None:
            raise LayerConfigError(
                "Transform: both mean (mean_value) and mean_image (mean_file) are set; Caffe refuses this "
                "('Cannot specify mean_file and mean_value at the same time'): keep one"
            )
        put("scale", _finite(self.scale, "scale"))
        put("raw_scale", _finite(self.raw_scale, "raw_scale"))
        for flag in ("mirror", "force_color", "force_gray"):
            value = getattr(self, flag)
            if not isinstance(value, (bool, np.bool_)):
                raise LayerConfigError(f"Transform: {flag} must be True or False, got {value!r}")
            put(flag, bool(value))
        if self.force_color and self.force_gray:
            raise LayerConfigError(
                "Transform: force_color and force_gray are both set; Caffe refuses this "
                "('cannot set both force_color and force_gray'): set at most one"
            )
        phase = str(self.phase).lower() if isinstance(self.phase, str) else self.phase
        if phase not in ("test", "train"):
            raise LayerConfigError(f"Transform: phase must be 'test' or 'train', got {self.phase!r}")
        put("phase", phase)
        if self.channel_swap is not None:
            put("channel_swap", self._swap(self.channel_swap))
        self._check_consistency()

    # -- normalisers ------------------------------------------------------------------------------

    @staticmethod
    def _mean_values(mean: Any) -> tuple[float, ...]:
        if mean is None:
            return ()
        array = np.asarray(mean)
        if array.ndim > 1:
            raise LayerConfigError(
                f"Transform: mean must be one value or one per channel, got an array of shape {array.shape}; "
                "a per-pixel mean (Caffe's mean_file) goes in mean_image=, as (C, H, W)"
            )
        if array.dtype.kind not in "iuf":
            raise LayerConfigError(f"Transform: mean must be numbers, got {mean!r}")
        return tuple(_finite(v, "mean") for v in array.reshape(-1))

    @staticmethod
    def _mean_image(image: Any) -> np.ndarray | None:
        if image is None:
            return None
        array = np.asarray(image)
        if array.dtype.kind not in "iuf":
            raise LayerConfigError(f"Transform: mean_image must be numeric, got dtype {array.dtype}")
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]  # a BlobProto's (1, C, H, W)
        if array.ndim != 3 or 0 in array.shape:
            raise LayerConfigError(
                f"Transform: mean_image must be (C, H, W) (or (1, C, H, W) as in a .binaryproto), got shape "
                f"{array.shape}; for one value per channel use mean="
            )
        if not np.isfinite(array).all():
            raise LayerConfigError("Transform: mean_image holds NaN or infinite values")
        # Caffe's data_mean_ is a Blob<float>: the float32 values are the ones subtracted.
        out = np.array(array, dtype=np.float32, order="C")
        out.flags.writeable = False  # frozen dataclass: no one edits the mean behind our back
        return out

    @staticmethod
    def _swap(swap: Any) -> tuple[int, ...]:
        try:
            order = tuple(int(v) for v in swap)
            ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in swap)
        except (TypeError, ValueError):
            order, ok = (), False
        if not ok or not order or sorted(order) != list(range(len(order))):
            raise LayerConfigError(
                f"Transform: channel_swap {swap!r} is not a permutation of 0..n-1: give each channel index once, "
                "e.g. (2, 1, 0) for RGB <-> BGR"
            )
        return order

    def _check_consistency(self) -> None:
        """What can be checked without an image (the rest is checked against each image)."""
        forced = 1 if self.force_gray else 3 if self.force_color else None
        if forced is not None and self.channel_swap is not None and len(self.channel_swap) != forced:
            raise LayerConfigError(
                f"Transform: {'force_gray' if self.force_gray else 'force_color'} gives {forced} channel(s) but "
                f"channel_swap has {len(self.channel_swap)} entries: they must agree"
            )
        # The channel count every image will have, where the description alone fixes it.
        channels = len(self.channel_swap) if self.channel_swap is not None else forced
        source = "channel_swap" if self.channel_swap is not None else "force_gray" if self.force_gray else "force_color"
        if self.mean_image is not None:
            mc, mh, mw = self.mean_image.shape
            if channels is not None and mc != channels:
                raise LayerConfigError(
                    f"Transform: mean_image has {mc} channels but the image will have {channels} "
                    f"({source}): they must agree"
                )
            if self.size is not None and (mh, mw) != self.size:
                raise LayerConfigError(
                    f"Transform: mean_image is {mh}x{mw} but images are resized to {self.size[0]}x{self.size[1]}; "
                    "Caffe subtracts the mean at the uncropped image size: resize to the mean's size "
                    f"(size=({mh}, {mw})) and crop, or recompute the mean"
                )
            if self.crop is not None and (self.crop[0] > mh or self.crop[1] > mw):
                raise LayerConfigError(
                    f"Transform: crop {self.crop[0]}x{self.crop[1]} is larger than the mean image {mh}x{mw}: "
                    "the crop is taken from images of the mean's size; give a smaller crop"
                )
        if self.mean and channels is not None and len(self.mean) not in (1, channels):
            raise LayerConfigError(
                f"Transform: mean has {len(self.mean)} values but the image will have {channels} channels: "
                f"give 1 value (used for every channel) or {channels} (one per channel, in the net's order)"
            )
        if self.size is not None and self.crop is not None and (self.crop[0] > self.size[0] or self.crop[1] > self.size[1]):
            raise LayerConfigError(
                f"Transform: crop {self.crop[0]}x{self.crop[1]} is larger than the resize target "
                f"{self.size[0]}x{self.size[1]}: give a smaller crop or a larger size"
            )

    # -- pycaffe's names --------------------------------------------------------------------------

    @classmethod
    def from_pycaffe(
        cls,
        input_hw: tuple[int, int] | None = None,
        *,
        channel_swap: Sequence[int] | None = None,
        raw_scale: float | None = None,
        mean: Any = None,
        input_scale: float | None = None,
    ) -> Transform:
        """The :class:`Transform` of a pycaffe ``caffe.io.Transformer`` set up with
        ``set_transpose(in, (2, 0, 1))`` and the given ``set_channel_swap`` / ``set_raw_scale`` /
        ``set_mean`` / ``set_input_scale``, for a net input of ``input_hw`` = (H, W).

        pycaffe's ``preprocess`` computes ``((resize(x).transpose(2, 0, 1)[swap] * raw_scale) - mean)
        * input_scale``; the only difference is the resize (OpenCV INTER_LINEAR here, scikit-image
        in pycaffe).  ``mean`` is a per-channel vector ``(C,)`` or a ``(C, H, W)`` image at the
        input size, in the net's channel order, as ``set_mean`` takes it.
        """
        mean_values: Any = ()
        mean_image = None
        if mean is not None:
            array = np.asarray(mean)
            if array.ndim >= 3:
                mean_image = array
            else:
                mean_values = array
        return cls(
            size=None if input_hw is None else tuple(input_hw),  # type: ignore[arg-type]
            channel_swap=None if channel_swap is None else tuple(channel_swap),
            raw_scale=1.0 if raw_scale is None else raw_scale,
            mean=mean_values,
            mean_image=mean_image,
            scale=1.0 if input_scale is None else input_scale,
        )

    # -- dataclass plumbing: an ndarray field needs its own equality, hash and repr ----------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Transform):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "mean_image":
                if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
                    return False
            elif a != b:
                return False
        return True

    def __hash__(self) -> int:
        mean = None if self.mean_image is None else (self.mean_image.shape, self.mean_image.tobytes())
        return hash(tuple(mean if f.name == "mean_image" else getattr(self, f.name) for f in fields(self)))

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "mean_image":
                if value is not None:
                    parts.append(f"mean_image=<float32 array {'x'.join(map(str, value.shape))}>")
            elif value != f.default:
                parts.append(f"{f.name}={value!r}")
        return f"Transform({', '.join(parts)})"

    # -- convenience ------------------------------------------------------------------------------

    def needs_rng(self) -> bool:
        """Whether applying this draws random numbers (Caffe's ``InitRand``: mirror, or a TRAIN crop)."""
        return self.mirror or (self.phase == "train" and self.crop is not None)

    def __call__(self, image: np.ndarray, *, rng: np.random.Generator | None = None) -> np.ndarray:
        """``transform_image(self, image, rng=rng)``."""
        return transform_image(self, image, rng=rng)


# ------------------------------------------------------------------------------------------------
# Applying it
# ------------------------------------------------------------------------------------------------

# dtypes cv2.resize / cv2.cvtColor handle natively; others are widened first (exactly, for ints
# up to 32 bits).
_CV_RESIZE = {np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.float32), np.dtype(np.float64)}
_CV_COLOR = {np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)}


def _as_hwc(image: Any) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype.kind not in "uif":
        raise InputShapeError(
            f"Transform: the image has dtype {array.dtype}; give numbers (uint8 as decoded by OpenCV, or float)"
        )
    if array.ndim == 2:
        array = array[:, :, None]  # a gray cv::Mat: one channel
    if array.ndim != 3:
        raise InputShapeError(
            f"Transform: an image is (H, W, C) or (H, W), got shape {array.shape}; "
            "for several images use transform_batch"
        )
    if 0 in array.shape:
        raise InputShapeError(f"Transform: the image is empty (shape {array.shape})")
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    return array


def _color(t: Transform, x: np.ndarray) -> np.ndarray:
    """force_gray / force_color: what decoding in gray / in color gives for an already decoded image."""
    if not (t.force_color or t.force_gray):
        return x
    c = x.shape[2]
    if (t.force_color and c == 3) or (t.force_gray and c == 1):
        return x
    if c not in (1, 3, 4):
        raise InputShapeError(
            f"Transform: {'force_color' if t.force_color else 'force_gray'} converts 1, 3 (BGR) or 4 (BGRA) "
            f"channels, the image has {c}"
        )
    cv2 = _cv2("force_color/force_gray")
    code = {
        (True, 1): cv2.COLOR_GRAY2BGR, (True, 4): cv2.COLOR_BGRA2BGR,
        (False, 3): cv2.COLOR_BGR2GRAY, (False, 4): cv2.COLOR_BGRA2GRAY,
    }[(t.force_color, c)]
    src = x if x.dtype in _CV_COLOR else x.astype(np.float32)
    out = cv2.cvtColor(np.ascontiguousarray(src), code)
    return out[:, :, None] if out.ndim == 2 else out


def _resize(t: Transform, x: np.ndarray) -> np.ndarray:
    if t.size is None or x.shape[:2] == t.size:
        return x  # INTER_LINEAR at scale 1 is the identity anyway; skip the copy
    cv2 = _cv2("resizing an image")
    src = x if x.dtype in _CV_RESIZE else x.astype(np.float64)
    c = src.shape[2]
    if c <= 512:  # OpenCV's CV_CN_MAX
        out = cv2.resize(np.ascontiguousarray(src), (t.size[1], t.size[0]), interpolation=cv2.INTER_LINEAR)
        return out[:, :, None] if out.ndim == 2 else out  # OpenCV drops a channel axis of 1
    return np.stack(  # pragma: no cover - more channels than a cv::Mat holds: one plane at a time
        [cv2.resize(np.ascontiguousarray(src[:, :, k]), (t.size[1], t.size[0]), interpolation=cv2.INTER_LINEAR)
         for k in range(c)], axis=2,
    )


def _check_rng(t: Transform, rng: Any) -> np.random.Generator | None:
    if not t.needs_rng():
        return None
    if rng is None:
        why = "mirror=True flips at random (in either phase, as Caffe)" if t.mirror else \
            "a TRAIN-phase crop is taken at a random offset"
        raise LayerConfigError(
            f"Transform: {why}, so it needs rng=numpy.random.default_rng(seed); "
            "or set mirror=False / phase='test' for a deterministic transform"
        )
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (numpy.random.default_rng(seed)), got {type(rng).__name__}")
    return rng


def _image(t: Transform, image: Any, rng: np.random.Generator | None) -> np.ndarray:
    x = _resize(t, _color(t, _as_hwc(image)))
    height, width, channels = x.shape

    # -- checks against this image, in Caffe's words where Caffe has them --
    if t.channel_swap is not None and len(t.channel_swap) != channels:
        raise InputShapeError(
            f"Transform: channel_swap {t.channel_swap} has {len(t.channel_swap)} entries for an image with "
            f"{channels} channel(s): give one index per channel"
        )
    if t.mean and len(t.mean) not in (1, channels):
        raise InputShapeError(
            f"Transform: mean has {len(t.mean)} values for an image with {channels} channel(s); Caffe takes "
            f"'either 1 mean_value or as many as channels': give 1 value (used for every channel) or {channels} "
            "(one per channel, in the net's channel order)"
        )
    if t.mean_image is not None and t.mean_image.shape != (channels, height, width):
        mc, mh, mw = t.mean_image.shape
        raise InputShapeError(
            f"Transform: the mean image is {mc}x{mh}x{mw} (C x H x W) but the image is {channels}x{height}x{width}"
            f"{' after resize' if t.size is not None else ''}; Caffe subtracts the mean at the uncropped image size: "
            f"resize to it (size=({mh}, {mw})) or recompute the mean"
        )
    crop_h, crop_w = t.crop if t.crop is not None else (height, width)
    if crop_h > height or crop_w > width:
        raise InputShapeError(
            f"Transform: crop {crop_h}x{crop_w} is larger than the image ({height}x{width}"
            f"{' after resize' if t.size is not None else ''}): give a larger image or size=, or a smaller crop"
        )

    # -- random draws, in Caffe's order: the mirror coin, then h_off, then w_off --
    flip = False
    if t.mirror:
        assert rng is not None
        flip = bool(rng.integers(2))  # Caffe: param_.mirror() && Rand(2)
    if t.crop is not None and t.phase == "train":
        assert rng is not None
        h_off = int(rng.integers(height - crop_h + 1))  # Caffe: Rand(img_height - crop_size + 1)
        w_off = int(rng.integers(width - crop_w + 1))
    else:
        h_off, w_off = (height - crop_h) // 2, (width - crop_w) // 2  # TEST: centred, rounded down

    # Crop first so every following step touches only the pixels that are kept.
    out = x[h_off : h_off + crop_h, w_off : w_off + crop_w].astype(np.float32).transpose(2, 0, 1)
    if t.channel_swap is not None:
        out = out[list(t.channel_swap)]
    if t.raw_scale != 1.0:
        out = out * np.float32(t.raw_scale)
    if t.mean_image is not None:
        out = out - t.mean_image[:, h_off : h_off + crop_h, w_off : w_off + crop_w]
    elif t.mean:
        out = out - np.asarray(t.mean, dtype=np.float32).reshape(-1, 1, 1)
    if t.scale != 1.0:
        out = out * np.float32(t.scale)
    if flip:
        # After the mean: Caffe writes pixel (h, w) minus mean (h, w) to column width-1-w.
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out, dtype=np.float32)


def transform_image(transform: Transform, image: np.ndarray, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """Apply ``transform`` to one ``(H, W, C)`` (or ``(H, W)`` gray) image: a float32 ``(C, h, w)`` array.

    ``image`` is uint8 (as OpenCV decodes, BGR) or float, any other integer type too; the formula
    and order are in the module docstring.

    Randomness (Caffe's ``Rand(n)`` is ``rng() % n`` on its own Boost stream; here ``rng`` is a
    ``numpy.random.Generator``, so the same *distribution and range* are reproduced, not Caffe's
    stream): with ``mirror`` the coin ``flip = rng.integers(2) == 1`` is drawn first; then, for a
    crop in TRAIN phase, ``h_off = rng.integers(H - h + 1)`` and ``w_off = rng.integers(W - w + 1)``
    (uniform over every valid offset, the full image included), in Caffe's order.  The same
    seed gives the same result.  ``rng`` is required exactly when something is random
    (:meth:`Transform.needs_rng`).
    """
    return _image(transform, image, _check_rng(transform, rng))


def transform_batch(
    transform: Transform, images: Sequence[np.ndarray] | np.ndarray, *, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Apply ``transform`` to each image (a sequence of HWC images, or an ``(N, H, W, C)`` array):
    float32 ``(N, C, h, w)``.

    As Caffe's data layers, every image draws its own mirror coin and crop offsets, one image
    after the other from ``rng``.  The images may differ in size as long as the outputs agree
    (give ``size=`` or a crop).
    """
    generator = _check_rng(transform, rng)
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise InputShapeError(
            f"Transform: a batch is (N, H, W, C) or a list of (H, W, C) images, got an array of shape {images.shape}; "
            "for one image use transform_image (gray images in a batch are (N, H, W, 1))"
        )
    items = list(images)
    if not items:
        raise InputShapeError("Transform: the batch is empty; give at least one image")
    outs = [_image(transform, item, generator) for item in items]
    for i, out in enumerate(outs[1:], 1):
        if out.shape != outs[0].shape:
            raise InputShapeError(
                f"Transform: image {i} gives {out.shape} (C, H, W) but image 0 gives {outs[0].shape}; "
                "images of different sizes need size= (resize) or a crop to stack into one batch"
            )
    return np.stack(outs)


# ------------------------------------------------------------------------------------------------
# Reading images
# ------------------------------------------------------------------------------------------------


def load_image(path: str | os.PathLike[str], color: bool = True) -> np.ndarray:
    """Read an image file as Caffe's tools do (``ReadImageToCVMat``): ``cv2.imread`` with
    ``IMREAD_COLOR`` (BGR, ``(H, W, 3)``) or ``IMREAD_GRAYSCALE`` (``(H, W, 1)``), uint8.

    OpenCV's own decoding rules apply (16-bit files become 8-bit; OpenCV >= 3.1 also applies a
    JPEG's EXIF orientation, as a Caffe built against it does).  Raises ``ModelFileError`` for a
    missing or unreadable file, or when OpenCV is not installed.
    """
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"{p}: no such image file")
    if p.is_dir():
        raise ModelFileError(f"{p}: is a directory, expected an image file")
    try:
        import cv2
    except ImportError:
        raise ModelFileError(f"{p}: reading images needs OpenCV: {_OPENCV_FIX}") from None
    image = cv2.imread(str(p), cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ModelFileError(
            f"{p}: not an image OpenCV can read (unreadable, corrupted or an unsupported format); "
            "give a PNG/JPEG/BMP file, or a numpy array"
        )
    return image[:, :, None] if image.ndim == 2 else image
