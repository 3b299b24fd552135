// The base build's code modes (bits = 8/4/2/1): with AVX2 (SUGAR_CODES_AVX2, cpu_build.h), float
// opmath (float, half, bfloat16) runs 16 elements (two 8-lane vectors) per step; float64, tails
// shorter than a step and builds without AVX2 use the scalar encode_byte / decode_byte of
// sugar_math.h. Handles every call (the AVX-512 build falls back to it). Codes are exactly
// code_tables.py's: interval_codes[#{t : t < x}] with the comparison in float, NaN in interval 0,
// 8 / bits codes per byte from the low bits up.
#pragma once

#include "cpu_exact.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>

#ifdef SUGAR_CODES_AVX2
#include <immintrin.h>
#endif

#include "cell_grid.h"
#include "kernel_entry_points.h"

namespace sugar {
namespace SUGAR_CPU_ISA {
namespace {

constexpr int64_t kStep = 16;  // elements per SIMD step: a whole number of bytes at every bits

#ifdef SUGAR_CODES_AVX2

// The code search without a memory access per element, for tables of up to 64 thresholds
// (bits 1, 2 and 4 of every surrogate): the thresholds are split into G <= 8 groups of s <= 8.
// g = #{k in 1..G-1 : t[s k] < x} needs G - 1 compares against broadcast values; as the table is
// sorted, #{t < x} = s g + #{j < s : t[s g + j] < x}, whose thresholds come from registers by one
// in-lane permute per j (lane g of register j holds t[s g + j]). The code follows by telescoping:
// interval_codes[s g + c] = base[g] + sum over the j < c of delta[j][g]. Every index is a
// register lane or below num_thresholds by construction; an unsorted (corrupt) table gives wrong
// but in-range codes (they are masked to `bits` bits).
constexpr int kRegisterMaxThresholds = 64;

struct RegisterSearch {
  int groups = 1, group_size = 1;
  int32_t code_mask = 0;
  float boundary[8] = {};                    // t[s k], k = 1 .. groups - 1
  alignas(32) float threshold[8][8] = {};    // [j][g] = t[s g + j], +inf past the table
  alignas(32) int32_t delta[8][8] = {};      // [j][g] = code change across t[s g + j]
  alignas(32) int32_t base[8] = {};          // [g] = interval_codes[s g]

  RegisterSearch(const float* t, const uint8_t* interval_codes, int count, int bits)
      : code_mask((1 << bits) - 1) {
    group_size = std::max(1, (count + 7) / 8);
    groups = std::max(1, (count + group_size - 1) / group_size);
    for (int k = 1; k < groups; ++k) boundary[k] = t[group_size * k];
    for (int g = 0; g < 8; ++g) {
      const int first = std::min(group_size * g, count);
      base[g] = interval_codes[first];
      for (int j = 0; j < group_size; ++j) {
        const int i = group_size * g + j;
        const bool real = g < groups && i < count;
        threshold[j][g] = real ? t[i] : std::numeric_limits<float>::infinity();
        delta[j][g] = real ? interval_codes[i + 1] - interval_codes[i] : 0;
      }
    }
  }

  __m256i operator()(__m256 x) const {
    __m256i g = _mm256_setzero_si256();
    for (int k = 1; k < groups; ++k) {  // a true compare is all ones, i.e. -1
      const __m256 below = _mm256_cmp_ps(_mm256_set1_ps(boundary[k]), x, _CMP_LT_OQ);
      g = _mm256_sub_epi32(g, _mm256_castps_si256(below));
    }
    __m256i code = _mm256_permutevar8x32_epi32(_mm256_load_si256((const __m256i*)base), g);
    for (int j = 0; j < group_size; ++j) {
      const __m256 t = _mm256_permutevar8x32_ps(_mm256_load_ps(threshold[j]), g);
      const __m256i d =
          _mm256_permutevar8x32_epi32(_mm256_load_si256((const __m256i*)delta[j]), g);
      const __m256i below = _mm256_castps_si256(_mm256_cmp_ps(t, x, _CMP_LT_OQ));
      code = _mm256_add_epi32(code, _mm256_and_si256(below, d));
    }
    return _mm256_and_si256(code, _mm256_set1_epi32(code_mask));
  }
};

// Larger tables (bits = 8): the table's cell grid (cell_grid.h), one threshold per cell at most.
// One 4-lane gather fetches 4 cells' entries.
struct CellSearch {
  const CellGrid& grid;

