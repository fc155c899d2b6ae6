"""A parsed net, reduced to what building it needs: the layers of one phase, in order, each with its
name, type, bottoms, tops, full ``LayerParameter``, its position in the net and its line in the
prototxt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from caffenorm.caffe import schema
from caffenorm.errors import Location

__all__ = ["LayerSpec", "layer_specs", "parse_phase"]

_PHASES = {"TRAIN": schema.TRAIN, "TEST": schema.TEST}


def parse_phase(phase: str) -> str:
    """``"train"``/``"test"`` in any case -> ``"TRAIN"``/``"TEST"``."""
    from caffenorm.errors import LayerConfigError

    key = str(phase).strip().upper()
    if key not in _PHASES:
        raise LayerConfigError(f"phase={phase!r} is not allowed; use 'test' (inference) or 'train'")
    return key


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the net as the prototxt defines it."""

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    param: Message  # the caffe LayerParameter
    line: int | None
    source: str
    index: int = -1  # position in the (upgraded) NetParameter's layer list

    @property
    def location(self) -> Location:
        """Where the layer is defined: file, line, name and type."""
        return Location(self.source, self.line, None, self.name, self.type)

    def where(self) -> str:
        """``file:line: layer 'name' (Type)``, for messages that mention another layer."""
        return str(self.location)


def _meets_rule(rule: Message, phase: int, level: int, stages: Sequence[str]) -> bool:
    """Caffe's ``Net::StateMeetsRule``."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def _included(layer: Message, phase: int, level: int, stages: Sequence[str]) -> bool:
    """Caffe's ``Net::FilterNet``: exclude rules first, then include rules (any one suffices)."""
    included = not layer.include
    if included and any(_meets_rule(r, phase, level, stages) for r in layer.exclude):
        included = False
    if not included and any(_meets_rule(r, phase, level, stages) for r in layer.include):
        included = True
    return included


def layer_specs(
    net: Message,
    lines: Sequence[int | None],
    source: str,
    phase: str,
    level: int = 0,
    stages: Sequence[str] = (),
) -> list[LayerSpec]:
    """The layers of ``net`` that Caffe would instantiate for ``phase``/``level``/``stages``."""
    phase_value = _PHASES[parse_phase(phase)]
    specs = []
    for i, layer in enumerate(net.layer):
        if not _included(layer, phase_value, level, stages):
            continue
        line = lines[i] if i < len(lines) else None
        specs.append(
            LayerSpec(layer.name, layer.type, tuple(layer.bottom), tuple(layer.top), layer, line, source, i)
        )
    return specs
