"""Triton in interpreter mode for the kernel tests on machines without CUDA.

``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates a function, and triton's own standard
library (``tl.sum``, ``tl.min``...) is decorated when ``triton.language`` is first imported, so the
variable must be set before triton is imported at all.  Here, on a machine without CUDA:

* triton is imported once with ``TRITON_INTERPRET=1``, and the variable is removed again right
  after, so other test files (and the processes they start) never see it;
* ``interpreted`` loads private copies of ``caffenorm.kernels.*_triton`` (the variable set only while
  each copy executes), outside ``sys.modules``, so the package's own modules are untouched.

With CUDA present nothing is changed: the interpreter variants skip and the ``cuda`` variants run
the package's compiled kernels natively.  The ahead-of-time compile check runs in a subprocess
(``compile_sm90.py``), since one process cannot hold both flavours of triton's standard library.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

KERNEL_MODULES = ("lrn_triton", "normalize_triton", "batch_norm_triton")
# What the environment had before this file ran: the tests check it is left as it was.
TRITON_INTERPRET_BEFORE = os.environ.get("TRITON_INTERPRET")


def _with_interpret(action: Callable[[], object]) -> object:
    """Run ``action`` with ``TRITON_INTERPRET=1``, restoring the environment afterwards."""
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        return action()
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


def _prepare_interpreter() -> str | None:
    """Import triton in interpreter mode; None when that worked, else why the interpreter tests skip."""
    if torch.cuda.is_available():
        return "CUDA is present: the kernels are tested compiled, natively (the cuda variants)"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if "triton" not in sys.modules:
        # gluon too: the interpreter imports it lazily at the first launch, and it checks the
        # flavour of the standard library against the variable.
        _with_interpret(lambda: [importlib.import_module(m) for m in ("triton.language", "triton.experimental.gluon")])
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(sys.modules["triton.language"].standard.min, InterpretedFunction):
        return "triton was imported without TRITON_INTERPRET=1 before these tests were collected"
    return None


INTERPRETER_SKIP = _prepare_interpreter()


def load_copy(name: str) -> ModuleType:
    """A private copy of ``caffenorm.kernels.<name>`` whose kernels run in the interpreter."""
    spec = importlib.util.find_spec(f"caffenorm.kernels.{name}")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader
    _with_interpret(lambda: loader.exec_module(module))
    return module


@pytest.fixture(scope="session")
def interpreted() -> SimpleNamespace:
    """``.lrn``, ``.normalize``, ``.batch_norm``: kernel modules running in Triton's interpreter, on CPU tensors."""
    if INTERPRETER_SKIP:
        pytest.skip(INTERPRETER_SKIP)
    return SimpleNamespace(**{name.removesuffix("_triton"): load_copy(name) for name in KERNEL_MODULES})


@pytest.fixture(scope="session")
def compiled() -> SimpleNamespace:
    """``.lrn``, ``.normalize``, ``.batch_norm``: the package's own (compiled) kernel modules, for CUDA tensors."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return SimpleNamespace(
        **{
            name.removesuffix("_triton"): importlib.import_module(f"caffenorm.kernels.{name}")
            for name in KERNEL_MODULES
        }
    )


@pytest.fixture
def dispatch_to(monkeypatch: pytest.MonkeyPatch) -> Callable[[SimpleNamespace], None]:
    """``dispatch_to(copies)`` makes the functional layer's hook send every float32/16 tensor, CPU
    ones included, to the given kernel modules (all restored after the test)."""
    import caffenorm.kernels

    def route(copies: SimpleNamespace) -> None:
        monkeypatch.setattr(caffenorm.kernels, "available", lambda x: x.dtype in caffenorm.kernels.SUPPORTED_DTYPES)
        for name in KERNEL_MODULES:
            monkeypatch.setitem(sys.modules, f"caffenorm.kernels.{name}", getattr(copies, name.removesuffix("_triton")))

    return route
