"""``caffenorm info``: the net's layers, shapes, learnable parameters and statistics."""

from __future__ import annotations

import argparse
from typing import Any

from torch import nn

from caffenorm.cli._common import load_net, model_args, say, shape_text, table
from caffenorm.errors import summarize

__all__ = ["cmd_info"]


def _counts(module: Any) -> tuple[int, int]:
    """(learnable parameters, statistics) of a layer: BatchNorm's mean/variance sums and scale
    factor are blobs Caffe accumulates, never trained by a solver, so they are not parameters."""
    learnable = statistics = 0
    for blob in module.caffe_blobs():
        if isinstance(blob, nn.Parameter):
            learnable += int(blob.numel())
        else:
            statistics += int(blob.numel())
    return learnable, statistics


def cmd_info(args: argparse.Namespace) -> int:
    from caffenorm.caffe.layers import supported_layers
    from caffenorm.caffe.net import read_net

    proto, weights = model_args(args)
    _, specs = read_net(proto, args.phase)
    supported = set(supported_layers())
    unsupported = [s for s in specs if s.type not in supported]
    if unsupported:
        rows = [[str(i), s.name, s.type, f"{','.join(s.bottoms)} -> {','.join(s.tops)}",
                 "yes" if s.type in supported else "NO"] for i, s in enumerate(specs)]
        say(table(rows, ["#", "name", "type", "bottoms -> tops", "supported"]))
        say(f"\n{len(unsupported)} unsupported layer(s):")
        for s in unsupported:
            say(f"  {s.where()}")
        return 1
    net = load_net(args, proto, weights)
    rows = []
    total = [0, 0]
    seen: set[int] = set()
    for i, spec in enumerate(net.layer_specs):
        shapes = ", ".join(shape_text(net.blob_shapes.get(t)) for t in spec.tops)
        module = net.layer(spec.name)
        learnable, statistics = _counts(module)
        for blob in module.caffe_blobs():  # a shared blob counts once in the totals
            if id(blob) not in seen:
                seen.add(id(blob))
                total[0 if isinstance(blob, nn.Parameter) else 1] += int(blob.numel())
        rows.append([str(i), spec.name, spec.type, f"{','.join(spec.bottoms)} -> {','.join(spec.tops)}", shapes,
                     f"{learnable:,}" if learnable else "", f"{statistics:,}" if statistics else ""])
    say(table(rows, ["#", "name", "type", "bottoms -> tops", "output shape", "params", "statistics"]))
    stats = f" + {total[1]:,} BatchNorm statistics" if total[1] else ""
    say(f"\n{len(rows)} layers, {total[0]:,} learnable parameters{stats}; inputs {net.inputs}, "
        f"outputs {net.outputs}; phase {net.phase}")
    if net.unused_weights:
        say(f"caffemodel layers matching no layer ({len(net.unused_weights)}): {summarize(map(repr, net.unused_weights))}")
    return 0
