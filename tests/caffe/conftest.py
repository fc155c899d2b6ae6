"""``tests/caffe`` on sys.path so tests import ``netutil``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
