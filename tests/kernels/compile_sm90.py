"""Compile every caffenorm Triton kernel ahead of time for sm_90 (H100/H200), without a GPU.

Run as a script (``python tests/kernels/compile_sm90.py``) in a process where triton was not
imported in interpreter mode.  The launch functions run on meta tensors of real model shapes with
the kernel launch replaced by a recorder, so every kernel is specialised exactly as it would be on
a GPU (dtypes, block sizes, constexpr flags); each specialisation is then compiled by Triton's own
pipeline down to a cubin (ptxas ships with triton).  This catches what the interpreter accepts but
the compiler rejects.  Prints one line per kernel and exits non-zero on the first failure.
"""

from __future__ import annotations

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction

from caffenorm.kernels import batch_norm_triton, lrn_triton, normalize_triton

EXPECTED = {
    "_across_fwd_kernel",
    "_across_bwd_kernel",
    "_within_fwd_kernel",
    "_within_bwd_kernel",
    "_pos_fwd_kernel",
    "_pos_bwd_kernel",
    "_rows_kernel",
    "_sample_y_kernel",
    "_sample_dx_kernel",
    "_stats_kernel",
    "_apply_kernel",
    "_grad_sums_kernel",
    "_dx_kernel",
}
_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


def _record_launches() -> list[tuple[JITFunction, tuple, dict]]:
    launches: list[tuple[JITFunction, tuple, dict]] = []
    JITFunction.run = lambda self, *a, grid, warmup, **kw: launches.append((self, a, kw))  # type: ignore[method-assign]

    def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device="meta")

    for dtype in (torch.float32, torch.bfloat16):
        x = meta(16, 96, 55, 55, dtype=dtype)
        for region, beta in ((0, 0.75), (0, 0.6), (0, 2.0), (1, 0.75), (1, 0.6)):
            lrn_triton.lrn_forward(x, 5, 1e-4, beta, 2.0, region)
            lrn_triton.lrn_backward(x, x, x, meta(*x.shape), 5, 1e-4, beta, region)
        x = meta(16, 512, 38, 38, dtype=dtype)
        for across in (False, True):
            for scale in (meta(512), meta()):
                normalize_triton.normalize_forward(x, scale, across, 1e-10)
                norm = meta(16, 1, 1 if across else 38 * 38)
                for caffe in (False, True):
                    normalize_triton.normalize_backward(x, x, scale, norm, across, caffe, True, True)
                normalize_triton.normalize_backward(x, x, scale, norm, across, False, False, True)
        # BatchNorm: the launches happen inside an autograd.Function; run forward and backward.
        x = meta(32, 256, 56, 56, dtype=dtype).requires_grad_(True)
        for train in (True, False):
            for affine in (True, False):
                w = meta(256).requires_grad_(True) if affine else None
                b = meta(256).requires_grad_(True) if affine else None
                blobs = (meta(256), meta(256), meta(1))
                y = batch_norm_triton.batch_norm(x, *blobs, not train, 0.999, 1e-5, w, b, None)
                torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], torch.empty_like(y))
        with torch.no_grad():  # inference: one kernel reading the blobs
            for affine in (True, False):
                w, b = (meta(256, dtype=dtype), meta(256, dtype=dtype)) if affine else (None, None)
                batch_norm_triton.batch_norm(x, meta(256), meta(256), meta(1), True, 0.999, 1e-5, w, b, None)
    return launches


def main() -> int:
    from triton.backends import backends

    if "nvidia" not in backends:
        print("SKIP: this triton has no NVIDIA backend")
        return 0
    seen: set[tuple] = set()
    for fn, args, consts in _record_launches():
        signature = {
            name: _TYPES[v.dtype] if isinstance(v, torch.Tensor) else ("i32" if isinstance(v, int) else "fp32")
            for name, v in zip(fn.arg_names, args)
        }
        signature.update(dict.fromkeys(consts, "constexpr"))
        key = (fn.__name__, tuple(signature.values()), tuple(consts.items()))
        if key in seen:
            continue
        seen.add(key)
        src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=consts)
        try:
            cubin = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["cubin"]
        except Exception as exc:  # noqa: BLE001 (report which kernel and specialisation failed)
            print(f"FAIL {fn.__name__} {consts}: {exc}")
            return 1
        print(f"ok {fn.__name__} {consts} cubin {len(cubin)} bytes")
    names = {key[0] for key in seen}
    if names != EXPECTED:
        print(f"FAIL: compiled {sorted(names)}, expected {sorted(EXPECTED)}")
        return 1
    print(f"{len(seen)} kernel specialisations compiled for sm_90")
    return 0


if __name__ == "__main__":
    sys.exit(main())
