"""Fuzzing the error contract: mutated prototxts and caffemodels (``tests/fuzzing.py``) through
``caffenorm.load`` + one forward, and through ``caffenorm info``, must end in success or a
``CaffeNormError`` (for the CLI: return code 0, 1 or 2) -- never another exception.

Deterministic (a fixed seed and a fixed number of cases), bounded by a 16 MiB memory budget per
case and sized to about a minute on two slow cores.  ``scripts/fuzz.py`` runs the same mutations
for as long as asked and saves the failing inputs.
"""

from __future__ import annotations

import collections
import random

import pytest

import fuzzing

CASES = 2000  # load + forward
CLI_CASES = 300  # caffenorm info
EXPORT_CASES = 60  # loadable mutated nets through to_onnx and to_ncnn, with their checks


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return fuzzing.write_seeds(tmp_path_factory.mktemp("seeds"))


def _report(escapes: list[str]) -> str:
    return f"{len(escapes)} input(s) escaped the error contract:\n" + "\n".join(escapes[:20])


def test_load_and_forward_raise_only_caffenorm_errors(seeds, tmp_path):
    rng = random.Random(20240601)
    outcomes: collections.Counter[str] = collections.Counter()
    escapes = []
    for i in range(CASES):
        case = fuzzing.random_case(seeds, rng)
        proto, model = fuzzing.write_case(case, tmp_path)
        outcome = fuzzing.run_case(proto, model, case.phase, fuzzing.DEFAULT_LIMIT, case.fold, case.outputs)
        outcomes[outcome] += 1
        if "ESCAPE" in outcome:
            escapes.append(f"case {i}: {outcome} from {case.seed} ({case.phase}): {'; '.join(case.mutations)[:200]}")
    assert not escapes, _report(escapes)
    # The mutations reach past the parser: nets that run, and every stage's errors.
    assert outcomes["ok"] > CASES // 10, outcomes
    for error in ("PrototxtSyntaxError", "NetDefinitionError", "LayerConfigError", "BlobError", "CaffemodelError"):
        assert outcomes[error] > 0, outcomes


def test_cli_info_returns_0_1_or_2(seeds, tmp_path):
    rng = random.Random(7)
    codes: collections.Counter[str] = collections.Counter()
    escapes = []
    for i in range(CLI_CASES):
        case = fuzzing.random_case(seeds, rng)
        proto, model = fuzzing.write_case(case, tmp_path)
        outcome = fuzzing.run_cli_case(proto, model)
        codes[outcome] += 1
        if "ESCAPE" in outcome:
            escapes.append(f"case {i}: {outcome} from {case.seed}: {'; '.join(case.mutations)[:200]}")
    assert not escapes, _report(escapes)
    assert codes["rc=0"] > 0 and codes["rc=1"] > 0, codes


def test_exports_raise_only_caffenorm_errors(seeds, tmp_path):
    """The exporters and their checks on mutated nets that load: an export, or an ExportError (a
    refusal, a check that failed) -- found by this: a TypeError in ncnn's shape inference,
    onnxruntime's own exceptions, padded copies of gigabytes for huge pooling strides."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ncnn")
    rng = random.Random(31)
    outcomes: collections.Counter[str] = collections.Counter()
    escapes = []
    exported = 0
    while exported < EXPORT_CASES:
        case = fuzzing.random_case(seeds, rng)
        proto, model = fuzzing.write_case(case, tmp_path)
        if fuzzing.run_case(proto, model) != "ok":
            continue
        exported += 1
        for fmt in ("onnx", "ncnn"):
            outcome = fuzzing.run_export_case(proto, model, fmt, tmp_path)
            outcomes[outcome] += 1
            if "ESCAPE" in outcome:
                escapes.append(f"{outcome} from {case.seed}: {'; '.join(case.mutations)[:200]}")
    assert not escapes, _report(escapes)
    assert outcomes["onnx ok"] > 0 and outcomes["ncnn ok"] > 0, outcomes


def test_the_seeds_themselves_run(seeds, tmp_path):
    for seed in seeds:
        case = fuzzing.Case(seed.name, (), seed.prototxt, seed.caffemodel)
        proto, model = fuzzing.write_case(case, tmp_path, seed.name)
        assert fuzzing.run_case(proto, model) == "ok", seed.name
