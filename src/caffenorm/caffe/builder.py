"""From a prototxt to a :class:`~caffenorm.caffe.graph.Graph`: read and upgrade the definition,
select the layers of the phase, check the wiring, build each layer's module with its converter and
infer every blob's shape -- before anything is allocated or run.

Shapes are inferred in one place, :meth:`CaffeLayer.output_shapes`, layer by layer in net order,
so a converter sees its bottoms' shapes (Caffe's ``LayerSetUp`` reads them too).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from google.protobuf.message import Message
from torch import Tensor, nn

from caffenorm.caffe import io
from caffenorm.caffe import layers as _layers  # noqa: F401 - registers the layer families
from caffenorm.caffe.graph import Graph, Node
from caffenorm.caffe.layers.input import InputLayer
from caffenorm.caffe.memory import ENV_VAR, Budget, MemoryLimit, format_bytes
from caffenorm.caffe.registry import BuildContext, get_converter
from caffenorm.caffe.spec import LayerSpec, layer_specs, parse_phase
from caffenorm.caffe.upgrade import upgrade_net
from caffenorm.errors import CaffeNormError, Location, NetDefinitionError, format_shape
from caffenorm.nn._base import CaffeLayer, Shape

__all__ = ["Built", "build_graph", "module_key", "read_net", "select_layers", "set_blob", "share_params"]

PathLike = str | os.PathLike[str]


def read_net(
    prototxt: PathLike, phase: str = "test", level: int = 0, stages: Sequence[str] = ()
) -> tuple[Message, list[LayerSpec]]:
    """Read and upgrade a prototxt; return it and the layers of ``phase``/``level``/``stages``.

    As Caffe's ``Net(file, phase, level, stages)``: the file's own ``state`` stages are kept and
    the given ones added; its phase and level are replaced.
    """
    path = Path(prototxt)
    net_param, lines = io.read_prototxt(path)
    return select_layers(net_param, lines, str(path), phase, level, stages)


def select_layers(
    net_param: Message,
    lines: Sequence[int | None],
    source: str,
    phase: str = "test",
    level: int = 0,
    stages: Sequence[str] = (),
) -> tuple[Message, list[LayerSpec]]:
    """:func:`read_net` for a ``NetParameter`` already parsed (e.g. a solver's inline
    ``net_param``): upgrade it in place and return it with the layers of ``phase``/``level``/
    ``stages``.  ``lines`` are the prototxt lines of its top-level layers (may be empty);
    ``source`` names it in messages."""
    lines = list(lines)
    if lines and (net_param.input or net_param.input_shape or net_param.input_dim):
        lines = [None, *lines]  # the upgrade prepends an Input layer that has no line of its own
    upgrade_net(net_param, source)
    all_stages = [*net_param.state.stage, *stages]
    specs = layer_specs(net_param, lines, source, phase, level, all_stages)
    if not specs:
        raise NetDefinitionError(f"no layers for phase {parse_phase(phase)}", location=Location(source))
    return net_param, specs


@dataclass
class Built:
    """What building produced: the graph; the fillers not yet run because weights will come from a
    caffemodel (layer name -> [(tensor, FillerParameter)]); the seeded generator they will use."""

    graph: Graph
    deferred_fills: dict[str, list[tuple[Tensor, Message]]] = field(default_factory=dict)
    generator: torch.Generator = field(default_factory=torch.Generator)


def _check_wiring(spec: LayerSpec, producer: dict[str, LayerSpec], later: dict[str, LayerSpec]) -> None:
    """Caffe's rules: a bottom must be produced earlier; a second writer of a blob only in place."""
    for bottom in spec.bottoms:
        if bottom in producer:
            continue
        source = later.get(bottom)
        if source is not None and source is not spec:
            raise NetDefinitionError(
                f"bottom {bottom!r} is only produced later, by {source.where()}; Caffe runs layers in prototxt order",
                location=spec.location,
            )
        raise NetDefinitionError(
            f"bottom {bottom!r} is not produced by any layer (nor declared as an input)", location=spec.location
        )
    for i, top in enumerate(spec.tops):
        in_place = i < len(spec.bottoms) and spec.bottoms[i] == top
        if top in producer and not in_place:
            raise NetDefinitionError(
                f"top {top!r} is already produced by {producer[top].where()}; Caffe only allows a second writer "
                "in place (bottom == top at the same position)",
                location=spec.location,
            )


