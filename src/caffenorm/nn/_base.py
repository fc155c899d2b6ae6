"""What every caffenorm layer module shares: Caffe's blob view of its tensors, its settings under
Caffe's field names, and the shapes of its outputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from caffenorm.errors import BlobError, LayerConfigError

__all__ = ["CaffeLayer", "Shape", "as_shape", "setting_repr"]

# A blob shape; a dimension is None where it depends on the data (DetectionOutput's row count).
Shape = tuple[int | None, ...]


def setting_repr(value: Any) -> str:
    """``repr`` of a layer setting, a float read from a prototxt shown as written there.

    Caffe's float fields are float32: ``0.999`` is read as 0.9990000128746033.  A float that is
    exactly a float32 is shown as the shortest decimal that rounds to that float32 (``0.999``);
    any other value (set from Python in float64) keeps its full ``repr``.
    """
    if isinstance(value, float) and np.isfinite(value) and float(np.float32(value)) == value:
        return repr(float(str(np.float32(value))))
    if isinstance(value, (list, tuple)):
        inner = ", ".join(setting_repr(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    return repr(value)


def as_shape(layer: str, param: str, shape: int | Sequence[int]) -> tuple[int, ...]:
    """Normalise a shape argument (an int or a sequence of non-negative ints) to a tuple."""
    dims = (shape,) if isinstance(shape, int) else shape
    try:
        out = tuple(int(d) for d in dims)
        ok = all(d >= 0 and d == orig for d, orig in zip(out, dims))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise LayerConfigError(f"{layer}: {param}={shape!r} is not a shape; give an int or a sequence of non-negative ints")
    return out


def _legacy_match(got: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Caffe's ``Blob::ShapeEquals`` for old 4-D (num, channels, height, width) blobs: the expected
    shape left-padded with 1s to four axes."""
    return len(got) == 4 and len(expected) <= 4 and got == (1,) * (4 - len(expected)) + expected


class CaffeLayer(nn.Module):
    """Base of the layer modules.

    * ``caffe_blobs()`` / ``load_caffe_blobs()``: the layer's blobs in Caffe's order and shapes;
    * ``caffe_settings()``: its configuration under Caffe's field names, as plain values (what a
      net writes back to a prototxt);
    * ``output_shapes(*shapes)``: the shapes of its tops for bottoms of ``shapes``.
    """

    caffe_type: str = ""
    # True for element-wise layers whose output has the first input's shape: their output shape
    # is known without running them.
    same_shape: bool = False

    # Attribute names of the layer's blobs, in Caffe's order; attributes set to None are skipped
    # (e.g. a bias with bias_term false).
    blob_attrs: tuple[str, ...] = ()

    def caffe_settings(self) -> dict[str, Any]:
        """The layer's configuration under Caffe's field names (e.g. ``{"local_size": 5, ...}``);
        enums by name.  Empty for layers without settings."""
        return {}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={setting_repr(v)}" for k, v in self.caffe_settings().items())

    def output_shapes(self, *shapes: Sequence[int]) -> list[Shape]:
        """The shapes of the layer's tops for bottoms of ``shapes``.

        Element-wise layers return the first bottom's shape; any other layer runs its forward on
        the meta device (nothing is allocated and the layer's own tensors are not touched), so the
        shape rules live in one place: the forward itself.  Layers whose output size depends on
        the data override this.
        """
        if self.same_shape:
            return [tuple(shapes[0])]
        return self.meta_output_shapes(*shapes)

    def meta_output_shapes(self, *shapes: Sequence[int]) -> list[Shape]:
        """The shapes of the layer's tops found by running its forward on the meta device (its
        checks included; nothing is allocated, the layer's own tensors are not touched)."""
        # Through a wrapper that calls ``forward`` itself: a user's hooks on the layer must not
        # see meta tensors (the Net checks new input shapes this way before running).
        wrapper = _Forward(self)
        state = {
            name: torch.empty(t.shape, dtype=t.dtype, device="meta")
            for name, t in (*wrapper.named_parameters(), *wrapper.named_buffers())
        }
        # Bottoms in the layer's own floating dtype (a float64 net's convolution refuses float32).
        dtype = next((t.dtype for t in self.parameters() if t.is_floating_point()), torch.get_default_dtype())
        args = tuple(torch.empty(tuple(s), device="meta", dtype=dtype) for s in shapes)
        with torch.no_grad():
            out = torch.func.functional_call(wrapper, state, args)
        outs = out if isinstance(out, tuple) else (out,)
        return [tuple(o.shape) for o in outs]

    def caffe_blobs(self) -> list[Tensor]:
        """The layer's blobs in Caffe's order and shapes: the parameters and buffers themselves."""
        return [t for t in (getattr(self, name) for name in self.blob_attrs) if t is not None]

    def _blob_names(self) -> list[str]:
        return [name for name in self.blob_attrs if getattr(self, name) is not None]

    @torch.no_grad()
    def load_caffe_blobs(self, blobs: Sequence[Any]) -> None:
        """Copy ``blobs`` (array-likes in Caffe's order) into the layer, checking count and shapes.

        A blob may also come in the legacy 4-D ``(num, channels, height, width)`` form that old
        caffemodels use, e.g. ``(1, 1, 1, C)`` for a ``(C,)`` blob.
        """
        own = self.caffe_blobs()
        names = self._blob_names()
        if len(blobs) != len(own):
            listing = ", ".join(f"{n}{tuple(t.shape)}" for n, t in zip(names, own)) or "none"
            raise BlobError(
                f"{self.caffe_type}: got {len(blobs)} blobs, expected {len(own)} ({listing}) for {self.extra_repr()}"
            )
        arrays = []
        for i, (name, target, blob) in enumerate(zip(names, own, blobs)):
            arr = np.asarray(blob.detach().cpu() if isinstance(blob, Tensor) else blob)
            got, expected = tuple(arr.shape), tuple(target.shape)
            if got != expected and not _legacy_match(got, expected):
                raise BlobError(
                    f"{self.caffe_type}: blob {i} ({name}) has shape {got}, expected {expected}; "
                    "was it saved from a layer with different settings?"
                )
            if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
                raise BlobError(f"{self.caffe_type}: blob {i} ({name}) has dtype {arr.dtype}, expected real numbers")
            arrays.append(arr.reshape(expected))
        # Copy only after every blob passed, so a bad list leaves the layer unchanged.
        for target, arr in zip(own, arrays):
            target.copy_(torch.as_tensor(np.array(arr), dtype=target.dtype))


class _Forward(nn.Module):
    """Calls ``layer.forward`` directly (no hooks), for :meth:`CaffeLayer.meta_output_shapes`."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *args: Tensor) -> Any:
        return self.layer.forward(*args)
