"""Passes over a :class:`~caffenorm.caffe.graph.Graph`: functions from graph to graph that keep the
net's outputs (to float32 rounding) and change how it is computed.

* :func:`fuse_batch_norm_scale` -- a BatchNorm and the per-channel Scale that rewrites its top in
  place run as one kernel (:class:`caffenorm.BatchNormScale`): the same function, Caffe's blob
  updates included, without the intermediate tensor.  Applied by default.
* :func:`cut` -- keep only what computes the chosen output blobs (``caffenorm.load(...,
  outputs=[...])``), e.g. an SSD without its DetectionOutput for a runtime that lacks it.
* :func:`fold_batch_norm` -- for inference, BatchNorm (stored statistics), Scale and Bias folded
  into the Convolution, Deconvolution or InnerProduct before them, where the intermediate blob
  has no other reader: ``caffenorm.load(..., fold=True)`` or ``net.fold()``.

A pass never modifies the graph it is given or its modules: folded layers get new modules.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from caffenorm.caffe.graph import Graph, Node
from caffenorm.caffe.layers.conv import Convolution, Deconvolution
from caffenorm.caffe.layers.inner_product import InnerProduct
from caffenorm.errors import CaffeNormError, Location, NetDefinitionError
from caffenorm.nn import BatchNorm, BatchNormScale, Bias, Scale
from caffenorm.nn._base import CaffeLayer

__all__ = ["cut", "fold_batch_norm", "fuse_batch_norm_scale"]


# -- fusion -------------------------------------------------------------------------------------


def _fusable_scale(bn: BatchNorm, scale: CaffeLayer) -> bool:
    return (
        isinstance(scale, Scale)
        and not scale.scale_from_input
        and scale.axis == 1
        and scale.shape == (bn.channels,)
    )


def fuse_batch_norm_scale(graph: Graph) -> Graph:
    """Run each BatchNorm and the Scale that rewrites its top in place as one node.

    Fused when the BatchNorm's output is read only by a learned per-channel Scale (``axis: 1``,
    blob ``(C,)``) whose top is the same blob: Caffe's own output of the BatchNorm is then
    overwritten before anything else sees it.  The fused node keeps both layers as its
    ``parts``; the modules (and their tensors) are the original ones.
    """
    nodes = list(graph.nodes)
    drop: set[int] = set()
    for i, node in enumerate(graph.nodes):
        if not isinstance(node.module, BatchNorm) or len(node.tops) != 1 or node.parts:
            continue
        readers = graph.consumers(i, 0)
        if len(readers) != 1 or graph.is_output(i, 0):
            continue
        j, _ = readers[0]
        scale = graph.nodes[j]
        if scale.parts or scale.bottoms != node.tops or scale.tops != node.tops:
            continue
        if not _fusable_scale(node.module, scale.module):
            continue
        nodes[i] = Node(
            node.name,
            "BatchNorm+Scale",
            node.bottoms,
            scale.tops,
            BatchNormScale(node.module, scale.module),  # type: ignore[arg-type]
            node.location,
            node.definitions + scale.definitions,
            node.indices + scale.indices,
            scale.top_shapes,
            parts=(node, scale),
        )
        drop.add(j)
    if not drop:
        return graph
    return graph.replace([n for k, n in enumerate(nodes) if k not in drop])


# -- folding ------------------------------------------------------------------------------------


def _affine(module: CaffeLayer, channels: int, name: str) -> tuple[Tensor, Tensor] | None:
    """``(a, c)`` in float64 with ``module(x) == a * x + c`` per channel (axis 1), or None when
    the layer is not such an affine map of ``channels`` channels."""
    if isinstance(module, BatchNormScale):
        first = _affine(module.batch_norm, channels, name)
        second = _affine(module.scale, channels, name)
        if first is None or second is None:
            return None
        return first[0] * second[0], first[1] * second[0] + second[1]
    if isinstance(module, BatchNorm):
        if module.channels != channels:
            return None
        if module.use_global_stats is None and module.training:
            raise NetDefinitionError(
                f"cannot fold BatchNorm {name!r}: it uses batch statistics (training mode); folding is for "
                "inference: call net.eval() first (or load with phase='test')"
            )
        if not module.uses_global_stats():
            return None  # use_global_stats: false -- batch statistics even at test time
        s = module.scale_factor.detach().double().reshape(())
        # Caffe: f = (s == 0) ? 0 : 1/s, so s == 0 means zero statistics, never a division by 0.
        f = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
        mean = module.mean_sum.detach().double() * f
        var = module.var_sum.detach().double() * f
        a = 1.0 / torch.sqrt(var + module.eps)
        return a, -mean * a
    if isinstance(module, (Scale, Bias)):
        from_input = module.scale_from_input if isinstance(module, Scale) else module.bias_from_input
        if from_input or module.shape not in ((), (channels,)) or (module.shape and module.axis not in (1,)):
            return None
        ones = torch.ones(channels, dtype=torch.float64, device=module.caffe_blobs()[0].device)
        if isinstance(module, Scale):
            a = module.weight.detach().double().expand(channels).clone()
            c = ones * 0.0 if module.bias is None else module.bias.detach().double().expand(channels).clone()
            return a, c
        return ones, module.bias.detach().double().expand(channels).clone()  # type: ignore[union-attr]
    return None


def _output_channels(node: Node) -> int | None:
    """The channel count along axis 1 of the producer's output, if it is its output channels."""
    module = node.module
    if isinstance(module, (Convolution, Deconvolution)) and len(node.bottoms) == 1:
        return module.num_output
    if isinstance(module, InnerProduct):
        shape = node.top_shapes[0] if node.top_shapes else None
        # The affine runs along axis 1, which is InnerProduct's output axis only for (N, num_output).
        if shape is not None and len(shape) == 2:
            return module.num_output
    return None


