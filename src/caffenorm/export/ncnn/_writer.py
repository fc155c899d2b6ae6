"""Writing an :class:`~caffenorm.export.ncnn._model.NcnnModel` as ncnn's ``.param`` text and
``.bin`` weights.

``.param``: the magic ``7767517``, a line ``<layer count> <blob count>``, then one line per layer,
``Type name <bottom count> <top count> bottoms... tops... id=value ...``, where a float is written
with a decimal exponent (ncnn reads a value as a float only if it has a ``.`` or an ``e``) and an
array as ``-(23300+id)=n,v1,v2,...``.  ncnn reads each value into a 15-character buffer and parses
floats itself, so floats are written as ``%.8e`` (9 significant digits, enough to give back the
same float32; at most 15 characters with the sign).

``.bin``: each layer's weights in layer order, raw little-endian float32; the weights ncnn reads
with ``ModelBin::load(.., 0)`` (Convolution / Deconvolution / InnerProduct weights) start with a
4-byte type tag, 0 for plain float32.

ncnn needs one name per value and an explicit ``Split`` where a value has several readers; both
are done here: the last value of each Caffe blob keeps the Caffe name, other values get
``<caffe name>@<layer>`` (or ``<layer>_<part>`` for values inside a composition), and a value read
``k > 1`` times gets a ``Split`` into ``<name>_splitncnn_<i>``, as caffe2ncnn names them.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from caffenorm.errors import ExportError
from caffenorm.export.ncnn._model import Blob, Layer, NcnnModel, ParamValue

__all__ = ["ARRAY_ID_BASE", "MAGIC", "finalize", "format_param", "write_bin", "write_param"]

MAGIC = 7767517
# An array parameter ``id`` is written under the key ``-(ARRAY_ID_BASE + id)``.
ARRAY_ID_BASE = 23300
# ncnn scans names with "%255s": no whitespace, at most 255 characters.
_MAX_NAME = 255
_TAG_FLOAT32 = struct.pack("<I", 0)


def format_float(value: float) -> str:
    """A float32 value as ncnn's parser reads it back exactly (see the module docstring)."""
    v = float(value)
    if not math.isfinite(v):
        raise ExportError(f"ncnn's .param format cannot hold the value {v} (its parser reads only finite numbers)")
    text = f"{float(np.float32(v)):.8e}"
    if len(text) > 15:  # pragma: no cover - float32 exponents have 2 digits
        raise ExportError(f"the value {v} does not fit ncnn's 15-character parameter field")
    return text


def _format_scalar(value: object) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format_float(float(value))
    raise TypeError(f"unsupported ncnn parameter value {value!r}")


def format_param(key: int, value: ParamValue) -> str:
    """``id=value`` (scalars) or ``-(23300+id)=n,v1,...`` (arrays)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        items = [_format_scalar(v) for v in value]
        return f"{-(ARRAY_ID_BASE + key)}={len(items)}" + "".join(f",{v}" for v in items)
    return f"{key}={_format_scalar(value)}"


def _sanitize(name: str) -> str:
    cleaned = re.sub(r"\s", "_", name) or "_"
    return cleaned[:_MAX_NAME]


class _Names:
    """Unique names, avoiding ``reserved`` ones unless claimed by their own blob."""

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self.taken: set[str] = set()
        self.reserved = set(reserved)

    def claim(self, name: str) -> bool:
        if name in self.taken:
            return False
        self.taken.add(name)
        return True

    def fresh(self, base: str) -> str:
        base = _sanitize(base)
        candidate, k = base, 0
        while candidate in self.taken or candidate in self.reserved:
            k += 1
            suffix = f"_{k}"
            candidate = base[: _MAX_NAME - len(suffix)] + suffix
        self.taken.add(candidate)
        return candidate


def finalize(model: NcnnModel) -> list[Layer]:
    """The layers to write: every blob named, a ``Split`` after each value read more than once.

    Changes the model's blobs (names) and returns a new layer list (the splits inserted)."""
    blob_names = _Names(model.reserved)
    # Caffe names first (inputs and the last value of each Caffe blob), then the rest.
    produced = [top for layer in model.layers for top in layer.tops]
    renamed: dict[int, str] = {}
    for blob in produced:
        if blob.name is not None:
            wanted = _sanitize(blob.name)
            if not blob_names.claim(wanted):
                renamed[id(blob)] = blob.name
                blob.name = None
                blob.hint = blob.hint or wanted
            else:
                blob.name = wanted
    for blob in produced:
        if blob.name is None:
            blob.name = blob_names.fresh(blob.hint or "blob")
            if id(blob) in renamed:
                model.aliases[blob.name] = renamed[id(blob)]

    readers: dict[int, list[tuple[Layer, int]]] = {}
    for layer in model.layers:
        for pos, bottom in enumerate(layer.bottoms):
            readers.setdefault(id(bottom), []).append((layer, pos))

    layer_names = _Names()
    out: list[Layer] = []
    splits = 0
    for layer in model.layers:
        layer.name = layer_names.fresh(layer.name)
        out.append(layer)
        for top in layer.tops:
            reads = readers.get(id(top), [])
            if len(reads) < 2:
                continue
            assert top.name is not None
            branches = [Blob(top.shape, blob_names.fresh(f"{top.name}_splitncnn_{i}")) for i in range(len(reads))]
            out.append(Layer("Split", layer_names.fresh(f"splitncnn_{splits}"), [top], branches))
            splits += 1
            for (reader, pos), branch in zip(reads, branches):
                reader.bottoms[pos] = branch
    return out


def write_param(layers: list[Layer], path: Path) -> None:
    """The ``.param`` text of ``layers`` (named, splits inserted: see :func:`finalize`)."""
    blobs = {top.name for layer in layers for top in layer.tops}
    lines = [str(MAGIC), f"{len(layers)} {len(blobs)}"]
    for layer in layers:
        fields = [f"{layer.type:<16}", f"{layer.name:<24}", str(len(layer.bottoms)), str(len(layer.tops))]
        fields += [str(b.name) for b in layer.bottoms] + [str(t.name) for t in layer.tops]
        fields += [format_param(key, value) for key, value in layer.params.items()]
        lines.append(" ".join(fields))
    Path(path).write_text("\n".join(lines) + "\n")


def write_bin(layers: list[Layer], path: Path) -> None:
    """The ``.bin`` weights of ``layers``, in layer order (see the module docstring)."""
    with open(path, "wb") as f:
        for layer in layers:
            for weight in layer.weights:
                data = np.ascontiguousarray(weight.data, dtype="<f4").reshape(-1)
                if weight.tagged:
                    f.write(_TAG_FLOAT32)
                f.write(data.tobytes())
