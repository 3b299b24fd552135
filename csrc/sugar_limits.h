// Capacities of the code-mode tables, shared by the host checks, the CPU kernels, the CUDA
// kernels and the host test driver.
#pragma once

namespace sugar {

constexpr int kMaxIntervals = 1024;  // capacity of the threshold table (code_tables.py MAX_INTERVALS)
// The padded table holds the thresholds plus `scan` (<= their count) +inf entries.
constexpr int kMaxPadded = 2 * kMaxIntervals;

}  // namespace sugar
