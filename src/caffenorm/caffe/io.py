"""Reading and writing Caffe's files with the protobuf library: ``.prototxt`` (text format) and
``.caffemodel`` (binary), and converting blobs to and from numpy.

Nothing here executes anything from a model file: both formats are plain protobuf data.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError, Message

from caffenorm.caffe import schema
from caffenorm.errors import (
    BlobError,
    CaffemodelError,
    Location,
    ModelFileError,
    PrototxtSyntaxError,
    format_count,
    format_shape,
)

__all__ = [
    "array_to_blob",
    "blob_shape",
    "blob_to_array",
    "iter_caffemodel_layers",
    "parse_prototxt",
    "read_prototxt",
    "write_caffemodel",
    "write_prototxt",
]

PathLike = str | os.PathLike[str]


def _read(path: PathLike, what: str, probe: bool = False) -> bytes:
    """The file's bytes (nothing with ``probe``: only check it can be opened)."""
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"{p}: no such {what} file")
    if p.is_dir():
        raise ModelFileError(f"{p}: is a directory, expected a {what} file")
    try:
        if probe:
            with p.open("rb"):
                return b""
        return p.read_bytes()
    except OSError as err:
        raise ModelFileError(f"{p}: cannot read the {what}: {err.strerror or err}") from None


class _LineRecordingParser(text_format._Parser):  # type: ignore[misc,name-defined]
    """protobuf's own text parser, noting the line of each top-level ``layer``/``layers`` entry
    as it parses it, so the prototxt is read (and tokenized) once."""

    def __init__(self) -> None:
        super().__init__()
        self.root: Message | None = None
        self.layer_lines: list[int] = []

    def _MergeField(self, tokenizer: Any, message: Message) -> None:  # noqa: N802 - protobuf's name
        if message is self.root and tokenizer.token in ("layer", "layers"):
            # Tokenizer.ParseError builds (and returns) an error carrying the current position.
            self.layer_lines.append(tokenizer.ParseError("").GetLine())
        super()._MergeField(tokenizer, message)


def parse_prototxt(text: str, source: str = "<string>") -> tuple[Message, list[int | None]]:
    """Parse prototxt text into a ``NetParameter``; also return the line of every top-level layer.

    Lines come from protobuf's parser itself; should a future protobuf drop the (private) parser
    class this relies on, the file still parses and only the line numbers are missing.
    """
    net = schema.NetParameter()
    try:
        if hasattr(text_format, "_Parser"):
            parser = _LineRecordingParser()
            parser.root = net
            parser.ParseLines(text.split("\n"), net)
            lines: list[int | None] = list(parser.layer_lines)
        else:  # pragma: no cover - protobuf without the parser class
            text_format.Parse(text, net)
            lines = []
    except text_format.ParseError as err:
        line, col = err.GetLine(), err.GetColumn()
        # protobuf prefixes "line:col : " and quotes the offending line; the location says where.
        message = re.sub(r"^\d+:\d+\s*:\s*", "", str(err))
        message = re.sub(r"^'[^\n]*?': ", "", message)
        hint = ""
        if "has no field named" in message:
            hint = " (a field of a Caffe fork caffenorm does not know, or a typo)"
        raise PrototxtSyntaxError(
            f"{message}{hint}", location=Location(source, line or None, col or None)
        ) from None
    return net, lines


def read_prototxt(path: PathLike) -> tuple[Message, list[int | None]]:
    """Read a ``.prototxt`` file: the ``NetParameter`` and the line of every top-level layer."""
    raw = _read(path, "prototxt")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PrototxtSyntaxError(
            "is not text (is it a binary .caffemodel given as the prototxt?)", location=Location(str(path))
        ) from None
    return parse_prototxt(text, str(path))


def _varint(f: BinaryIO, path: PathLike) -> int | None:
    """One base-128 varint from ``f``; ``None`` at a clean end of file."""
    value, shift = 0, 0
    while True:
        byte = f.read(1)
        if not byte:
            if shift:
                raise CaffemodelError(f"{path}: ends in the middle of a field (truncated caffemodel)")
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise CaffemodelError(f"{path}: not a binary caffemodel (malformed field header)")


_LAYER_FIELDS = {100: "LayerParameter", 2: "V1LayerParameter"}  # NetParameter.layer / .layers


