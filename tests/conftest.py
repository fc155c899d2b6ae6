"""Shared test setup: ``tests/`` on sys.path so the float64 oracle imports as ``reference.caffe_ref``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
