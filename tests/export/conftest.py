"""``tests`` and ``tests/caffe`` on sys.path so export tests import ``zoo`` and ``netutil``."""

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
for _path in (str(_TESTS), str(_TESTS / "caffe")):
    if _path not in sys.path:
        sys.path.insert(0, _path)
