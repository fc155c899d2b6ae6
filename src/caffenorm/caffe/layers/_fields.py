"""Protobuf field helpers shared by the converters and writers of the layer families."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from caffenorm.caffe.registry import write_fields

__all__ = ["enum_name", "has", "param_of", "where", "write_pair"]


def param_of(layer: Any, fields: Mapping[type, str], module: object) -> Any:
    """The ``*_param`` sub-message of ``layer`` that holds ``module``'s settings, from a family's
    class -> field table (looked up along the class hierarchy, so subclasses are written too)."""
    for cls in type(module).__mro__:
        if cls in fields:
            return getattr(layer, fields[cls])
    raise KeyError(f"no parameter field for {type(module).__name__}")


def where(layer: str, layer_name: str | None) -> str:
    """``layer`` (the type) with the layer's name, for error messages."""
    return f"{layer} layer {layer_name!r}" if layer_name else layer


def has(msg: Any, field: str) -> bool:
    return bool(msg.HasField(field))


def enum_name(msg: Any, field: str) -> str:
    """The name of an enum field's value (``pool: MAX`` -> ``"MAX"``)."""
    fd = msg.DESCRIPTOR.fields_by_name[field]
    return str(fd.enum_type.values_by_number[getattr(msg, field)].name)


def write_pair(msg: Any, base: str, value: Sequence[int], default: int | None, *, repeated: bool) -> None:
    """Write an (h, w) geometry field in Caffe's forms: ``base`` (one value for both axes; a
    repeated field in ConvolutionParameter) when h == w, else ``<name>_h`` + ``<name>_w``
    (``kernel_size`` -> ``kernel_h``).  The form the definition used is kept when it can express
    the value; a value equal to ``default`` is left out if the definition left it out."""
    h, w = (int(v) for v in value)
    stem = base.removesuffix("_size")
    fh, fw = f"{stem}_h", f"{stem}_w"
    split = has(msg, fh) or has(msg, fw)
    listed = len(getattr(msg, base)) if repeated else int(has(msg, base))
    msg.ClearField(fh)
    msg.ClearField(fw)
    msg.ClearField(base)
    if not (split or listed) and default is not None and h == w == default:
        return
    if repeated and listed and not split:
        # ConvolutionParameter's repeated form: one value for all axes, or one per axis.
        getattr(msg, base).extend([h] if listed == 1 and h == w else [h, w])
    elif split or h != w:
        write_fields(msg, {fh: h, fw: w}, keep_defaults=True)
    elif repeated:
        getattr(msg, base).append(h)
    else:
        write_fields(msg, {base: h}, keep_defaults=True)
