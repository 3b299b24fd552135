// The cell grid of a large code table (bits = 8): host-side data shared by the AVX2 and the
// AVX-512 code forward (cpu_codes_avx2.h, cpu_codes_avx512.h). Plain data: each build's kernel
// reads it with its own instructions.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace sugar {

// A uniform grid of cells over [t[0], t[last]] fine enough that no two thresholds share a cell.
// cell_of() is monotone in x (every float step of it is), so every threshold in a lower cell is
// < x and every one in a higher cell is > x: #{t < x} = below[cell] + (t_cell < x), two
// independent table loads (no search chain). The host computes each threshold's cell with the
// same float operations as the kernels, so the grid is exact, rounding included.
struct CellGrid {
  static constexpr int kMinCells = 1024, kMaxCells = 65536;
  float lo = 0.f, scale = 0.f, last = 0.f;
  // Per cell, one 64-bit entry: the cell's threshold (+inf if none) in the low 32 bits, the code
  // below it and the code above it in the next two bytes.
  std::vector<uint64_t> entry;

  // The cell of x as a float in [0, last]; NaN -> 0 (as the kernels' max(u, 0) does).
  static float cell_of(float x, float lo, float scale, float last) {
    const float u = (x - lo) * scale;
    return u > 0.f ? (u < last ? u : last) : 0.f;
  }
};

// The grid for this table (sorted thresholds, count + 1 interval codes), built on first use and
// cached by table content (thread-safe); nullptr when no grid of at most kMaxCells cells
// separates the thresholds. Defined in cpu_cell_grid.cpp.
std::shared_ptr<const CellGrid> find_cell_grid(const float* thresholds,
                                               const uint8_t* interval_codes, int count);

}  // namespace sugar
