"""``python -m benchmarks.train``: see ``benchmarks.train`` and ``--help``."""

import sys

from . import main

sys.exit(main())