def _top_shapes(spec: LayerSpec, module: CaffeLayer, shapes: list[Shape | None]) -> list[Shape | None]:
    if any(s is None or None in s for s in shapes):
        return [None] * len(spec.tops)
    try:
        tops = module.output_shapes(*shapes)  # type: ignore[arg-type]
    except CaffeNormError as err:
        raise err.at(spec.location) from None
    except (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError, ArithmeticError) as err:
        listed = ", ".join(format_shape(s) for s in shapes)  # type: ignore[arg-type]
        raise NetDefinitionError(f"does not fit bottoms of shapes {listed}: {err}", location=spec.location) from None
    if len(tops) != len(spec.tops):
        raise NetDefinitionError(f"produces {len(tops)} outputs for {len(spec.tops)} tops", location=spec.location)
    return tops


# Attributes of the ModuleDict holding the layers: a layer named like one of them ("type",
# "training", "forward", "_modules", ...) cannot be a key of it as such.
_MODULE_DICT_PROBE = nn.ModuleDict()


def module_key(name: str) -> str:
    """The key of a layer's module in ``Net.layers`` (and, after ``layers.``, in the state dict).

    Any Caffe layer name is allowed; an ordinary name is its own key.  A name that cannot be a
    module name as such -- empty, containing '.' or '%', or the name of an ``nn.Module``
    attribute (``type``, ``training``, ``forward``, ``_modules``, ...) -- is escaped: '%' then the
    name with '%' written ``%25`` and '.' written ``%2E`` (``"conv1.bn"`` -> ``"%conv1%2Ebn"``,
    ``"type"`` -> ``"%type"``).  The mapping is one-to-one, so distinct layers never share a key.
    """
    if name and "." not in name and "%" not in name and not hasattr(_MODULE_DICT_PROBE, name):
        return name
    return "%" + name.replace("%", "%25").replace(".", "%2E")