  __m256i operator()(__m256 x) const {
    __m256 u = _mm256_mul_ps(_mm256_sub_ps(x, _mm256_set1_ps(grid.lo)), _mm256_set1_ps(grid.scale));
    u = _mm256_min_ps(_mm256_max_ps(u, _mm256_setzero_ps()), _mm256_set1_ps(grid.last));
    const __m256i cell = _mm256_cvttps_epi32(u);
    const auto* table = reinterpret_cast<const long long*>(grid.entry.data());
    const __m256i e0 = _mm256_i32gather_epi64(table, _mm256_castsi256_si128(cell), 8);
    const __m256i e1 = _mm256_i32gather_epi64(table, _mm256_extracti128_si256(cell, 1), 8);
    // Even 32-bit halves are thresholds, odd ones codes: gather each kind in lane order.
    const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    const __m256i odd = _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7);
    const __m256 t = _mm256_castsi256_ps(_mm256_blend_epi32(
        _mm256_permutevar8x32_epi32(e0, even), _mm256_permutevar8x32_epi32(e1, even), 0xF0));
    const __m256i both = _mm256_blend_epi32(_mm256_permutevar8x32_epi32(e0, odd),
                                            _mm256_permutevar8x32_epi32(e1, odd), 0xF0);
    const __m256i above = _mm256_castps_si256(_mm256_cmp_ps(t, x, _CMP_LT_OQ));
    const __m256i pick = _mm256_srlv_epi32(both, _mm256_and_si256(above, _mm256_set1_epi32(8)));
    return _mm256_and_si256(pick, _mm256_set1_epi32(0xFF));
  }
};

// Fallback (tables no affordable grid separates): interval_of() of sugar_math.h per lane, the
// bucket's first candidate, `scan` comparisons, the code. Indices are clamped into the tables.
struct GatherSearch {
  const CodeTable<float>& table;
  const int32_t* interval_codes32;  // num_thresholds + 1 entries
  int last_start, last_interval;

  __m256i operator()(__m256 x) const {
    __m256 u = _mm256_mul_ps(_mm256_sub_ps(x, _mm256_set1_ps(table.lo)),
                             _mm256_set1_ps(table.inv_width));
    u = _mm256_min_ps(_mm256_max_ps(u, _mm256_setzero_ps()),  // NaN -> 0
                      _mm256_set1_ps(float(kSearchBuckets - 1)));
    alignas(32) int32_t bucket[8];
    alignas(32) float xs[8];
    int32_t code[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(bucket), _mm256_cvttps_epi32(u));
    _mm256_store_ps(xs, x);
    const float* t = table.thresholds;
    const int scan = table.scan;
    for (int lane = 0; lane < 8; ++lane) {  // scalar loads: far cheaper than gathers here
      const int first = std::clamp(table.bucket_start[bucket[lane]], 0, last_start);
      int below = first;
      for (int k = 0; k < scan; ++k) below += t[first + k] < xs[lane];
      code[lane] = interval_codes32[std::min(below, last_interval)];
    }
    // Built from registers: a vector load of just-stored scalars would stall store forwarding.
    return _mm256_setr_epi32(code[0], code[1], code[2], code[3], code[4], code[5], code[6],
                             code[7]);
  }
};

// Packs 8 codes (int32 lanes, < 2^kBits) into kBits bytes at p: code i at bit i * kBits.
template <int kBits>
inline void pack8(__m256i code, uint8_t* p) {
  if constexpr (kBits == 8) {
    const __m256i bytes = _mm256_shuffle_epi8(  // byte 0 of each lane to the low dword of a half
        code, _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4,
                               8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
    const __m256i joined =
        _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(joined));
  } else {
    const __m256i shifted = _mm256_sllv_epi32(
        code, _mm256_setr_epi32(0, kBits, 2 * kBits, 3 * kBits, 4 * kBits, 5 * kBits, 6 * kBits,
                                7 * kBits));
    // The fields do not overlap: OR the 8 lanes together.
    __m128i v = _mm_or_si128(_mm256_castsi256_si128(shifted), _mm256_extracti128_si256(shifted, 1));
    v = _mm_or_si128(v, _mm_shuffle_epi32(v, 0x4E));
    v = _mm_or_si128(v, _mm_shuffle_epi32(v, 0xB1));
    const uint32_t word = static_cast<uint32_t>(_mm_cvtsi128_si32(v));
    std::memcpy(p, &word, kBits);  // little endian: the low kBits bytes
  }
}

// Unpacks the 8 codes of the kBits bytes at p into int32 lanes.
template <int kBits>
inline __m256i unpack8(const uint8_t* p) {
  if constexpr (kBits == 8) {
    int64_t word;
    std::memcpy(&word, p, 8);
    return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(word));
  } else {
    uint32_t word = 0;
    std::memcpy(&word, p, kBits);
    const __m256i shifted = _mm256_srlv_epi32(
        _mm256_set1_epi32(static_cast<int32_t>(word)),
        _mm256_setr_epi32(0, kBits, 2 * kBits, 3 * kBits, 4 * kBits, 5 * kBits, 6 * kBits,
                          7 * kBits));
    return _mm256_and_si256(shifted, _mm256_set1_epi32((1 << kBits) - 1));
  }
}

// levels[code] for 8 codes: in-register permutes for up to 16 levels, a gather for 256.
template <int kBits>
struct LevelLookup {
  alignas(32) float table[kBits == 8 ? 256 : 16] = {};

