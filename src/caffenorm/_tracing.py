"""Is this forward running eagerly, or being traced by one of torch's tracers?

Eager-only conveniences (``net.blobs``, cached BatchNorm statistics, error re-wrapping, switching
TF32 off around a call) must not run while a tracer records the computation: they would either
be baked into the traced program as constants or be invisible to it.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["is_fx_proxy", "is_tracing"]


def is_tracing() -> bool:
    """True under ``torch.jit.trace``, ``torch.compile``/dynamo and ``torch.export`` (strict or not)."""
    return bool(torch.jit.is_tracing() or torch.compiler.is_compiling())


def is_fx_proxy(value: Any) -> bool:
    """True for the placeholder values of ``torch.fx.symbolic_trace``."""
    return isinstance(value, torch.fx.Proxy)
