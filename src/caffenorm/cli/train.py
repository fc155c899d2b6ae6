"""``caffenorm train``: Caffe's ``caffe train --solver S [--weights W | --snapshot S]``, fed from
arrays (``.npz``/``.npy``) until the data layers read their own sources."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from caffenorm.cli._common import UsageError

__all__ = ["cmd_train", "data_arg"]


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


def data_arg(text: str) -> tuple[str | None, str]:
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