  explicit LevelLookup(const float* levels) {
    for (int i = 0; i < (1 << kBits); ++i) table[i] = levels[i];
  }

  __m256 operator()(__m256i code) const {
    if constexpr (kBits == 8) {
      return _mm256_i32gather_ps(table, code, 4);  // code < 256 by construction (unpack8)
    } else {
      const __m256 low = _mm256_permutevar8x32_ps(_mm256_load_ps(table), code);
      if constexpr (kBits < 4) return low;
      const __m256 high = _mm256_permutevar8x32_ps(_mm256_load_ps(table + 8), code);
      return _mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_slli_epi32(code, 28)));
    }
  }
};

// relu() of a step in the storage type, bit-identical to torch.relu (-0.0 and NaN kept).
template <typename scalar_t>
inline void relu_step(const scalar_t* x, const Chunk<scalar_t>& xs, scalar_t* y) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 neg_lo = _mm256_cmp_ps(xs.lo, zero, _CMP_LT_OQ);
  const __m256 neg_hi = _mm256_cmp_ps(xs.hi, zero, _CMP_LT_OQ);
  if constexpr (std::is_same_v<scalar_t, float>) {
    _mm256_storeu_ps(y, _mm256_blendv_ps(xs.lo, zero, neg_lo));
    _mm256_storeu_ps(y + 8, _mm256_blendv_ps(xs.hi, zero, neg_hi));
  } else {  // 16-bit storage: clear the negative elements' bits
    const __m256i neg = _mm256_permute4x64_epi64(
        _mm256_packs_epi32(_mm256_castps_si256(neg_lo), _mm256_castps_si256(neg_hi)), 0xD8);
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y), _mm256_andnot_si256(neg, raw));
  }
}

// Forward over whole steps [first, last): y = relu(x), codes. flatten: one inlined loop.
template <int kBits, typename scalar_t, typename Search>
__attribute__((flatten)) void encode_steps(const scalar_t* x, scalar_t* y, uint8_t* codes,
                                           int64_t first, int64_t last, const Search& search) {
  using C = Chunk<scalar_t>;
  for (int64_t s = first; s < last; ++s) {
    const int64_t i = s * kStep;
    const C xs = C::load(x + i);  // before y is written: y may alias x
    const __m256i code_lo = search(xs.lo), code_hi = search(xs.hi);
    relu_step(x + i, xs, y + i);
    pack8<kBits>(code_lo, codes + s * 2 * kBits);
    pack8<kBits>(code_hi, codes + s * 2 * kBits + kBits);
  }
}

template <int kBits, typename scalar_t>
__attribute__((flatten)) void decode_steps(const scalar_t* grad_y, const uint8_t* codes,
                                           scalar_t* grad_x, int64_t first, int64_t last,
                                           const LevelLookup<kBits>& lookup) {
  using C = Chunk<scalar_t>;
  for (int64_t s = first; s < last; ++s) {
    const int64_t i = s * kStep;
    C g = C::load(grad_y + i);
    g.lo = g.lo * typename C::V(lookup(unpack8<kBits>(codes + s * 2 * kBits)));
    g.hi = g.hi * typename C::V(lookup(unpack8<kBits>(codes + s * 2 * kBits + kBits)));
    g.store(grad_x + i);
  }
}

// Whole steps in parallel; returns how many elements they covered.
template <typename scalar_t>
int64_t encode_simd(const scalar_t* x, scalar_t* y, uint8_t* codes, int64_t n,
                    const CodeArgs& args, const CodeTable<float>& table) {
  const int64_t steps = n / kStep;
  const auto* t = static_cast<const float*>(args.thresholds);
  const int count = args.num_thresholds;
  auto run = [&](auto bits, const auto& search) {
    at::parallel_for(0, steps, kGrainSize / kStep, [&](int64_t first, int64_t last) {
      encode_steps<decltype(bits)::value>(x, y, codes, first, last, search);
    });
  };
  auto with_bits = [&](const auto& search) {
    switch (args.bits) {
      case 1: return run(std::integral_constant<int, 1>{}, search);
      case 2: return run(std::integral_constant<int, 2>{}, search);
      case 4: return run(std::integral_constant<int, 4>{}, search);
      default: return run(std::integral_constant<int, 8>{}, search);
    }
  };
  std::shared_ptr<const CellGrid> grid;
  if (count <= kRegisterMaxThresholds) {
    with_bits(RegisterSearch(t, args.interval_codes, count, args.bits));
  } else if ((grid = find_cell_grid(t, args.interval_codes, count))) {
    with_bits(CellSearch{*grid});
  } else {
    int32_t codes32[kMaxIntervals];
    for (int i = 0; i <= count; ++i) codes32[i] = args.interval_codes[i];
    with_bits(GatherSearch{table, codes32, count, count});
  }
  return steps * kStep;
}

template <typename scalar_t>
int64_t decode_simd(const scalar_t* grad_y, const uint8_t* codes, const float* levels,
                    scalar_t* grad_x, int64_t n, int bits) {
  const int64_t steps = n / kStep;
  auto run = [&](auto kbits) {
    constexpr int kBits = decltype(kbits)::value;
    const LevelLookup<kBits> lookup(levels);
    at::parallel_for(0, steps, kGrainSize / kStep, [&](int64_t first, int64_t last) {
      decode_steps<kBits>(grad_y, codes, grad_x, first, last, lookup);
    });
  };
  switch (bits) {
    case 1: run(std::integral_constant<int, 1>{}); break;
    case 2: run(std::integral_constant<int, 2>{}); break;
    case 4: run(std::integral_constant<int, 4>{}); break;
    default: run(std::integral_constant<int, 8>{}); break;
  }
  return steps * kStep;
}

#endif  // SUGAR_CODES_AVX2

bool relu_forward_codes(c10::ScalarType dtype, const void* x_, void* y_, uint8_t* codes, int64_t n,
                        const CodeArgs& args) {
  dispatch_float_types(dtype, "sugar::relu_forward_codes", [&](auto tag) {
    using scalar_t = decltype(tag);
    using T = at::opmath_type<scalar_t>;
    const auto* x = static_cast<const scalar_t*>(x_);
    auto* y = static_cast<scalar_t*>(y_);
    T padded[kMaxPadded];
    const CodeTable<T> table = make_code_table<T>(args, padded);
    int64_t done = 0;  // elements encoded by whole SIMD steps (a whole number of bytes)
#ifdef SUGAR_CODES_AVX2
    if constexpr (std::is_same_v<T, float>) done = encode_simd(x, y, codes, n, args, table);
#endif
    encode_rest(x, y, codes, done, n, args.bits, table);
  });
  return true;
}

bool relu_backward_codes(c10::ScalarType dtype, const void* grad_y_, const uint8_t* codes,
                         const void* levels_, void* grad_x_, int64_t n, int bits) {
  dispatch_float_types(dtype, "sugar::relu_backward_codes", [&](auto tag) {
    using scalar_t = decltype(tag);
    using T = at::opmath_type<scalar_t>;
    const auto* grad_y = static_cast<const scalar_t*>(grad_y_);
    const auto* levels = static_cast<const T*>(levels_);
    auto* grad_x = static_cast<scalar_t*>(grad_x_);
    int64_t done = 0;
#ifdef SUGAR_CODES_AVX2
    if constexpr (std::is_same_v<T, float>) {
      done = decode_simd(grad_y, codes, levels, grad_x, n, bits);
    }
#endif
    const int per = 8 / bits;
    at::parallel_for(done / per, packed_size(n, bits), kGrainSize * bits / 8,
                     [&](int64_t begin, int64_t end) {
      for (int64_t byte = begin; byte < end; ++byte) {
        decode_byte(grad_y, codes, levels, grad_x, byte, n, bits);
      }
    });
  });
  return true;
}

}  // namespace
}  // namespace SUGAR_CPU_ISA
}  // namespace sugar
