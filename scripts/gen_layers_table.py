"""Regenerate README.md's generated tables: the supported layers (from the converter registry) and
the export mapping (from the ONNX and ncnn exporter registries).

    python scripts/gen_layers_table.py          # rewrite README.md
    python scripts/gen_layers_table.py --check  # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from caffenorm.caffe.layers import layer_table
from caffenorm.export.ncnn import mapping_table as ncnn_table
from caffenorm.export.onnx import mapping_table as onnx_table

README = Path(__file__).resolve().parents[1] / "README.md"


def _cell(text: str) -> str:
    return text.replace("``", "`").replace("|", "\\|")  # rst literals -> markdown; keep the table intact


def render_layers() -> str:
    lines = ["| Caffe type | family | what caffenorm reproduces |", "|---|---|---|"]
    for caffe_type, family, summary in layer_table():
        lines.append(f"| `{caffe_type}` | {family} | {_cell(summary)} |")
    return "\n".join(lines)


def render_export() -> str:
    onnx = {row[0]: row[2] for row in onnx_table()}
    ncnn = {row[0]: row[2] for row in ncnn_table()}
    lines = ["| Caffe type | ONNX (onnxruntime) | ncnn |", "|---|---|---|"]
    for caffe_type in sorted(set(onnx) | set(ncnn), key=str.lower):
        lines.append(
            f"| `{caffe_type}` | {_cell(onnx.get(caffe_type, 'not exported'))} | "
            f"{_cell(ncnn.get(caffe_type, 'not exported'))} |"
        )
    return "\n".join(lines)


BLOCKS = {"layers": render_layers, "export": render_export}


def updated(text: str) -> str:
    for name, render in BLOCKS.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{render()}\n{end}{tail}"
    return text


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    new = updated(text)
    if args.check:
        if new != text:
            print("README.md's generated tables are out of date: run python scripts/gen_layers_table.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
