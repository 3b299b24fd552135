// The cell grids of large code tables (cell_grid.h), built on the host for both builds' code
// forward.
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#include "cell_grid.h"

namespace sugar {
namespace {

// The coarsest grid that separates the thresholds, of at most kMaxCells cells; null if none.
std::shared_ptr<const CellGrid> build_cell_grid(const float* t, const uint8_t* interval_codes,
                                                int count) {
  auto grid = std::make_shared<CellGrid>();
  const float span = count ? t[count - 1] - t[0] : 0.f;
  for (int cells = CellGrid::kMinCells; cells <= CellGrid::kMaxCells; cells *= 2) {
    const float lo = count ? t[0] : 0.f, scale = span > 0.f ? float(cells) / span : 0.f;
    const float last = float(cells - 1);
    auto cell = [&](int i) { return int(CellGrid::cell_of(t[i], lo, scale, last)); };
    bool separated = true;
    for (int i = 1; i < count && separated; ++i) separated = cell(i - 1) < cell(i);
    if (!separated) continue;
    grid->lo = lo, grid->scale = scale, grid->last = last;
    grid->entry.resize(cells);
    int below = 0;  // thresholds in lower cells
    for (int c = 0; c < cells; ++c) {
      const bool has = below < count && cell(below) == c;
      const float threshold = has ? t[below] : std::numeric_limits<float>::infinity();
      uint32_t threshold_bits;
      std::memcpy(&threshold_bits, &threshold, 4);
      const uint32_t codes = interval_codes[below] | (interval_codes[below + (has ? 1 : 0)] << 8);
      grid->entry[c] = threshold_bits | (uint64_t{codes} << 32);
      below += has ? 1 : 0;
    }
    return grid;
  }
  return nullptr;
}

// Grids are built once per table, not per call (a 1024+-cell build would dominate small calls),
// and found again by content: a lookup compares the whole thresholds and interval codes
// (~0.1 us for 371 thresholds), so a modified or reused table never meets a stale grid. A few
// entries, one per configuration in use; the oldest is dropped.
class CellGridCache {
 public:
  std::shared_ptr<const CellGrid> find_or_build(const float* t, const uint8_t* interval_codes,
                                                int count) {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (const Entry& e : entries_) {
      if (e.thresholds.size() == static_cast<size_t>(count) &&
          std::memcmp(e.thresholds.data(), t, count * sizeof(float)) == 0 &&
          std::memcmp(e.interval_codes.data(), interval_codes, count + 1) == 0) {
        return e.grid;
      }
    }
    auto grid = build_cell_grid(t, interval_codes, count);
    if (entries_.size() == kEntries) entries_.erase(entries_.begin());
    entries_.push_back({std::vector<float>(t, t + count),
                        std::vector<uint8_t>(interval_codes, interval_codes + count + 1), grid});
    return grid;
  }

 private:
  static constexpr size_t kEntries = 16;
  struct Entry {
    std::vector<float> thresholds;
    std::vector<uint8_t> interval_codes;
    std::shared_ptr<const CellGrid> grid;
  };
  std::mutex mutex_;
  std::vector<Entry> entries_;
};

}  // namespace

std::shared_ptr<const CellGrid> find_cell_grid(const float* thresholds,
                                               const uint8_t* interval_codes, int count) {
  static CellGridCache cache;
  return cache.find_or_build(thresholds, interval_codes, count);
}

}  // namespace sugar
