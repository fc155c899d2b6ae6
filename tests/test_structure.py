"""The package's layering, checked from its source: layers (functional <- nn) <- Caffe (graph <-
builder/converters, runner, passes, writers) <- CLI, with no import cycle (function-level imports
included) and no protobuf below the converters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "caffenorm"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the caffenorm modules it imports (anywhere in the file), resolved to modules."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            else:
                continue
            for candidate in candidates:
                if not candidate.startswith("caffenorm"):
                    continue
                # the longest prefix that is a module: `from caffenorm.nn import LRN` -> caffenorm.nn
                while candidate not in modules and "." in candidate:
                    candidate = candidate.rsplit(".", 1)[0]
                if candidate != name:
                    targets.add(candidate)
        graph[name] = targets
    return graph


def _package_inits(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def test_no_import_cycles():
    graph = _imports()
    # Importing a module runs its parent packages' __init__ first; the top-level package re-exports
    # everything, so edges *into* `caffenorm` itself are not followed (it is the facade).
    edges = {m: {t for t in ts if t != "caffenorm"} for m, ts in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycle = path[path.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


@pytest.mark.parametrize(
    "lower, upper",
    [
        ("caffenorm.functional", ("caffenorm.nn", "caffenorm.caffe", "caffenorm.cli")),
        ("caffenorm.nn", ("caffenorm.caffe", "caffenorm.cli")),
        ("caffenorm.caffe", ("caffenorm.cli",)),
        ("caffenorm.transform", ("caffenorm.caffe", "caffenorm.cli", "caffenorm.nn")),
    ],
)
def test_layers_only_import_downwards(lower, upper):
    graph = _imports()
    bad = [
        f"{m} imports {t}"
        for m, targets in graph.items()
        if m == lower or m.startswith(lower + ".")
        for t in targets
        if any(t == u or t.startswith(u + ".") for u in upper)
    ]
    assert not bad, bad


def test_no_protobuf_below_the_converters():
    """ops/, functional/ and nn/ take plain Python values, never protobuf messages."""
    offenders = []
    for sub in ("functional", "nn", "caffe/ops"):
        for path in (ROOT / sub).rglob("*.py"):
            text = path.read_text()
            if "google.protobuf" in text or "caffenorm.caffe.schema" in text or "from caffenorm.caffe import schema" in text:
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders
