"""Fuzz caffenorm for a while: mutated prototxts and caffemodels through ``caffenorm.load`` + one
forward (and, for a share of them, ``caffenorm info``, and ONNX and ncnn exports with their
checks: ``--export-share``), counting the outcomes.  Every outcome must
be a success or a ``CaffeNormError``; anything else is an ESCAPE (a bug), and so is a case that
runs past ``--case-seconds`` (HANG).  Run from the repository root:

    python scripts/fuzz.py --seconds 600 --seed 1 --out /tmp/fuzz-failures

Failing inputs are saved under ``--out`` (one folder per case: the files and a README with the
seed net, the mutations and the outcome).  The mutations are in ``tests/fuzzing.py``.
"""

from __future__ import annotations

import argparse
import collections
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fuzzing


class _Hang(BaseException):
    """Raised by the alarm in a case that runs too long (a BaseException, so no handler in
    caffenorm can take it for an input error)."""


def _on_alarm(signum: int, frame: object) -> None:
    raise _Hang


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the failing inputs")
    parser.add_argument("--memory-limit", type=float, default=fuzzing.DEFAULT_LIMIT,
                        help="memory budget of each case in bytes (default 16 MiB)")
    parser.add_argument("--case-seconds", type=int, default=20, help="a case running longer is a HANG (default 20)")
    parser.add_argument("--cli-share", type=float, default=0.1, help="share of cases also run through 'info'")
    parser.add_argument("--export-share", type=float, default=0.0,
                        help="share of cases also exported to ONNX and ncnn, with the exports' own checks")
    parser.add_argument("--seeds", default=",".join(fuzzing.SEED_NAMES),
                        help=f"seed nets, comma-separated (default: {','.join(fuzzing.SEED_NAMES)})")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    outcomes: collections.Counter[str] = collections.Counter()
    slow: list[tuple[float, str]] = []
    saved = 0
    has_alarm = hasattr(signal, "SIGALRM")
    if has_alarm:
        signal.signal(signal.SIGALRM, _on_alarm)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        seeds = fuzzing.write_seeds(work / "seeds", args.seeds.split(","))
        start = time.monotonic()
        runs = 0
        while time.monotonic() - start < args.seconds:
            case = fuzzing.random_case(seeds, rng)
            proto, model = fuzzing.write_case(case, work / "case")
            results = []
            began = time.monotonic()
            try:
                if has_alarm:
                    signal.alarm(args.case_seconds)
                results.append(fuzzing.run_case(proto, model, case.phase, args.memory_limit, case.fold, case.outputs))
                if rng.random() < args.cli_share:
                    results.append("cli " + fuzzing.run_cli_case(proto, model, args.memory_limit))
                if results[0] == "ok" and rng.random() < args.export_share:
                    for fmt in ("onnx", "ncnn"):
                        results.append(fuzzing.run_export_case(proto, model, fmt, work / "case", args.memory_limit))
            except _Hang:
                results.append("HANG")
            finally:
                if has_alarm:
                    signal.alarm(0)
            took = time.monotonic() - began
            if took > 5:
                slow.append((took, f"{case.seed}: {'; '.join(case.mutations)[:150]}"))
            runs += 1
            for result in results:
                outcomes[result] += 1
                if ("ESCAPE" in result or result == "HANG") and args.out is not None:
                    fuzzing.save_case(case, result, args.out, saved)
                    saved += 1
            if runs % 500 == 0:
                escapes = sum(n for k, n in outcomes.items() if "ESCAPE" in k or k == "HANG")
                print(f"{runs} inputs, {escapes} escapes, {time.monotonic() - start:.0f}s", flush=True)
    elapsed = time.monotonic() - start
    print(f"\n{runs} inputs in {elapsed:.0f}s (seed {args.seed}); outcomes:")
    for outcome, count in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {count:7d}  {outcome}")
    if slow:
        print(f"\n{len(slow)} case(s) slower than 5s; the slowest:")
        for took, what in sorted(slow, reverse=True)[:10]:
            print(f"  {took:6.1f}s  {what}")
    escapes = sum(n for k, n in outcomes.items() if "ESCAPE" in k or k == "HANG")
    if escapes and args.out is not None:
        print(f"\n{saved} failing input(s) saved under {args.out}")
    return 1 if escapes else 0


if __name__ == "__main__":
    sys.exit(main())
