"""One table of comparison tolerances per dtype; tests compare against the float64 oracle.

float32 values are compared with a relative tolerance scaled by the magnitude of the data (the
oracle is exact; the float32 result carries a few ulp of rounding per operation).
"""

from __future__ import annotations

import numpy as np
import torch

TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-6),
    torch.float16: (2e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
}


def assert_matches(actual: torch.Tensor, expected: np.ndarray, dtype: torch.dtype | None = None, scale: float = 1.0) -> None:
    """Compare a tensor with an oracle array using the table entry for ``dtype`` (default: the tensor's).

    ``scale`` widens the absolute tolerance for data whose natural magnitude is not 1.
    """
    rtol, atol = TOLERANCES[dtype or actual.dtype]
    got = actual.detach().cpu().double().numpy()
    np.testing.assert_allclose(got, np.asarray(expected, dtype=np.float64), rtol=rtol, atol=atol * scale)
