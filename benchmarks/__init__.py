"""Benchmarks of sugar-kernels (``python -m benchmarks.<name>``)."""

import os

# The 1-minute load average when the benchmark run started, read before anything imports
# torch: importing torch takes about a CPU-second, which alone lifts the load average a quiet
# 2-core machine reports (0.16 read as 0.76). benchmarks.common.START_LOAD is this value.
# `make bench` (benchmarks.run) runs most steps as child processes; they inherit the run's start
# value through START_LOAD_ENV, because the load average a child reads at its own start counts
# the earlier steps' work (after the compiled benchmark a quiet 2-core machine reads ~1.6), which
# would make every later verdict "inconclusive" on any machine.
START_LOAD_ENV = "SUGAR_BENCH_START_LOAD"


def _start_load() -> float | None:
    inherited = os.environ.get(START_LOAD_ENV)
    if inherited:
        return float(inherited)
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


START_LOAD: float | None = _start_load()
