"""The ``caffenorm`` command: ``info``, ``run`` (optionally ``--compare opencv``), ``convert``,
``train`` (Caffe's ``caffe train``, from arrays) and ``layers``.

Without a model, ``info`` and ``run`` use the example model shipped inside the package.  Errors
print as one line (``--debug`` shows the traceback); the exit code is 1 for a bad model or input
and 2 for a bad command line.  Options are validated by argparse (types, choices, exclusive
groups); an option that does not apply to the model is an error or a one-line warning.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from caffenorm.cli._common import (
    UsageError,
    device,
    example_model,
    finite,
    floats,
    input_shape,
    positive_int,
    reserve_stdout,
)

__all__ = ["example_model", "main"]


def cmd_info(args: argparse.Namespace) -> int:
    from caffenorm.cli.info import cmd_info as run

    return run(args)


def cmd_run(args: argparse.Namespace) -> int:
    from caffenorm.cli.run import cmd_run as run

    return run(args)


def cmd_convert(args: argparse.Namespace) -> int:
    from caffenorm.cli.convert import cmd_convert as run

    return run(args)


def cmd_train(args: argparse.Namespace) -> int:
    from caffenorm.cli.train import cmd_train as run

    return run(args)


def cmd_layers(args: argparse.Namespace) -> int:
    from caffenorm.caffe.layers import supported_layers

    print("\n".join(supported_layers()))
    return 0


def _version() -> str:
    import platform

    import torch

    from caffenorm import __version__

    return f"caffenorm {__version__} (torch {torch.__version__}, Python {platform.python_version()})"


def _data_arg(text: str) -> tuple[str | None, str]:
    from caffenorm.cli.train import data_arg

    return data_arg(text)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    parser = argparse.ArgumentParser(prog="caffenorm", description="Run Caffe models in PyTorch, exactly.", parents=[common])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    def model_command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, parents=[common])
        p.set_defaults(usage=p.format_usage)
        p.add_argument("prototxt", nargs="?", help="net definition (default: the bundled example)")
        p.add_argument("caffemodel", nargs="?", help="trained weights")
        p.add_argument("--phase", default="test", choices=["test", "train"])
        p.add_argument("--input-shape", action="append", default=[], metavar="NAME=N,C,H,W", type=input_shape,
                       help="shape of an input (overrides the prototxt's; images are resized to its H x W)")
        p.add_argument("--allow-missing", action="store_true",
                       help="layers without weights in the caffemodel keep their fillers instead of failing")
        return p

    info = model_command("info", "table of layers, shapes, parameters and statistics")
    info.set_defaults(func=cmd_info)
    run = model_command("run", "run the model and print detections, top classes or output summaries")
    run.add_argument("-i", "--input", action="extend", nargs="+", default=[], metavar="FILE",
                     help="images (BGR, resized to the input; several or a glob make one batch) or .npy arrays "
                          "(stacked on the batch axis); default: a seeded random input")
    run.add_argument("--mean", type=floats, help="per-channel mean subtracted from images (BGR), e.g. 104,117,123")
    run.add_argument("--scale", type=finite, help="multiply images by this after the mean")
    run.add_argument("--seed", type=int, default=0, help="seed of the random input when no --input is given")
    run.add_argument("--top", type=positive_int, help="classes to show per image (default 5)")
    run.add_argument("--threshold", type=finite, help="lowest detection score shown (default 0.5)")
    run.add_argument("--labels", metavar="FILE",
                     help="class names: one per line in class order, or an SSD labelmap.prototxt")
    run.add_argument("--draw", metavar="OUT.png", help="write the image with the detections drawn")
    run.add_argument("--device", type=device, help="where to run: cpu (default), cuda, cuda:1, mps")
    run.add_argument("-o", "--output", metavar="FILE.npz|FILE.json",
                     help="save the output blobs (.npz) or the printed results (.json)")
    run.add_argument("--json", action="store_true", help="print the results as JSON on stdout (messages go to stderr)")
    run.add_argument("--compare", choices=["opencv"], help="also run OpenCV dnn and compare layer by layer")
    run.add_argument("--report", metavar="PARITY.html", help="with --compare: write the parity report as a web page")
    run.set_defaults(func=cmd_run)
    convert = model_command("convert", "export the model to ONNX or ncnn, checked in that runtime")
    convert.add_argument("--to", required=True, choices=["onnx", "ncnn"], help="the format to write")
    convert.add_argument("-o", "--output", help="the file to write (ncnn: NAME.param, with NAME.bin beside it)")
    convert.add_argument("--fold", action=argparse.BooleanOptionalAction, default=True,
                         help="fold BatchNorm/Scale/Bias into the convolutions first (default: yes)")
    convert.add_argument("--outputs", metavar="BLOB,BLOB,...",
                         help="export only what computes these blobs (e.g. an SSD before its DetectionOutput)")
    convert.add_argument("--no-verify", action="store_true", help="skip running the exported model in its runtime")
    convert.set_defaults(func=cmd_convert)
    train = sub.add_parser("train", help="train with a Caffe solver, from arrays (as caffe train)", parents=[common])
    train.set_defaults(usage=train.format_usage)
    train.add_argument("--solver", required=True, help="the solver prototxt (SolverParameter text)")
    start = train.add_mutually_exclusive_group()
    start.add_argument("--weights", help="caffemodel(s) to finetune from (comma-separated)")
    start.add_argument("--snapshot", help="a .solverstate to resume from")
    train.add_argument("--data", action="append", default=[], type=_data_arg, metavar="[NAME=]FILE.npz",
                       help="the train net's input NAME from an .npz/.npy with a leading sample axis (or every "
                            "array of an .npz named after an input); repeatable")
    train.add_argument("--test-data", action="append", default=[], type=_data_arg, metavar="[NAME=]FILE.npz",
                       help="the test nets' inputs, as --data")
    train.add_argument("--batch-size", type=positive_int, help="override the data layers' batch size")
    train.add_argument("--no-test", action="store_true", help="do not run the test nets")
    train.add_argument("--no-transform", action="store_true",
                       help="feed the arrays as given instead of applying the data layers' transform_param")
    train.add_argument("--caffe-backward", action="store_true",
                       help="Normalize layers use Caffe's own (approximate) backward")
    train.add_argument("--device", type=device, help="where to train (e.g. cuda); default: the CPU")
    train.set_defaults(func=cmd_train)
    layers = sub.add_parser("layers", help="list the supported Caffe layer types", parents=[common])
    layers.set_defaults(func=cmd_layers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from caffenorm.errors import CaffeNormError

    parser = _parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    reserve_stdout(bool(getattr(args, "json", False)))

    def show(message: Warning | str, *_: Any, **__: Any) -> None:
        print(f"caffenorm: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            return int(args.func(args))
    except UsageError as err:
        print(getattr(args, "usage", parser.format_usage)(), end="", file=sys.stderr)
        print(f"caffenorm: error: {err}", file=sys.stderr)
        return 2
    except CaffeNormError as err:
        if debug:
            traceback.print_exc()
        print(f"caffenorm: error: {err}", file=sys.stderr)
        return 1
    finally:
        reserve_stdout(False)


if __name__ == "__main__":
    sys.exit(main())
