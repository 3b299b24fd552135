"""``python -m benchmarks.train``: see ``benchmarks.train`` and ``--help``."""

import sys

from .cli import main

sys.exit(main())
