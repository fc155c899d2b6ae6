"""The memory budget: a net (or an input) whose tensors would not fit in memory is refused with a
:class:`~caffenorm.errors.NetDefinitionError` *before* anything is allocated, instead of an
allocator failure, an out-of-memory kill or a machine that swaps for an hour.

The limit, in order of precedence:

* the ``limit`` argument (``caffenorm.load(..., memory_limit=...)``): a number of bytes, a size
  such as ``"8G"`` or ``"512M"``, or ``math.inf`` / ``"off"`` for no check;
* the environment variable ``CAFFENORM_MEMORY_LIMIT``, in the same forms (``8G``, ``off``);
* the memory available now: ``MemAvailable`` of ``/proc/meminfo`` (and the cgroup's remaining
  allowance where a container sets one), else ``os.sysconf`` (free pages); where none of these
  can be read there is no check.

:func:`check_allocation` is the one check; :class:`Budget` adds up a net's parameters and
activations while the builder builds it (shapes are inferred before tensors are allocated).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

from caffenorm.errors import Location, NetDefinitionError, format_count, format_shape

__all__ = ["ENV_VAR", "Budget", "MemoryLimit", "available_memory", "check_allocation", "format_bytes",
           "resolve_limit"]

ENV_VAR = "CAFFENORM_MEMORY_LIMIT"

# bytes (int or float), a size text ("8G", "512M", "off"), or None: the default (see the module).
MemoryLimit = int | float | str | None

_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20,
          "G": 2**30, "GB": 2**30, "GIB": 2**30, "T": 2**40, "TB": 2**40, "TIB": 2**40}
_OFF = {"off", "none", "inf", "unlimited", "no"}
_FIX = f"pass memory_limit= to caffenorm.load (bytes, e.g. '16G'; math.inf: no check) or set {ENV_VAR}"


def format_bytes(n: float) -> str:
    """``1.5 GiB``, ``512 MiB``, ``100 bytes``; absurd sizes without a gigantic digit string."""
    if isinstance(n, int) and n.bit_length() > 100:
        return f"{format_count(n)} bytes"
    n = float(n)
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}" if n < 1000 * 2**40 else f"{n / 2**40:.3g} TiB"
    return f"{n:.0f} bytes"


def _parse(value: MemoryLimit, origin: str) -> float:
    """A limit in bytes (``math.inf``: no check) from a number or a size text."""
    if isinstance(value, bool):
        raise NetDefinitionError(f"{origin}={value!r} is not a memory size; give bytes, e.g. 8G, or 'off'")
    if isinstance(value, (int, float)):
        if math.isnan(value) or value <= 0:
            raise NetDefinitionError(
                f"{origin}={value!r} is not allowed; give a positive number of bytes, or math.inf for no check"
            )
        return float(value)
    text = str(value).strip()
    if text.lower() in _OFF:
        return math.inf
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)", text)
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise NetDefinitionError(
            f"{origin}={text[:40]!r} is not a memory size; give bytes or a size such as 512M, 8G, or 'off'"
        )
    return float(match.group(1)) * _UNITS[unit]


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
        return int(text)
    except (OSError, ValueError):
        return None  # absent, "max" (no cgroup limit) or unreadable: not a limit


def available_memory() -> int | None:
    """Bytes of memory available to this process now, or None if it cannot be found out."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
            if pages > 0 and size > 0:
                found.append(pages * size)
        except (AttributeError, OSError, ValueError):
            pass  # not a POSIX system that reports free pages
    # A container's own allowance can be far below the host's free memory (cgroup v2, then v1).
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:
            found.append(max(limit - usage, 0))
            break
    return min(found) if found else None


def resolve_limit(limit: MemoryLimit = None) -> tuple[float, str]:
    """The limit in bytes (``math.inf``: no check) and where it comes from, for messages."""
    if limit is not None:
        return _parse(limit, "memory_limit"), "memory_limit"
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return _parse(env, ENV_VAR), ENV_VAR
    available = available_memory()
    if available is None:
        return math.inf, "no limit"
    return float(available), "available"


