"""The ``caffenorm`` command: ``info``, ``run`` (optionally ``--compare opencv``), ``convert``,
``train`` (Caffe's ``caffe train``, from arrays) and ``layers``.

Without a model, ``info`` and ``run`` use the example model shipped inside the package.  Errors
print as one line (``--debug`` shows the traceback); the exit code is 1 for a bad model or input
and 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main"]


def example_model() -> tuple[Path, Path]:
    """The bundled example: a small net with LRN both ways, BatchNorm+Scale and Normalize."""
    root = resources.files("caffenorm") / "data"
    return Path(str(root / "example.prototxt")), Path(str(root / "example.caffemodel"))


def _model_args(args: argparse.Namespace) -> tuple[Path, Path | None]:
    if args.prototxt is None:
        proto, weights = example_model()
        print(f"(no model given: using the bundled example {proto.name} + {weights.name})")
        return proto, weights
    return Path(args.prototxt), None if args.caffemodel is None else Path(args.caffemodel)


class UsageError(Exception):
    """A bad command line: reported like argparse's own errors, exit code 2."""


def _input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """argparse type of ``--input-shape NAME=N,C,H,W``."""
    name, _, dims = text.partition("=")
    try:
        return name, tuple(int(d) for d in dims.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=N,C,H,W, got {text!r}") from None


def _floats(text: str) -> list[float]:
    """argparse type of a comma-separated list of numbers."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _progress() -> Any:
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return lambda items: tqdm(items, desc="loading weights", unit="layer", leave=False)


def _load(args: argparse.Namespace, proto: Path, weights: Path | None, **options: Any) -> Any:
    from caffenorm.caffe.net import load

    return load(
        proto, weights, args.phase, input_shapes=dict(args.input_shape), strict=not args.allow_missing,
        progress=_progress(), **options,
    )


def _shape_text(shape: Sequence[int | None] | None) -> str:
    """``1x3x300x300``; ``?`` for what is only known at run time (DetectionOutput's rows)."""
    if shape is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in shape)


def _count(blobs: Sequence[Any]) -> int:
    return sum(int(b.numel()) for b in blobs)


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    from caffenorm.caffe.layers import supported_layers
    from caffenorm.caffe.net import read_net

    proto, weights = _model_args(args)
    _, specs = read_net(proto, args.phase)
    supported = set(supported_layers())
    unsupported = [s for s in specs if s.type not in supported]
    if unsupported:
        rows = [[str(i), s.name, s.type, f"{','.join(s.bottoms)} -> {','.join(s.tops)}",
                 "yes" if s.type in supported else "NO"] for i, s in enumerate(specs)]
        print(_table(rows, ["#", "name", "type", "bottoms -> tops", "supported"]))
        print(f"\n{len(unsupported)} unsupported layer(s):")
        for s in unsupported:
            print(f"  {s.where()}")
        return 1
    net = _load(args, proto, weights)
    rows = []
    for i, spec in enumerate(net.layer_specs):
        shapes = ", ".join(_shape_text(net.blob_shapes.get(t)) for t in spec.tops)
        params = _count(net.layer(spec.name).caffe_blobs())
        rows.append([str(i), spec.name, spec.type, f"{','.join(spec.bottoms)} -> {','.join(spec.tops)}", shapes,
                     f"{params:,}" if params else ""])
    print(_table(rows, ["#", "name", "type", "bottoms -> tops", "output shape", "params"]))
    total = sum(_count(b) for b in net.params.values())
    print(f"\n{len(rows)} layers, {total:,} parameters; inputs {net.inputs}, outputs {net.outputs}; phase {net.phase}")
    if net.unused_weights:
        print(f"caffemodel layers matching no layer: {', '.join(net.unused_weights)}")
    return 0


def _read_input(path: Path, shape: tuple[int, ...] | None, mean: Sequence[float], scale: float) -> np.ndarray:
    from caffenorm.errors import InputShapeError, ModelFileError
    from caffenorm.transform import Transform, load_image, transform_image

    if not path.exists():
        raise ModelFileError(f"{path}: no such input file")
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
            return np.asarray(array, dtype=np.float32)
        except (ValueError, OSError, TypeError) as err:
            raise ModelFileError(f"{path}: not a numeric .npy array: {err}") from None
    if shape is None or len(shape) != 4:
        raise InputShapeError(f"{path}: the net's input shape {shape} is not (N, C, H, W); give a .npy instead")
    # As Caffe's tools (ReadImageToCVMat, cpp_classification): BGR uint8, or gray for a 1-channel net;
    # resized to the input's H x W with INTER_LINEAR, then (pixel - mean) * scale.
    image = load_image(path, color=shape[1] != 1)
    transform = Transform(size=(shape[2], shape[3]), mean=tuple(mean), scale=scale)
    return transform_image(transform, image)[None]


def _describe(name: str, value: np.ndarray, top: int) -> str:
    head = f"{name}: shape {tuple(value.shape)}"
    if value.ndim >= 2 and value.size and value.reshape(value.shape[0], -1).shape[1] <= 10000 and value.shape[0] <= 8 \
            and all(d == 1 for d in value.shape[2:]):
        rows = value.reshape(value.shape[0], -1)
        parts = []
        for i, row in enumerate(rows):
            best = np.argsort(-row, kind="stable")[:top]
            parts.append(f"  sample {i}: " + ", ".join(f"[{j}] {row[j]:.6g}" for j in best))
        return head + "\n" + "\n".join(parts)
    flat = value.ravel()
    return (f"{head}, min {flat.min():.6g}, max {flat.max():.6g}, mean {flat.mean():.6g}; "
            f"first values {np.array2string(flat[:6], precision=5)}")


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    proto, weights = _model_args(args)
    if args.compare == "opencv" and weights is None:
        raise UsageError("--compare opencv needs a caffemodel")
    net = _load(args, proto, weights)
    if weights is None:
        print("(no caffemodel: weights come from the prototxt's fillers)")
    inputs = {}
    rng = np.random.default_rng(args.seed)
    for name in net.inputs:
        shape = net.input_shapes[name]
        if args.input and name == net.inputs[0]:
            inputs[name] = _read_input(Path(args.input), shape, args.mean, args.scale)
        elif shape is None:
            raise UsageError(f"input {name!r} has no declared shape; pass --input-shape {name}=N,C,H,W")
        else:
            inputs[name] = rng.standard_normal(shape).astype(np.float32)
    for name, value in inputs.items():
        print(f"input {name}: shape {value.shape}" + ("" if args.input else f" (random, seed {args.seed})"))
    with torch.no_grad():
        outputs = net(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    for name, value in outputs.items():
        print(_describe(name, value.detach().cpu().numpy(), args.top))
    if args.compare == "opencv":
        return _compare(net, proto, weights, inputs)
    return 0


def _compare(net: Any, proto: Path, weights: Path, inputs: dict[str, np.ndarray]) -> int:
    from caffenorm.caffe.compare import compare_with_opencv

    rows = compare_with_opencv(net, proto, weights, inputs)
    table = [[r.name, r.type, "x".join(map(str, r.shape)), "-" if r.max_diff is None else f"{r.max_diff:.3g}",
              f"{r.scale:.3g}", "DIVERGES" if r.diverges() else ("-" if r.max_diff is None else "ok"), r.note]
             for r in rows]
    print("\ncaffenorm vs OpenCV dnn, layer by layer (max |difference|, max |value|):")
    print(_table(table, ["layer", "type", "shape", "max diff", "max value", "status", "note"]))
    first = next((r for r in rows if r.diverges()), None)
    if first is None:
        print("\nno layer diverges (rtol 1e-4, atol 1e-5)")
    else:
        why = f": {first.note}" if first.note else ""
        print(f"\nfirst blob that diverges: {first.name!r} ({first.type}), max difference {first.max_diff:.3g}{why}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Export the model to ONNX or ncnn; the export checks itself in its runtime and the table of
    that check is printed.  Exit 1 when it fails (the error names the first diverging blob)."""
    from caffenorm import export

    proto, weights = _model_args(args)
    if weights is None and args.prototxt is not None:
        print("(no caffemodel: weights come from the prototxt's fillers)")
    outputs = [name for name in (args.outputs or "").split(",") if name] or None
    net = _load(args, proto, weights, fold=args.fold, outputs=outputs)
    out = Path(args.output) if args.output else Path(proto.name).with_suffix(f".{args.to}")
    if args.to == "onnx":
        report = export.to_onnx(net, out, verify=not args.no_verify)
    else:
        param = out if out.suffix == ".param" else out.with_suffix(".param")
        report = export.to_ncnn(net, param, param.with_suffix(".bin"), verify=not args.no_verify)
    print(f"wrote {', '.join(report.files)}")
    if report.checks or report.notes:
        print(report.table())
    return 0 if report.ok else 1



# -- train ----------------------------------------------------------------------------------------

# Caffe's data layers: the field holding each one's batch size and its data source.
_DATA_LAYERS: dict[str, tuple[str, str]] = {
    "Data": ("data_param.batch_size", "data_param.source"),
    "AnnotatedData": ("data_param.batch_size", "data_param.source"),
    "ImageData": ("image_data_param.batch_size", "image_data_param.source"),
    "HDF5Data": ("hdf5_data_param.batch_size", "hdf5_data_param.source"),
    "WindowData": ("window_data_param.batch_size", "window_data_param.source"),
    "VideoData": ("data_param.batch_size", "video_data_param.video_file"),
    "MemoryData": ("memory_data_param.batch_size", ""),
    "Input": ("", ""),
}


def _field(message: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        message = getattr(message, part)
    return message


def _data_arg(text: str) -> tuple[str | None, str]:
    """argparse type of ``--data [NAME=]FILE``."""
    name, sep, path = text.partition("=")
    if not sep:
        return None, text
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.npz or FILE.npz, got {text!r}")
    return name, path


def _read_arrays(entries: Sequence[tuple[str | None, str]], option: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """``--data`` entries -> {input name: array}; and the files that gave whole .npz archives."""
    from caffenorm.errors import ModelFileError

    arrays: dict[str, np.ndarray] = {}
    archives: list[str] = []
    for name, path in entries:
        file = Path(path)
        if not file.is_file():
            raise ModelFileError(f"{option} {path}: no such file")
        try:
            loaded = np.load(file, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ModelFileError(f"{option} {path}: not a .npz/.npy of numbers: {err}") from None
        if isinstance(loaded, np.ndarray):
            if name is None:
                raise UsageError(f"{option} {path}: a .npy holds one array; name its input: {option} NAME={path}")
            arrays[name] = loaded
            continue
        with loaded:
            keys = list(loaded.files)
            if name is None:
                archives.append(path)
                for key in keys:
                    arrays[key] = loaded[key]
            elif name in keys or len(keys) == 1:
                arrays[name] = loaded[name if name in keys else keys[0]]
            else:
                raise ModelFileError(f"{option} {name}={path}: the archive holds {keys}, none named {name!r}; "
                                     "give an archive with one array or one named after the input")
    for name, array in arrays.items():
        if array.ndim == 0 or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise ModelFileError(f"{option} {name}: expected real numbers with a leading sample axis, got "
                                 f"{array.dtype} of shape {array.shape}")
    return arrays, archives


class _ArrayFeed:
    """A net's inputs from arrays: batches of the data layers' declared batch size, cycling over the
    samples (sample ``i`` of batch ``k`` is ``(k * batch + i) % samples``, as Caffe's DB cursor
    wraps), each data layer's ``transform_param`` applied to its first top (Caffe transforms the
    images it reads; TRAIN crops and mirrors draw from a generator seeded by ``random_seed``)."""

    def __init__(self, label: str, specs: Sequence[Any], arrays: Mapping[str, np.ndarray], option: str,
                 batch_size: int | None, transform: bool, seed: int) -> None:
        from caffenorm.caffe.transform_param import transform_from_param
        from caffenorm.errors import InputShapeError, NetDefinitionError

        self.label = label
        self.inputs: list[str] = []
        self.batch: dict[str, int] = {}
        self.transforms: dict[str, Any] = {}
        for spec in specs:
            if spec.type not in _DATA_LAYERS:
                continue
            size_field, source_field = _DATA_LAYERS[spec.type]
            missing = [top for top in spec.tops if top not in arrays]
            if missing:
                source = _field(spec.param, source_field) if source_field else ""
                where = f" reads them from {source!r}" if source else ""
                give = " ".join(f"{option} {top}=FILE.npz" for top in missing)
                skip = " (or --no-test)" if option == "--test-data" else ""
                raise NetDefinitionError(
                    f"{label}: no array for {', '.join(map(repr, missing))}; the {spec.type} layer{where}, and "
                    f"caffenorm trains from arrays: give {give} (a leading sample axis){skip}", location=spec.location)
            declared = int(_field(spec.param, size_field)) if size_field else 0
            if spec.type == "Input" and spec.param.input_param.shape:
                declared = int(spec.param.input_param.shape[0].dim[0]) if spec.param.input_param.shape[0].dim else 0
            size = batch_size or declared
            if size <= 0:
                raise NetDefinitionError(f"{label}: the {spec.type} layer declares no batch size; pass --batch-size N",
                                         location=spec.location)
            for top in spec.tops:
                self.inputs.append(top)
                self.batch[top] = size
            if transform and spec.type != "Input" and spec.param.HasField("transform_param"):
                phase = "train" if label == "train net" else "test"
                self.transforms[spec.tops[0]] = transform_from_param(spec.param.transform_param, spec.source,
                                                                     phase=phase)
        self.arrays = {name: arrays[name] for name in self.inputs}
        counts = {name: len(a) for name, a in self.arrays.items()}
        if len(set(counts.values())) > 1:
            raise InputShapeError(f"{label}: the arrays hold different numbers of samples: {counts}")
        self.samples = next(iter(counts.values()), 0)
        if self.inputs and self.samples == 0:
            raise InputShapeError(f"{label}: the arrays hold no samples")
        self.rng = np.random.default_rng(seed)
        self.step = 0

    def _take(self, name: str, k: int) -> np.ndarray:
        size = self.batch[name]
        index = (k * size + np.arange(size)) % self.samples
        batch = self.arrays[name][index]
        transform = self.transforms.get(name)
        if transform is not None:
            from caffenorm.transform import transform_batch

            hwc = np.moveaxis(batch, 1, -1) if batch.ndim == 4 else batch  # Caffe datums are C x H x W
            batch = transform_batch(transform, hwc, rng=self.rng if transform.needs_rng() else None)
        return np.ascontiguousarray(batch, dtype=np.float32)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The inputs' shapes (of a first batch, transformed: a crop changes it)."""
        probe = _ArrayFeed.__new__(_ArrayFeed)
        probe.__dict__.update(self.__dict__, rng=np.random.default_rng(0))
        return {name: tuple(probe._take(name, 0).shape) for name in self.inputs}

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> dict[str, Any]:
        import torch

        k, self.step = self.step, self.step + 1
        return {name: torch.from_numpy(self._take(name, k)) for name in self.inputs}


def cmd_train(args: argparse.Namespace) -> int:
    """Caffe's ``caffe train --solver S [--weights W | --snapshot S]``, fed from arrays."""
    import signal
    import threading

    from caffenorm.caffe.solver import Solver, read_solver, solver_nets

    if args.weights and args.snapshot:
        raise UsageError("give --weights to finetune or --snapshot to resume, not both (as caffe train)")
    param = read_solver(args.solver)
    nets = solver_nets(args.solver)
    train_arrays, _ = _read_arrays(args.data, "--data")
    test_arrays, _ = _read_arrays(args.test_data, "--test-data")
    seed = int(param.random_seed) if param.random_seed >= 0 else 0
    transform = not args.no_transform
    label, _, train_specs = nets[0]
    feed = _ArrayFeed(label, train_specs, train_arrays, "--data", args.batch_size, transform, seed)
    testing = not args.no_test and param.test_interval > 0 and len(nets) > 1
    test_feeds = [
        _ArrayFeed(label, specs, test_arrays, "--test-data", args.batch_size, transform, seed + 1 + i)
        for i, (label, _, specs) in enumerate(nets[1:])
    ] if testing else []
    bar = _train_progress(param.max_iter)
    log = bar.write if bar is not None else print
    test_shapes = [f.shapes() for f in test_feeds] if testing else None
    solver = Solver(
        args.solver, weights=args.weights, resume=args.snapshot, input_shapes=feed.shapes(),
        test_input_shapes=test_shapes, caffe_backward=args.caffe_backward, device=args.device, log=log,
    )
    # A resumed run continues the cycle over the arrays where the interrupted one was (Caffe's data
    # cursor restarts instead; the weights would then depend on where training stopped).
    feed.step = solver.iter * solver.param.iter_size
    if bar is not None:
        bar.n = solver.iter
        bar.refresh()

    def on_sigint(signum: int, frame: Any) -> None:
        # Caffe's --sigint_effect snapshot, then stop; a second Ctrl-C interrupts at once.
        solver.request_stop(snapshot=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        log(f"caffenorm: interrupted: snapshotting at iteration {solver.iter + 1} and stopping")

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    try:
        solver.solve(feed, test_data=test_feeds if testing else None, test=testing,
                     callback=(lambda s: bar.update(s.iter - bar.n)) if bar is not None else None)
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
        if bar is not None:
            bar.close()
    return 0


def _train_progress(total: int) -> Any:
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="training", unit="iter", dynamic_ncols=True)


def cmd_layers(args: argparse.Namespace) -> int:
    from caffenorm.caffe.layers import supported_layers

    print("\n".join(supported_layers()))
    return 0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    parser = argparse.ArgumentParser(prog="caffenorm", description="Run Caffe models in PyTorch, exactly.", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    def model_command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, parents=[common])
        p.add_argument("prototxt", nargs="?", help="net definition (default: the bundled example)")
        p.add_argument("caffemodel", nargs="?", help="trained weights")
        p.add_argument("--phase", default="test", choices=["test", "train"])
        p.add_argument("--input-shape", action="append", default=[], metavar="NAME=N,C,H,W", type=_input_shape,
                       help="shape of an input the prototxt does not declare (repeatable)")
        p.add_argument("--allow-missing", action="store_true",
                       help="layers without weights in the caffemodel keep their fillers instead of failing")
        return p

    info = model_command("info", "table of layers, shapes and parameter counts")
    info.set_defaults(func=cmd_info)
    run = model_command("run", "run the model and print its outputs")
    run.add_argument("--input", help="an image (read as BGR, resized to the input) or a .npy array")
    run.add_argument("--mean", type=_floats, default=[],
                     help="per-channel mean to subtract from an image, e.g. 104,117,123")
    run.add_argument("--scale", type=float, default=1.0, help="multiply the image by this after the mean")
    run.add_argument("--seed", type=int, default=0, help="seed of the random input when no --input is given")
    run.add_argument("--top", type=int, default=5, help="classes to show per sample")
    run.add_argument("--compare", choices=["opencv"], help="also run OpenCV dnn and compare layer by layer")
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
    train.add_argument("--solver", required=True, help="the solver prototxt (SolverParameter text)")
    start = train.add_mutually_exclusive_group()
    start.add_argument("--weights", help="caffemodel(s) to finetune from (comma-separated)")
    start.add_argument("--snapshot", help="a .solverstate to resume from")
    train.add_argument("--data", action="append", default=[], type=_data_arg, metavar="[NAME=]FILE.npz",
                       help="the train net's input NAME from an .npz/.npy with a leading sample axis (or every "
                            "array of an .npz named after an input); repeatable")
    train.add_argument("--test-data", action="append", default=[], type=_data_arg, metavar="[NAME=]FILE.npz",
                       help="the test nets' inputs, as --data")
    train.add_argument("--batch-size", type=int, help="override the data layers' batch size")
    train.add_argument("--no-test", action="store_true", help="do not run the test nets")
    train.add_argument("--no-transform", action="store_true",
                       help="feed the arrays as given instead of applying the data layers' transform_param")
    train.add_argument("--caffe-backward", action="store_true",
                       help="Normalize layers use Caffe's own (approximate) backward")
    train.add_argument("--device", help="where to train (e.g. cuda); default: the CPU")
    train.set_defaults(func=cmd_train)
    layers = sub.add_parser("layers", help="list the supported Caffe layer types", parents=[common])
    layers.set_defaults(func=cmd_layers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from caffenorm.errors import CaffeNormError

    parser = _parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)

    def show(message: Warning | str, *_: Any, **__: Any) -> None:
        print(f"caffenorm: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            return int(args.func(args))
    except UsageError as err:
        parser.print_usage(sys.stderr)
        print(f"caffenorm: error: {err}", file=sys.stderr)
        return 2
    except CaffeNormError as err:
        if debug:
            traceback.print_exc()
        print(f"caffenorm: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
