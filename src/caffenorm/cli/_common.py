"""What the commands share: the bundled example, argument types (validated by argparse, so a bad
value is a usage error naming the option), loading a net, tables, and where messages go."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "UsageError",
    "example_model",
    "load_net",
    "model_args",
    "say",
    "shape_text",
    "table",
]


class UsageError(Exception):
    """A bad command line: reported like argparse's own errors, exit code 2."""


# With --json, stdout carries the JSON document only; every human-readable line goes to stderr.
_quiet = {"stdout": False}


def say(*parts: Any) -> None:
    """Print a human-readable line (to stderr when stdout is reserved for ``--json``)."""
    print(*parts, file=sys.stderr if _quiet["stdout"] else sys.stdout)


def reserve_stdout(reserved: bool) -> None:
    _quiet["stdout"] = reserved


def example_model() -> tuple[Path, Path]:
    """The bundled example: a small net with LRN both ways, BatchNorm+Scale and Normalize."""
    root = resources.files("caffenorm") / "data"
    return Path(str(root / "example.prototxt")), Path(str(root / "example.caffemodel"))


def model_args(args: argparse.Namespace) -> tuple[Path, Path | None]:
    if args.prototxt is None:
        proto, weights = example_model()
        say(f"(no model given: using the bundled example {proto.name} + {weights.name})")
        return proto, weights
    return Path(args.prototxt), None if args.caffemodel is None else Path(args.caffemodel)


# -- argument types: argparse turns their ArgumentTypeError into "argument --x: message" ---------


def input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``--input-shape NAME=N,C,H,W``."""
    name, sep, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d <= 0 or d > 2**31 for d in shape):
        raise argparse.ArgumentTypeError(f"expected NAME=N,C,H,W with positive sizes, got {text!r}")
    return name, shape


def floats(text: str) -> list[float]:
    """A comma-separated list of finite numbers (``--mean 104,117,123``)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(abs(v) < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers, got {text!r}")
    return values


def finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not abs(value) < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def device(text: str) -> Any:
    """``--device cpu|cuda|cuda:1|mps``: a device this torch can use."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a device: {text!r}; e.g. cpu, cuda, cuda:1, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: this torch {torch.__version__} has no usable CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available in this torch")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: caffenorm runs on cpu, cuda or mps")
    return dev


# -- loading and printing -------------------------------------------------------------------------


def _progress() -> Any:
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return lambda items: tqdm(items, desc="loading weights", unit="layer", leave=False)


def load_net(args: argparse.Namespace, proto: Path, weights: Path | None, **options: Any) -> Any:
    from caffenorm.caffe.net import load

    return load(
        proto, weights, args.phase, input_shapes=dict(args.input_shape), strict=not args.allow_missing,
        progress=_progress(), **options,
    )


def shape_text(shape: Sequence[int | None] | None) -> str:
    """``1x3x300x300``; ``?`` for what is only known at run time (DetectionOutput's rows)."""
    if shape is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in shape)


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