def check_allocation(nbytes: int, what: str, limit: MemoryLimit = None) -> None:
    """Refuse to allocate ``nbytes`` for ``what`` when it exceeds the memory limit.

    Args:
        nbytes: the size about to be allocated, in bytes (a Python int: any size, no overflow).
        what: what it is for, e.g. ``"random input 'data' of shape (1, 3, 224, 224)"``.
        limit: bytes, a size text (``"8G"``), ``math.inf``/``"off"`` (no check), or None: the
            default (``$CAFFENORM_MEMORY_LIMIT``, else the memory available now).

    Raises:
        NetDefinitionError: naming ``what``, its size, the limit and how to change it.
    """
    bound, origin = resolve_limit(limit)
    if nbytes > bound:
        raise _refusal(nbytes, what, bound, origin)


def _refusal(nbytes: int, what: str, bound: float, origin: str, detail: str = "") -> NetDefinitionError:
    if origin == "available":
        have = f"the {format_bytes(int(bound))} of memory available"
    else:
        have = f"the limit of {format_bytes(int(bound))} ({origin})"
    return NetDefinitionError(f"{what} needs {format_bytes(nbytes)}{detail}, more than {have}; {_FIX}")


class Budget:
    """A net's memory while it is built: parameters plus every blob's largest value (an eager
    forward keeps every blob in ``net.blobs``), for the declared input shapes.

    The builder calls :meth:`add_params` with each blob's shape before the layer allocates it and
    :meth:`add_activation` with each top's inferred shape; each raises a
    :class:`~caffenorm.errors.NetDefinitionError` as soon as the total passes the limit, naming
    the blob that did.
    """

    def __init__(self, limit: MemoryLimit = None, itemsize: int = 4) -> None:
        self.bound, self.origin = resolve_limit(limit)
        self.itemsize = itemsize
        self.params = 0
        self.activations: dict[str, int] = {}

    @property
    def total(self) -> int:
        """Bytes counted so far."""
        return self.params + sum(self.activations.values())

    def _check(self, extra: int, what: str, location: Location | None, activation: bool) -> None:
        total = self.total + extra
        if total > self.bound:
            acts = sum(self.activations.values()) + (extra if activation else 0)
            detail = (
                f" with {what} (parameters {format_bytes(total - acts)} + activations {format_bytes(acts)} as "
                f"float{8 * self.itemsize}, for the declared input shapes)"
            )
            raise _refusal(total, "the net", self.bound, self.origin, detail).at(location)

    def add_params(self, shape: Sequence[int], what: str, location: Location | None = None) -> None:
        """Count a parameter blob of ``shape`` (before it is allocated)."""
        nbytes = math.prod(int(d) for d in shape) * self.itemsize
        self._check(nbytes, f"{what} {format_shape(shape)}", location, activation=False)
        self.params += nbytes

    def adjust_params(self, delta: int) -> None:
        """Correct the parameter total by ``delta`` bytes (a layer's actual tensors vs. its checked
        blobs: BatchNorm's and Normalize's are not declared before allocation)."""
        self.params = max(self.params + delta, 0)

    def check_transient(self, shape: Sequence[int], what: str, location: Location | None = None) -> None:
        """Check a temporary tensor of ``shape`` (e.g. a padded copy of a bottom) fits next to
        what is counted; it is not kept."""
        nbytes = math.prod(int(d) for d in shape) * self.itemsize
        self._check(nbytes, f"{what} {format_shape(shape)}", location, activation=True)

    def add_activation(self, blob: str, shape: Sequence[int], what: str, location: Location | None = None) -> None:
        """Count blob ``blob`` at ``shape`` (its largest value so far is what a forward keeps)."""
        nbytes = math.prod(int(d) for d in shape) * self.itemsize
        old = self.activations.get(blob, 0)
        if nbytes <= old:
            return
        self._check(nbytes - old, f"{what} {format_shape(shape)}", location, activation=True)
        self.activations[blob] = nbytes
