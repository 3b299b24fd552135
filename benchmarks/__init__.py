"""Benchmarks of sugar-kernels (``python -m benchmarks.<name>``)."""

import os

# The 1-minute load average when the benchmark process started, read before anything imports
# torch: importing torch takes about a CPU-second, which alone lifts the load average a quiet
# 2-core machine reports (0.16 read as 0.76). benchmarks.common.START_LOAD is this value.
START_LOAD: float | None = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