def build_graph(
    net_param: Message,
    specs: Sequence[LayerSpec],
    phase: str,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    defer_fillers: bool = False,
    source: str = "<net>",
    memory_limit: MemoryLimit = None,
) -> Built:
    """Build every layer of ``specs`` and infer every blob's shape.

    Args:
        net_param: the upgraded net definition (kept in the graph for writing back).
        specs: the layers of the phase, in order (see :func:`read_net`).
        phase: ``"train"`` or ``"test"``.
        input_shapes: shapes for inputs the prototxt does not declare (or to override them).
        seed: seed of the fillers.
        defer_fillers: record the fillers instead of running them (weights come from a caffemodel).
        source: the prototxt's path, for messages.
        memory_limit: the memory budget (see :mod:`caffenorm.caffe.memory`): parameters plus every
            blob at the declared input shapes must fit, or a :class:`NetDefinitionError` is raised
            before the layer that would pass it allocates anything.
    """
    phase = parse_phase(phase)
    budget = Budget(memory_limit, torch.get_default_dtype().itemsize)
    overrides = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    generator = torch.Generator().manual_seed(seed)
    shapes: dict[str, Shape | None] = {}
    producer: dict[str, LayerSpec] = {}
    later = {top: s for s in reversed(specs) for top in s.tops}
    keys: dict[str, LayerSpec] = {}
    nodes: list[Node] = []
    deferred: dict[str, list[tuple[Tensor, Message]]] = {}
    for spec in specs:
        _check_wiring(spec, producer, later)
        key = module_key(spec.name)
        if key in keys:
            raise NetDefinitionError(
                f"a layer named {keys[key].name!r} already exists ({keys[key].where()}); names must be unique",
                location=spec.location,
            )
        keys[key] = spec
        bottom_shapes = [shapes[b] for b in spec.bottoms]
        ctx = BuildContext(spec, bottom_shapes, phase, generator, [] if defer_fillers else None, budget)
        params_before = budget.params
        try:
            module = get_converter(spec)(spec, ctx)
        except CaffeNormError as err:
            raise err.at(spec.location) from None
        except (MemoryError, RuntimeError) as err:
            # The budget passed but the allocator did not (memory taken since, overcommit limits):
            # still a net too large for this machine, not a bug.
            if not isinstance(err, MemoryError) and "allocate" not in str(err):
                raise
            raise NetDefinitionError(
                f"cannot allocate its blobs: {(str(err).splitlines() or ['MemoryError'])[0][:200]}; the memory budget "
                f"({format_bytes(budget.total)} so far) did not foresee it: lower memory_limit or "
                f"{ENV_VAR} to keep room", location=spec.location
            ) from None
        if not isinstance(module, CaffeLayer):
            raise TypeError(f"converter for {spec.type} returned {type(module).__name__}, not a CaffeLayer")
        # The layer's real tensors replace what its converter declared (BatchNorm and Normalize
        # declare nothing: their blobs are a few vectors of the bottom's channel count).
        tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}.values()
        actual = sum(t.numel() * t.element_size() for t in tensors)
        budget.adjust_params(actual - (budget.params - params_before))
        if ctx.deferred_fills:
            deferred[spec.name] = ctx.deferred_fills
        is_input = isinstance(module, InputLayer)
        if is_input:
            if len(module.shapes) != len(spec.tops):
                raise NetDefinitionError(
                    f"declares {len(module.shapes)} shapes for {len(spec.tops)} tops", location=spec.location
                )
            tops: list[Shape | None] = []
            for top, declared in zip(spec.tops, module.shapes):
                shape = overrides.pop(top, declared)
                if shape is not None:
                    ctx.check_elements(shape, f"input {top!r}", blob=False)
                    budget.add_activation(top, shape, f"input {top!r}", spec.location)
                tops.append(shape)
            # The layers are built for these shapes: an Input layer saved later must declare them.
            module.shapes = list(tops)
        else:
            tops = _top_shapes(spec, module, bottom_shapes)
            for top, shape in zip(spec.tops, tops):
                if shape is not None and None not in shape:
                    ctx.check_elements(shape, f"top {top!r}", blob=False)  # type: ignore[arg-type]
                    budget.add_activation(top, shape, f"top {top!r}", spec.location)  # type: ignore[arg-type]
        for top, shape in zip(spec.tops, tops):
            shapes[top] = shape
            producer[top] = spec
        definition = type(spec.param)()
        definition.CopyFrom(spec.param)
        definition.ClearField("blobs")
        nodes.append(
            Node(
                spec.name,
                spec.type,
                spec.bottoms,
                spec.tops,
                module,
                spec.location,
                (definition,),
                (spec.index,),
                tuple(tops),
                is_input=is_input,
            )
        )
    share_params(nodes)
    if overrides:
        inputs = [top for n in nodes if n.is_input for top in n.tops]
        raise NetDefinitionError(
            f"input_shapes names {sorted(overrides)}, which are not inputs of this net; inputs: {inputs}",
            location=Location(source),
        )
    definition = type(net_param)()
    definition.CopyFrom(net_param)
    for layer in definition.layer:
        layer.ClearField("blobs")
    graph = Graph(tuple(nodes), definition, source, phase, phase_indices=frozenset(s.index for s in specs))
    return Built(graph, deferred, generator)


def set_blob(module: CaffeLayer, index: int, tensor: Tensor) -> None:
    """Make blob ``index`` of ``module`` the tensor ``tensor`` itself (not a copy)."""
    name = module._blob_names()[index]
    owner, _, attr = name.rpartition(".")
    target = module.get_submodule(owner) if owner else module
    if attr in target._parameters:
        if not isinstance(tensor, nn.Parameter):
            raise TypeError(f"blob {index} ({name}) of {type(module).__name__} is a parameter; got a plain tensor")
        target._parameters[attr] = tensor
    else:
        target._buffers[attr] = tensor
    target.__dict__.pop("_stats_cache", None)  # BatchNorm's statistics cache, keyed on the old blob


