"""Every export checks itself: the exported model is run in its runtime on seeded inputs (two batch
sizes) and compared, blob by blob where names survive and on every output, with caffenorm's eager
:class:`~caffenorm.Net`.  The result is an :class:`ExportReport`; a mismatch beyond tolerance
raises :class:`~caffenorm.ExportError` naming the first diverging blob.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from caffenorm.errors import ExportError

__all__ = ["BlobCheck", "ExportReport", "compare_blobs", "example_inputs", "run_eager"]

# A runtime: input name -> array in, blob name -> array out (the blobs it can give back).
Runtime = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class BlobCheck:
    """One blob of one run: ``max_diff`` = max |exported - caffenorm|, ``scale`` = max |caffenorm|;
    ``ok`` when ``max_diff <= atol + rtol * scale``."""

    batch: int
    name: str
    shape: tuple[int, ...]
    max_diff: float
    scale: float
    ok: bool
    note: str = ""


@dataclass
class ExportReport:
    """What an export wrote and how its check went."""

    format: str
    files: tuple[str, ...]
    runtime: str
    rtol: float
    atol: float
    checks: list[BlobCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def first_failure(self) -> BlobCheck | None:
        return next((c for c in self.checks if not c.ok), None)

    def table(self) -> str:
        """The checks as a plain-text table (what ``caffenorm convert`` prints)."""
        header = ("batch", "blob", "shape", "max diff", "max value", "status")
        rows = [
            (
                str(c.batch),
                c.name,
                "x".join(map(str, c.shape)),
                f"{c.max_diff:.3g}",
                f"{c.scale:.3g}",
                ("ok" if c.ok else "DIVERGES") + (f" ({c.note})" if c.note else ""),
            )
            for c in self.checks
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), "  ".join("-" * w for w in widths)]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        verdict = "all blobs agree" if self.ok else f"first diverging blob: {self.first_failure().name!r}"  # type: ignore[union-attr]
        lines.append(
            f"{self.format} in {self.runtime}: {verdict} (tolerance {self.atol:g} + {self.rtol:g} x max |value|)"
        )
        return "\n".join(lines + self.notes)

    def raise_for_mismatch(self) -> None:
        failure = self.first_failure()
        if failure is not None:
            raise ExportError(
                f"the {self.format} model ({', '.join(self.files)}) disagrees with caffenorm in {self.runtime}: first "
                f"diverging blob {failure.name!r} at batch {failure.batch}, max difference {failure.max_diff:.3g} for "
                f"values up to {failure.scale:.3g}" + (f" ({failure.note})" if failure.note else "")
                + f"\n{self.table()}"
            )


def example_inputs(
    input_shapes: Mapping[str, Sequence[int | None] | None], batch: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded float32 inputs of the declared shapes with batch size ``batch`` (standard normal
    data; an input without a declared shape is an :class:`ExportError` naming it)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in input_shapes.items():
        if shape is None or None in shape:
            raise ExportError(f"input {name!r} has no declared shape; give one (input_shapes={{{name!r}: ...}})")
        dims = (batch, *shape[1:])
        out[name] = rng.standard_normal(dims).astype(np.float32)
    return out


def run_eager(net: Any, inputs: Mapping[str, np.ndarray], blobs: Sequence[str]) -> dict[str, np.ndarray]:
    """caffenorm's eager results for ``inputs``: the named blobs (last values) and the outputs.
    ``net.blobs`` is left as it was (the check is not the user's forward)."""
    kept = net.blobs
    try:
        with torch.no_grad():
            outputs = net(**{k: torch.from_numpy(v) for k, v in inputs.items()})
            values = {name: net.blobs[name] for name in blobs if name in net.blobs}
            values.update(outputs)
    finally:
        net.blobs = kept
    return {name: t.detach().float().cpu().numpy() for name, t in values.items()}


def compare_blobs(
    expected: Mapping[str, np.ndarray],
    got: Mapping[str, np.ndarray],
    names: Sequence[str],
    batch: int,
    rtol: float,
    atol: float,
    notes: Mapping[str, str] | None = None,
) -> list[BlobCheck]:
    """One :class:`BlobCheck` per name in ``names`` (in order) present on both sides; a shape or
    size difference is a failure with a note."""
    checks = []
    for name in names:
        if name not in expected or name not in got:
            continue
        want = np.asarray(expected[name], dtype=np.float64)
        have = np.asarray(got[name], dtype=np.float64)
        # NaN where both agree on it (Caffe's AVE pooling of an empty window) and infinities must
        # not set the scale: it is the largest finite magnitude.
        finite = np.abs(want[np.isfinite(want)])
        scale = float(finite.max()) if finite.size else 0.0
        note = (notes or {}).get(name, "")
        if have.size != want.size:
            checks.append(BlobCheck(batch, name, want.shape, float("inf"), scale, False,
                                    f"shape {have.shape}, caffenorm {want.shape}"))
            continue
        have = have.reshape(want.shape)
        same = (want == have) | (np.isnan(want) & np.isnan(have))  # equal infinities included
        with np.errstate(invalid="ignore"):
            diff = np.where(same, 0.0, np.abs(have - want))
        max_diff = float(np.nanmax(np.where(np.isnan(diff), np.inf, diff))) if diff.size else 0.0
        checks.append(BlobCheck(batch, name, want.shape, max_diff, scale, max_diff <= atol + rtol * scale, note))
    return checks
