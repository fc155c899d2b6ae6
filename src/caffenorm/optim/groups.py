"""A net's learnable blobs in Caffe's order, with their ``ParamSpec`` multipliers
(``Net::AppendParam``, ``src/caffe/net.cpp``), and optimizer param groups from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor, nn

from caffenorm.errors import LayerConfigError

__all__ = ["LearnableBlob", "learnable_blobs", "param_groups"]


class LearnableBlob(NamedTuple):
    """One entry of Caffe's ``learnable_params_``: the layer, the blob's index in it, the tensor and
    its multipliers (``lr_mult``, ``decay_mult``; proto floats, so float32 values)."""

    layer_name: str
    index: int
    param: Tensor
    lr_mult: float
    decay_mult: float


@dataclass
class _Entry:
    layer_name: str
    index: int
    param: Tensor
    lr_mult: float
    decay_mult: float
    has_lr: bool
    has_decay: bool


def learnable_blobs(net: Any, *, include_buffers: bool = False) -> list[LearnableBlob]:
    """The learnable blobs of ``net`` (a :class:`caffenorm.Net`) in Caffe's ``learnable_params_``
    order: layers in execution order (fused pairs as their two layers), each layer's blobs in
    Caffe's order (``module.caffe_blobs()``), a tensor shared by several layers once.

    Multipliers come from the layer's ``param`` (``ParamSpec``) of the same index; a missing one
    means ``lr_mult: 1``, ``decay_mult: 1``.  For a shared tensor Caffe keeps the first owner's
    *explicit* multiplier, else takes the first explicit one of a later sharer, and refuses two
    different explicit ones.

    Blobs that are not ``nn.Parameter`` s (BatchNorm's mean/variance sums and scale factor) are left
    out unless ``include_buffers``: Caffe's Net does list them, with ``lr_mult`` 0 (BatchNorm's
    layer adds that ParamSpec itself and refuses another value), so they are never updated, but its
    ``.solverstate`` has history blobs for them.  With ``include_buffers=True`` they are included
    (``lr_mult`` 0, ``decay_mult`` from their ParamSpec or 1), and an optimizer built from them
    keeps a history list exactly as long as Caffe's.

    Raises:
        LayerConfigError: shared tensors with different explicit multipliers, or (with
            ``include_buffers``) a non-zero ``lr_mult`` on a BatchNorm blob -- both refused by Caffe.
    """
    entries: list[_Entry] = []
    seen: dict[int, _Entry] = {}
    for node in net.graph.layer_nodes():
        module = node.module
        blobs = module.caffe_blobs() if module is not None and hasattr(module, "caffe_blobs") else []
        specs = list(node.definitions[0].param) if node.definitions else []
        for i, blob in enumerate(blobs):
            spec = specs[i] if i < len(specs) else None
            has_lr = spec is not None and spec.HasField("lr_mult")
            has_decay = spec is not None and spec.HasField("decay_mult")
            # ParamSpec's defaults are lr_mult 1, decay_mult 1 (also for a missing ParamSpec).
            lr_mult = float(spec.lr_mult) if spec is not None else 1.0
            decay_mult = float(spec.decay_mult) if spec is not None else 1.0
            if not isinstance(blob, nn.Parameter):
                if not include_buffers:
                    continue
                if has_lr and lr_mult != 0:
                    raise LayerConfigError(
                        f"layer {node.name!r} ({node.type}): param {i} has lr_mult {lr_mult:g}, but blob {i} is a "
                        "statistic, not a parameter; Caffe requires lr_mult 0 ('Cannot configure batch "
                        "normalization statistics as layer parameters.')"
                    )
                lr_mult, has_lr = 0.0, True
            owner = seen.get(id(blob))
            if owner is None:
                entry = _Entry(node.name, i, blob, lr_mult, decay_mult, has_lr, has_decay)
                seen[id(blob)] = entry
                entries.append(entry)
                continue
            # A shared blob (Net::AppendParam's "share params" branch).
            for field, has, value in (("lr_mult", has_lr, lr_mult), ("decay_mult", has_decay, decay_mult)):
                if not has:
                    continue
                if getattr(owner, "has_lr" if field == "lr_mult" else "has_decay"):
                    if getattr(owner, field) != value:
                        raise LayerConfigError(
                            f"layer {node.name!r} ({node.type}): param {i} is shared with blob {owner.index} of layer "
                            f"{owner.layer_name!r}, which has {field} {getattr(owner, field):g}, but this one says "
                            f"{value:g}; Caffe refuses mismatched multipliers of a shared param"
                        )
                else:
                    setattr(owner, field, value)
                    setattr(owner, "has_lr" if field == "lr_mult" else "has_decay", True)
    return [LearnableBlob(e.layer_name, e.index, e.param, e.lr_mult, e.decay_mult) for e in entries]


def param_groups(net: Any, *, base_lr: float | None = None, include_buffers: bool = False) -> list[dict[str, Any]]:
    """Optimizer param groups for ``net``: one per distinct ``(lr_mult, decay_mult)``, in order of
    first appearance, each ``{"params": [...], "lr_mult": m, "decay_mult": d, "names": [...],
    "caffe_index": [...]}`` (plus ``"lr": base_lr`` when given).

    The params are those of :func:`learnable_blobs` (same arguments), in the net's order within
    each group; ``names`` are ``"layer.index"`` (for messages) and ``caffe_index`` each param's
    position in :func:`learnable_blobs`, which the :mod:`caffenorm.optim` optimizers use to return
    ``caffe_history()`` in Caffe's order.
    """
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for k, blob in enumerate(learnable_blobs(net, include_buffers=include_buffers)):
        key = (blob.lr_mult, blob.decay_mult)
        group = groups.get(key)
        if group is None:
            group = {
                "params": [],
                "lr_mult": blob.lr_mult,
                "decay_mult": blob.decay_mult,
                "names": [],
                "caffe_index": [],
            }
            if base_lr is not None:
                group["lr"] = float(base_lr)
            groups[key] = group
        group["params"].append(blob.param)
        group["names"].append(f"{blob.layer_name}.{blob.index}")
        group["caffe_index"].append(k)
    return list(groups.values())