@torch.no_grad()
def _fold_into(producer: CaffeLayer, a: Tensor, c: Tensor) -> CaffeLayer:
    """A copy of ``producer`` computing ``a * producer(x) + c`` (per output channel)."""
    folded = copy.deepcopy(producer)
    weight = folded.weight
    dtype = weight.dtype
    w = weight.detach().double()
    if folded.bias is not None:
        bias = folded.bias.detach().double()
    else:
        bias = torch.zeros(a.numel(), dtype=torch.float64, device=weight.device)
    a, c = a.to(weight.device), c.to(weight.device)
    if isinstance(folded, Deconvolution):
        g = folded.group
        shape = w.shape
        w = w.reshape(g, shape[0] // g, shape[1], *shape[2:]) * a.reshape(g, 1, shape[1], *([1] * (w.dim() - 2)))
        w = w.reshape(shape)
    elif isinstance(folded, InnerProduct) and folded.transpose:
        w = w * a.reshape(1, -1)
    else:
        w = w * a.reshape(-1, *([1] * (w.dim() - 1)))
    weight.copy_(w.to(dtype))
    new_bias = (bias * a + c).to(dtype=dtype, device=weight.device)
    if folded.bias is None:
        folded.bias = nn.Parameter(new_bias, requires_grad=weight.requires_grad)
        folded.bias_term = True
    else:
        folded.bias.copy_(new_bias)
    return folded


def fold_batch_norm(graph: Graph) -> Graph:
    """Fold BatchNorm (stored statistics), Scale and Bias into the Convolution, Deconvolution or
    InnerProduct that feeds them, for inference.

    With ``y = a * z + c`` per channel for the normalisation (``a = 1/sqrt(var + eps)``,
    ``c = -mean * a`` for BatchNorm; ``a = gamma``, ``c = beta`` for Scale) and ``z = W x + b``,
    the producer becomes ``W' = a W``, ``b' = a b + c`` (computed in float64).  A layer is folded
    only where the producer's output is read by that layer alone and is not a net output; the
    folded producer then writes the folded layer's top.  Chains (Convolution -> BatchNorm ->
    Scale) fold step by step.  Layers that cannot be folded (a two-bottom Scale, a Scale over
    other axes, BatchNorm with ``use_global_stats: false``, a producer with several bottoms)
    stay as they are.

    Raises :class:`~caffenorm.NetDefinitionError` if a BatchNorm to fold is in training mode.
    """
    removed: dict[str, str] = {}
    while True:
        folds = _foldable_pairs(graph)
        if not folds:
            break
        replaced = {i: new for i, _, new in folds}
        dropped = {j for _, j, _ in folds}
        for i, j, _ in folds:
            for part in graph.nodes[j].layers():
                removed[part.name] = f"folded into {graph.nodes[i].name!r}"
        graph = graph.replace([replaced.get(k, n) for k, n in enumerate(graph.nodes) if k not in dropped])
    return graph.replace(graph.nodes, removed) if removed else graph


def _foldable_pairs(graph: Graph) -> list[tuple[int, int, Node]]:
    """Every (producer, follower, folded producer) of the graph that can fold now, each node in
    one pair at most (a chain Convolution -> BatchNorm -> Scale folds over two rounds)."""
    pairs: list[tuple[int, int, Node]] = []
    used: set[int] = set()
    for i, node in enumerate(graph.nodes):
        channels = _output_channels(node)
        if i in used or channels is None or len(node.tops) != 1 or graph.is_output(i, 0):
            continue
        readers = graph.consumers(i, 0)
        if len(readers) != 1:
            continue
        j, _ = readers[0]
        follower = graph.nodes[j]
        if j in used or len(follower.bottoms) != 1 or len(follower.tops) != 1:
            continue
        try:
            affine = _affine(follower.module, channels, follower.name)
        except CaffeNormError as err:
            raise err.at(follower.layers()[0].location) from None
        if affine is None:
            continue
        a, c = affine
        if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(c).all())) or math.prod(a.shape) != channels:
            continue
        new = node.replace(module=_fold_into(node.module, a, c), tops=follower.tops, top_shapes=follower.top_shapes)
        pairs.append((i, j, new))
        used.update((i, j))
    return pairs


# -- cutting --------------------------------------------------------------------------------------


def cut(graph: Graph, outputs: Sequence[str]) -> Graph:
    """Keep the layers that compute the blobs ``outputs`` (their last values) and make those the
    net's outputs; the other layers (and inputs nothing needs) are removed.

    Raises :class:`~caffenorm.NetDefinitionError` for a name that is not a blob of the net.
    """
    wanted = list(dict.fromkeys(outputs))
    if not wanted:
        raise NetDefinitionError("outputs=[] keeps nothing; name at least one blob")
    unknown = [name for name in wanted if name not in graph.shapes]
    if unknown:
        raise NetDefinitionError(
            f"outputs={unknown} are not blobs of this net; its blobs are: {', '.join(graph.shapes)}",
            location=Location(graph.source),
        )
    needed: set[int] = set()
    stack = [graph.last_write(name)[0] for name in wanted]
    while stack:
        i = stack.pop()
        if i in needed:
            continue
        needed.add(i)
        stack.extend(graph.producer(i, b)[0] for b in range(len(graph.nodes[i].bottoms)))
    kept = [node for i, node in enumerate(graph.nodes) if i in needed]
    removed = {
        part.name: f"cut: not needed for outputs {wanted}"
        for i, node in enumerate(graph.nodes)
        if i not in needed
        for part in node.layers()
    }
    return graph.replace(kept, removed, output_names=tuple(wanted))
