"""Regenerate the supported-layer table in README.md from the converter registry.

    python scripts/gen_layers_table.py          # rewrite README.md
    python scripts/gen_layers_table.py --check  # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from caffenorm.caffe.layers import layer_table

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- layers:start -->", "<!-- layers:end -->"


def render() -> str:
    lines = ["| Caffe type | family | what caffenorm reproduces |", "|---|---|---|"]
    for caffe_type, family, summary in layer_table():
        cell = summary.replace("``", "`").replace("|", "\\|")  # rst literals -> markdown; keep the table intact
        lines.append(f"| `{caffe_type}` | {family} | {cell} |")
    return "\n".join(lines)


def updated(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{render()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    new = updated(text)
    if args.check:
        if new != text:
            print("README.md's layer table is out of date: run python scripts/gen_layers_table.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
