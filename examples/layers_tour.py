"""A short tour of caffenorm's layers: each one run once, with what Caffe does that others don't.

    python examples/layers_tour.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import caffenorm


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6) * 3

    across = caffenorm.LRN(local_size=5, alpha=1e-2, beta=0.75, k=2.0)
    within = caffenorm.LRN(local_size=3, alpha=1e-2, beta=0.75, k=2.0, norm_region="WITHIN_CHANNEL")
    print(across)
    print(f"  y[0, :3, 0, 0] = {across(x)[0, :3, 0, 0].tolist()}")
    print(f"  equals torch.nn.LocalResponseNorm(5, k=2): {torch.allclose(across(x), F.local_response_norm(x, 5, 1e-2, 0.75, 2.0))}")
    print(within)
    k_ignored = torch.equal(within(x), caffenorm.LRN(3, 1e-2, 0.75, 100.0, "WITHIN_CHANNEL")(x))
    print(f"  k is ignored within a channel, as in Caffe: {k_ignored}")

    bn = caffenorm.BatchNorm(8)
    scale = caffenorm.Scale((8,), bias_term=True)
    print(bn, scale, sep="\n")
    bn.train()
    bn(x)
    mean_sum, var_sum, factor = bn.caffe_blobs()
    print(f"  after one training step: scale_factor = {factor.item():.3f}, mean_sum[:2] = {mean_sum[:2].tolist()}")
    bn.eval()
    print(f"  eval output mean/std: {bn(x).mean().item():+.4f} / {bn(x).std().item():.4f}")
    fresh = caffenorm.BatchNorm(8).eval()  # scale_factor 0: zero statistics, no NaN
    print(f"  scale_factor 0 gives x / sqrt(eps) (no NaN): {torch.allclose(fresh(x), x / 1e-5 ** 0.5)}")
    fused = caffenorm.BatchNormScale(bn, scale)
    print(f"  BatchNormScale equals BatchNorm then Scale: {torch.allclose(fused(x), scale(bn(x)))}")

    bias = caffenorm.Bias((6, 6), axis=2, num_axes=2)
    print(bias)
    print(f"  blob shapes: {[tuple(b.shape) for b in bias.caffe_blobs()]}")

    norm = caffenorm.Normalize(8, across_spatial=False, channel_shared=False, scale=20.0)
    print(norm)
    y = norm(x)
    print(f"  per-position L2 norm of y / 20: {(y[0, :, 0, 0].norm() / 20).item():.6f}")
    zeros = torch.zeros(1, 8, 2, 2)
    print(f"  a zero vector stays zero (eps inside the sqrt): {torch.equal(norm(zeros), zeros)}")

    loss = fused(within(across(x))).sum() + norm(x).sum() + bias(x).sum()
    loss.backward()
    print(f"  gradients reach every learned blob: {all(p.grad is not None for p in (scale.weight, norm.weight, bias.bias))}")


if __name__ == "__main__":
    main()
