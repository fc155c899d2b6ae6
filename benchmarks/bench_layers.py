"""Time caffenorm's layers against what people use today, side by side in one process.

    python benchmarks/bench_layers.py            # full shapes from the README table
    python benchmarks/bench_layers.py --quick    # small shapes, a smoke run

Each case runs forward+backward on CPU in float32, alternating the two sides, and reports the
median and the best of the repeats and the ratios (peer time / caffenorm time, so > 1 means
caffenorm is faster).  On a shared 2-core machine both move a lot from run to run: the peers
allocate more full-size temporaries, whose page faults are what varies most.  Memory is what autograd keeps for backward, measured with saved-tensor hooks (unique
storages), so it does not depend on the allocator.
"""

from __future__ import annotations

import argparse
import time
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import caffenorm


class MMDetL2Norm(nn.Module):
    """mmdetection's SSD ``L2Norm`` (mmdet/models/necks/ssd_neck.py), rewritten from its formula:
    ``weight * x / (sqrt(sum_c x^2) + eps)``, computed in float32."""

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), scale))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_float = x.float()
        norm = x_float.pow(2).sum(1, keepdim=True).sqrt() + self.eps
        return (self.weight[None, :, None, None].float().expand_as(x_float) * x_float / norm).type_as(x)


@dataclass
class Case:
    name: str
    shape: tuple[int, ...]
    ours: nn.Module
    peer: nn.Module
    peer_name: str
    target: str


def _cases(quick: bool) -> list[Case]:
    lrn_shape = (2, 96, 27, 27) if quick else (16, 96, 55, 55)
    norm_shape = (2, 512, 19, 19) if quick else (16, 512, 38, 38)
    bn_shape = (2, 256, 28, 28) if quick else (16, 256, 56, 56)
    lrn_params = {"alpha": 1e-4, "beta": 0.75, "k": 2.0}
    torch_lrn = nn.LocalResponseNorm(5, **lrn_params)
    channels = bn_shape[1]
    return [
        Case("LRN ACROSS_CHANNELS", lrn_shape, caffenorm.LRN(5, **lrn_params), torch_lrn,
             "nn.LocalResponseNorm", ">= 5x"),
        Case("LRN WITHIN_CHANNEL", lrn_shape, caffenorm.LRN(5, norm_region="WITHIN_CHANNEL", **lrn_params),
             torch_lrn, "nn.LocalResponseNorm (ACROSS)", ">= 2x"),
        Case("Normalize (per position, per-channel scale)", norm_shape,
             caffenorm.Normalize(norm_shape[1], across_spatial=False, channel_shared=False, scale=20.0),
             MMDetL2Norm(norm_shape[1]), "mmdet L2Norm", ">= 2x"),
        Case("BatchNormScale (fused BatchNorm + Scale(bias)), train", bn_shape,
             caffenorm.BatchNormScale(caffenorm.BatchNorm(channels), caffenorm.Scale(channels, bias_term=True)),
             nn.BatchNorm2d(channels, affine=True), "nn.BatchNorm2d(affine)", ">= 0.83x (within 1.2x)"),
        Case("BatchNorm -> Scale(bias) as two modules, train", bn_shape,
             nn.Sequential(caffenorm.BatchNorm(channels), caffenorm.Scale(channels, bias_term=True)),
             nn.BatchNorm2d(channels, affine=True), "nn.BatchNorm2d(affine)", "(reported)"),
    ]


def _step(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> None:
    module(x).backward(g)


def _time(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward beyond the input and the parameters (unique storages)."""
    storages: dict[int, int] = {}
    skip = {x.untyped_storage().data_ptr()} | {p.untyped_storage().data_ptr() for p in module.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(storages.values())


def run(quick: bool = False, repeats: int = 21) -> list[dict[str, object]]:
    torch.manual_seed(0)
    rows = []
    for case in _cases(quick):
        x = torch.randn(case.shape, requires_grad=True)
        g = torch.randn(case.shape)
        for module in (case.ours, case.peer):  # warm up both (allocator, thread pool)
            _step(module, x, g)
            _step(module, x, g)
        ours_t, peer_t = [], []
        for _ in range(repeats):
            ours_t.append(_time(lambda: _step(case.ours, x, g)))
            peer_t.append(_time(lambda: _step(case.peer, x, g)))
        ours_ms, peer_ms = statistics.median(ours_t) * 1e3, statistics.median(peer_t) * 1e3
        ours_best, peer_best = min(ours_t) * 1e3, min(peer_t) * 1e3
        rows.append({
            "case": case.name,
            "shape": "x".join(map(str, case.shape)),
            "caffenorm_ms": ours_ms,
            "peer": case.peer_name,
            "peer_ms": peer_ms,
            "speedup": peer_ms / ours_ms,
            "speedup_best": peer_best / ours_best,
            "target": case.target,
            "caffenorm_saved_mb": _saved_bytes(case.ours, x) / 2**20,
            "peer_saved_mb": _saved_bytes(case.peer, x) / 2**20,
        })
    return rows


def _markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| case (fwd+bwd, float32, CPU) | shape | caffenorm ms (median) | peer | peer ms (median) "
        "| speed-up (median / best) | target | saved for backward, caffenorm / peer (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['shape']} | {r['caffenorm_ms']:.1f} | {r['peer']} | {r['peer_ms']:.1f} "
            f"| {r['speedup']:.2f}x / {r['speedup_best']:.2f}x | {r['target']} | {r['caffenorm_saved_mb']:.0f} / {r['peer_saved_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke run, not for the README)")
    parser.add_argument("--repeats", type=int, default=21, help="timed repeats per side")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, caffenorm {caffenorm.__version__}")
    print(_markdown(run(args.quick, args.repeats)))


if __name__ == "__main__":
    main()
