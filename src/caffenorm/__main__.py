"""``python -m caffenorm`` is the ``caffenorm`` command."""

import sys

from caffenorm.cli import main

sys.exit(main())