def share_params(nodes: Sequence[Node]) -> None:
    """Caffe's parameter sharing and ``lr_mult``, applied to freshly built layers (in net order).

    * ``param { name: "w" }`` on several layers: the first layer with that name owns the blob,
      and each later layer's module gets the owner's tensor itself (the very ``nn.Parameter``),
      so the blob is one tensor that every sharing layer reads and whose gradient sums every
      use -- Caffe's ``Net::AppendParam``.  Shapes must be equal (Caffe's ``STRICT``
      ``share_mode``; ``PERMISSIVE``, which only compares counts, is accepted for equal shapes)
      or a :class:`NetDefinitionError` names both layers, the name and the shapes ("Cannot share
      param").  ``lr_mult``/``decay_mult`` given on both the owner and a sharer must agree
      ("Shared param has mismatched lr_mult"); one given on a sharer only is the blob's.
    * ``lr_mult: 0``: the blob is not learned and Caffe does not compute its gradient
      (``param_propagate_down`` false), so its ``nn.Parameter`` gets ``requires_grad=False``.  For
      a shared blob the resolved multiplier decides (an update scaled by 0 changes nothing
      whatever the gradient).
    """
    owners: dict[str, tuple[Node, int, Tensor]] = {}
    # learnable blob (by tensor id) -> [tensor, lr_mult, has_lr, decay_mult, has_decay]
    resolved: dict[int, list[Any]] = {}
    for node in nodes:
        if node.is_input or not node.definitions:
            continue
        specs = list(node.definitions[0].param)
        blobs = node.module.caffe_blobs()
        for index, blob in enumerate(blobs):
            spec = specs[index] if index < len(specs) else None
            lr, decay = (spec.lr_mult, spec.decay_mult) if spec is not None else (1.0, 1.0)
            has_lr = spec is not None and spec.HasField("lr_mult")
            has_decay = spec is not None and spec.HasField("decay_mult")
            name = spec.name if spec is not None else ""
            if not name or name not in owners:
                if name:
                    owners[name] = (node, index, blob)
                resolved[id(blob)] = [blob, lr, has_lr, decay, has_decay]
                continue
            owner, owner_index, shared = owners[name]
            if tuple(shared.shape) != tuple(blob.shape):
                permissive = spec is not None and spec.share_mode == spec.PERMISSIVE
                why = (
                    "counts match (share_mode PERMISSIVE) but caffenorm shares one tensor, which needs equal shapes"
                    if permissive and shared.numel() == blob.numel()
                    else "shape mismatch"
                )
                raise NetDefinitionError(
                    f"Cannot share param {name!r} owned by layer {owner.name!r} with layer {node.name!r}: {why}; "
                    f"the owner's blob {owner_index} has shape {tuple(shared.shape)}, layer {node.name!r}'s blob "
                    f"{index} expects {tuple(blob.shape)}",
                    location=node.location,
                )
            if isinstance(shared, nn.Parameter) != isinstance(blob, nn.Parameter):
                raise NetDefinitionError(
                    f"Cannot share param {name!r} owned by layer {owner.name!r} with layer {node.name!r}: one is a "
                    f"learned blob, the other a statistic ({owner.type} blob {owner_index}, {node.type} blob {index})",
                    location=node.location,
                )
            set_blob(node.module, index, shared)
            entry = resolved[id(shared)]
            for value, has, slot, label in ((lr, has_lr, 1, "lr_mult"), (decay, has_decay, 3, "decay_mult")):
                if not has:
                    continue
                if entry[slot + 1] and entry[slot] != value:
                    raise NetDefinitionError(
                        f"Shared param {name!r} has mismatched {label}: {entry[slot]:g} (layer {owner.name!r}) "
                        f"vs {value:g} (layer {node.name!r})",
                        location=node.location,
                    )
                entry[slot], entry[slot + 1] = value, True
    for blob, lr, *_ in resolved.values():
        if isinstance(blob, nn.Parameter) and lr == 0:
            blob.requires_grad_(False)
