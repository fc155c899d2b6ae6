"""``caffenorm convert``: export to ONNX or ncnn, checked in that runtime."""

from __future__ import annotations

import argparse
from pathlib import Path

from caffenorm.cli._common import load_net, model_args, say

__all__ = ["cmd_convert"]


def cmd_convert(args: argparse.Namespace) -> int:
    """Export the model to ONNX or ncnn; the export checks itself in its runtime and the table of
    that check is printed.  Exit 1 when it fails (the error names the first diverging blob)."""
    from caffenorm import export

    proto, weights = model_args(args)
    if weights is None and args.prototxt is not None:
        say("(no caffemodel: weights come from the prototxt's fillers)")
    outputs = [name for name in (args.outputs or "").split(",") if name] or None
    net = load_net(args, proto, weights, fold=args.fold, outputs=outputs)
    out = Path(args.output) if args.output else Path(proto.name).with_suffix(f".{args.to}")
    if args.to == "onnx":
        report = export.to_onnx(net, out, verify=not args.no_verify)
    else:
        param = out if out.suffix == ".param" else out.with_suffix(".param")
        report = export.to_ncnn(net, param, param.with_suffix(".bin"), verify=not args.no_verify)
    say(f"wrote {', '.join(report.files)}")
    if report.checks or report.notes:
        say(report.table())
    return 0 if report.ok else 1