def iter_caffemodel_layers(path: PathLike) -> Iterator[Message]:
    """Yield the layer entries of a ``.caffemodel`` one at a time (V2 ``LayerParameter`` or V1
    ``V1LayerParameter`` messages), so only one layer's blobs are in memory at once.

    protobuf parses every message; only the top-level framing of ``NetParameter`` (each field's
    number and length) is walked here, to read one ``layer`` entry at a time from the file.
    """
    p = Path(path)
    _read(p, "caffemodel", probe=True)
    count = 0
    with p.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        while True:
            key = _varint(f, p)
            if key is None:
                break
            field, wire = key >> 3, key & 7
            if wire == 2:
                length = _varint(f, p)
                if length is None or f.tell() + length > size:
                    raise CaffemodelError(f"{p}: truncated: a field runs past the end of the file (layer {count})")
                if field in _LAYER_FIELDS:
                    message = schema.message_class(_LAYER_FIELDS[field])()
                    try:
                        message.ParseFromString(f.read(length))
                        _check_text(message)
                    except UnicodeDecodeError:
                        raise CaffemodelError(
                            f"{p}: layer entry {count} is corrupted: a text field (name, type, bottom, ...) is not "
                            "UTF-8"
                        ) from None
                    except (DecodeError, RuntimeError, ValueError) as err:
                        raise CaffemodelError(f"{p}: layer entry {count} is corrupted: {err}") from None
                    count += 1
                    yield message
                else:
                    f.seek(length, os.SEEK_CUR)
            elif wire == 0 and field:
                _varint(f, p)
            elif wire in (1, 5) and field:
                f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
            else:
                f.seek(0)
                looks_text = f.read(200).lstrip().startswith((b"name", b"layer", b"input", b"#"))
                hint = "it looks like a text prototxt" if looks_text else "corrupted, or another format"
                raise CaffemodelError(f"{p}: not a binary caffemodel ({hint})")
    if not count:
        raise CaffemodelError(f"{p}: holds no layers (empty, or not a caffemodel)")


def _check_text(message: Message) -> None:
    """Raise ``UnicodeDecodeError`` if a string field of ``message`` (at any depth) is not UTF-8:
    protobuf parses proto2 strings without checking them and hands such a field out as ``bytes``,
    which fails later, wherever it is used."""
    for field, value in message.ListFields():
        repeated = getattr(field, "is_repeated", None)  # protobuf >= 5; ``label`` before
        if repeated is None:
            repeated = field.label == field.LABEL_REPEATED
        values = value if repeated else (value,)
        if field.message_type is not None:
            for sub in values:
                _check_text(sub)
        elif field.type == field.TYPE_STRING:
            for text in values:
                if isinstance(text, bytes):
                    text.decode("utf-8")


def write_prototxt(net: Message, path: PathLike) -> None:
    Path(path).write_text(text_format.MessageToString(net), encoding="utf-8")


def write_caffemodel(net: Message, path: PathLike) -> None:
    Path(path).write_bytes(net.SerializeToString())


def blob_shape(blob: Message) -> tuple[int, ...]:
    """A ``BlobProto``'s shape: ``shape.dim``, or the legacy (num, channels, height, width)."""
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim)


def blob_to_array(blob: Message, where: str) -> np.ndarray:
    """A ``BlobProto``'s data as a float32 (or float64 for ``double_data``) array of its shape.

    ``where`` names the file, layer and blob index for the error message.
    """
    shape = blob_shape(blob)
    if any(d < 0 for d in shape):
        raise BlobError(f"{where}: negative dimension in blob shape {format_shape(shape)}")
    # A Python int: int64 dims can multiply past 2**63 (numpy's product would wrap around).
    count = math.prod(shape)
    held = len(blob.double_data) or len(blob.data)
    if held != count:
        raise BlobError(
            f"{where}: blob shape {format_shape(shape)} needs {format_count(count)} values but the file holds "
            f"{held:,} (truncated or corrupted caffemodel?)"
        )
    if count == 0 and any(d >= 2**31 for d in shape):
        # An empty blob with absurd other dimensions: numpy cannot even describe it.
        raise BlobError(f"{where}: blob shape {format_shape(shape)} has a dimension of 2**31 or more")
    if len(blob.double_data):
        data = np.array(blob.double_data, dtype=np.float64)
    else:
        data = np.array(blob.data, dtype=np.float32)
    return data.reshape(shape)


def array_to_blob(array: np.ndarray, blob: Message) -> None:
    """Fill a ``BlobProto`` with ``array`` as Caffe writes it: ``shape.dim`` and float ``data``."""
    arr = np.asarray(array, dtype=np.float32)
    blob.shape.dim[:] = list(arr.shape)
    blob.data[:] = arr.ravel().tolist()
