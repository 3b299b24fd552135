// The per-chunk work of the CUDA kernels, as __host__ __device__ functions: loading and storing a
// chunk of elements (128-bit accesses, or element by element for a tail or a misaligned tensor),
// the exact forward/backward of one chunk, the code-mode encode/decode of one chunk (table search,
// packing, the code word), and the fill of a block's table copies with every index clamped.
// The CUDA kernels (cuda_kernels.cu) only add the grid-stride loop and the launch; the host test
// driver (tests/cpp/chunk_driver.cpp) calls these same functions over every chunk position, tail
// length, alignment and bits, and compares with a simple reference.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "sugar_limits.h"
#include "sugar_math.h"

namespace sugar {

template <typename scalar_t>
using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// One 128-bit access: 16 bytes of scalar_t.
template <typename scalar_t>
constexpr int kPackElems = 16 / static_cast<int>(sizeof(scalar_t));

template <typename scalar_t>
struct alignas(16) Pack {
  scalar_t v[kPackElems<scalar_t>];
};

// v[0, N) = p[0, N) with N / kPackElems 128-bit loads (p 16-byte aligned, the chunk full), or
// v[0, count) element by element (zeros beyond count).
template <bool kVector, int N, typename scalar_t>
SUGAR_HD void load_chunk(const scalar_t* p, int count, scalar_t (&v)[N]) {
  if constexpr (kVector) {
    constexpr int P = kPackElems<scalar_t>;
    static_assert(N % P == 0, "a vector chunk is a whole number of 128-bit packs");
#pragma unroll
    for (int k = 0; k < N / P; ++k) {
      const Pack<scalar_t> pack = reinterpret_cast<const Pack<scalar_t>*>(p)[k];
#pragma unroll
      for (int j = 0; j < P; ++j) v[k * P + j] = pack.v[j];
    }
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) v[j] = j < count ? p[j] : static_cast<scalar_t>(0.0f);
  }
}

// p[0, N) = v with 128-bit stores, or p[0, count) element by element.
template <bool kVector, int N, typename scalar_t>
SUGAR_HD void store_chunk(scalar_t* p, int count, const scalar_t (&v)[N]) {
  if constexpr (kVector) {
    constexpr int P = kPackElems<scalar_t>;
    static_assert(N % P == 0, "a vector chunk is a whole number of 128-bit packs");
#pragma unroll
    for (int k = 0; k < N / P; ++k) {
      Pack<scalar_t> pack;
#pragma unroll
      for (int j = 0; j < P; ++j) pack.v[j] = v[k * P + j];
      reinterpret_cast<Pack<scalar_t>*>(p)[k] = pack;
    }
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      if (j < count) p[j] = v[j];
    }
  }
}

// Elements of chunk `chunk` (of N each) that exist in a tensor of n elements.
template <int N>
SUGAR_HD int chunk_count(int64_t chunk, int64_t n) {
  const int64_t rest = n - chunk * N;
  return rest < N ? static_cast<int>(rest) : N;
}

// ---- Exact mode: chunks of one 128-bit pack ----------------------------------------------

template <bool kVector, typename scalar_t>
SUGAR_HD void relu_chunk(const scalar_t* x, scalar_t* y, int64_t chunk, int64_t n) {
  constexpr int N = kPackElems<scalar_t>;
  const int count = chunk_count<N>(chunk, n);
  scalar_t v[N];
  load_chunk<kVector>(x + chunk * N, count, v);
#pragma unroll
  for (int j = 0; j < N; ++j) v[j] = relu(v[j]);
  store_chunk<kVector>(y + chunk * N, count, v);
}

// grad_x = grad_y * g(x) for the surrogate S (a template argument: one kernel per surrogate).
template <Surrogate S, bool kVector, typename scalar_t>
SUGAR_HD void backward_chunk(const scalar_t* grad_y, const scalar_t* x, scalar_t* grad_x,
                             int64_t chunk, int64_t n, opmath_t<scalar_t> alpha,
                             bool negative_only) {
  using T = opmath_t<scalar_t>;
  constexpr int N = kPackElems<scalar_t>;
  const int count = chunk_count<N>(chunk, n);
  scalar_t g[N], xv[N];
  load_chunk<kVector>(grad_y + chunk * N, count, g);
  load_chunk<kVector>(x + chunk * N, count, xv);
#pragma unroll
  for (int j = 0; j < N; ++j) {
    g[j] = static_cast<scalar_t>(static_cast<T>(g[j]) *
                                 grad_factor<S, T>(static_cast<T>(xv[j]), alpha, negative_only));
  }
  store_chunk<kVector>(grad_x + chunk * N, count, g);
}

// ---- Code modes: the tables of one thread block -------------------------------------------
// The search length, clamped to [0, num_thresholds]: the padded table then has at most
// 2 * (kMaxIntervals - 1) < kMaxPadded entries and no search reads past it.
SUGAR_HD int clamp_scan(int32_t scan, int num_thresholds) {
  return scan < 0 ? 0 : (scan > num_thresholds ? num_thresholds : scan);
}

// One bucket of the block's search table, 32 bits: the bucket start (bits 0-15), and, when no
// threshold falls in the bucket, kDirect and the code of every x there (bits 16-23). Every x of
// such a bucket has the same #{t : t < x} (bucket_of is monotone in x, so a threshold in a lower
// bucket is below x, one in a higher bucket above it): one table read instead of 2 + scan.
constexpr uint32_t kDirect = 1u << 31;

template <typename T>
struct BlockCodeTable {
  CodeTable<T> search;     // padded thresholds, interval codes, bucket mapping, scan
  const uint32_t* bucket;  // kSearchBuckets entries as above
};

// Step 1 of the fill; thread `tid` of `nthreads` does its share: thresholds padded with `scan`
// +inf entries, the interval codes, and the bucket starts clamped to [0, num_thresholds]. With
// these clamps a search reads thresholds [0, num_thresholds + scan) and ends at an interval
// <= num_thresholds (the +inf padding never counts), so even a corrupt search table cannot make
// a kernel read or write outside these arrays.
template <typename T>
SUGAR_HD void fill_code_tables(int tid, int nthreads, const T* thresholds,
                               const uint8_t* interval_codes, int num_thresholds,
                               const int32_t* bucket_start, int scan, T* padded_out,
                               uint8_t* interval_codes_out, uint32_t* bucket_out) {
  for (int i = tid; i < num_thresholds + scan; i += nthreads) {
    padded_out[i] = i < num_thresholds ? thresholds[i] : std::numeric_limits<T>::infinity();
  }
  for (int i = tid; i <= num_thresholds; i += nthreads) interval_codes_out[i] = interval_codes[i];
#pragma unroll 4
  for (int i = tid; i < kSearchBuckets; i += nthreads) {
    const int32_t s = bucket_start[i];
    bucket_out[i] = static_cast<uint32_t>(s < 0 ? 0 : (s > num_thresholds ? num_thresholds : s));
  }
}

template <typename T>
SUGAR_HD BlockCodeTable<T> block_code_table(const T* padded, const uint8_t* interval_codes,
                                            const uint32_t* bucket, int num_thresholds,
                                            int scan) {
  const CodeTable<T> search{padded,
                            interval_codes,
                            nullptr,  // the bucket starts are in `bucket`
                            num_thresholds ? padded[0] : T(0),
                            inverse_width(padded, num_thresholds),
                            scan};
  return {search, bucket};
}

// Step 2, after every thread finished step 1 (`table` reads the filled copies, `bucket` is
// table.bucket): marks the buckets with no threshold, with the code of their interval. For valid
// tables a threshold of bucket i, and the count for an x there, are found among thresholds
// [start, start + scan] (the search table's guarantee), so they are what the search would give.
// For any table the interval stays <= num_thresholds: reads stay inside the copies.
template <typename T>
SUGAR_HD void mark_direct_buckets(int tid, int nthreads, const BlockCodeTable<T>& table,
                                  int num_thresholds, uint32_t* bucket) {
  const CodeTable<T>& search = table.search;
  for (int i = tid; i < kSearchBuckets; i += nthreads) {
    const int start = static_cast<int>(bucket[i]);
    int below = start;
    bool alone = true;
    for (int k = 0; k <= search.scan && start + k < num_thresholds; ++k) {
      const int b = bucket_of(search.thresholds[start + k], search);
      alone = alone && b != i;
      below += k < search.scan && b < i ? 1 : 0;
    }
    const uint32_t code = search.interval_codes[below];
    bucket[i] = static_cast<uint32_t>(start) | (alone ? kDirect | (code << 16) : 0u);
  }
}

// interval_codes[#{t : t < x}], as code_of() (sugar_math.h) computes it; NaN -> interval 0.
template <typename T>
SUGAR_HD uint32_t block_code_of(T x, const BlockCodeTable<T>& table) {
  const uint32_t entry = table.bucket[bucket_of(x, table.search)];
  if (entry & kDirect) return (entry >> 16) & 0xFFu;
  const int first = static_cast<int>(entry & 0xFFFFu);
  int below = first;
  for (int k = 0; k < table.search.scan; ++k) {
    below += table.search.thresholds[first + k] < x ? 1 : 0;
  }
  return table.search.interval_codes[below];
}

// ---- Code modes: chunks of kCodeChunk elements, whose codes are exactly `bits` bytes -------
// kCodeChunk = 8 elements: 32 bytes of float (two 128-bit loads), 16 of half/bfloat16 (one), 64 of
// double (four); their codes are one 1/2/4/8-byte word, element j in bits [j * bits, (j+1) * bits)
// of the little-endian word, which is the byte layout of sugar_kernels/code_tables.py pack().
constexpr int kCodeChunk = 8;

template <int kBits>
using CodeWord = std::conditional_t<
    kBits == 1, uint8_t,
    std::conditional_t<kBits == 2, uint16_t, std::conditional_t<kBits == 4, uint32_t, uint64_t>>>;

// Bytes of codes for `count` elements.
template <int kBits>
SUGAR_HD int code_bytes(int count) {
  return (count * kBits + 7) / 8;
}

// The code word of a chunk: one load (kVector: full chunk, codes aligned to the word) or bytes.
template <int kBits, bool kVector>
SUGAR_HD uint64_t load_code_word(const uint8_t* p, int count) {
  if constexpr (kVector) {
    return *reinterpret_cast<const CodeWord<kBits>*>(p);
  } else {
    uint64_t word = 0;
    for (int b = 0; b < code_bytes<kBits>(count); ++b) {
      word |= static_cast<uint64_t>(p[b]) << (8 * b);
    }
    return word;
  }
}

template <int kBits, bool kVector>
SUGAR_HD void store_code_word(uint8_t* p, int count, uint64_t word) {
  if constexpr (kVector) {
    *reinterpret_cast<CodeWord<kBits>*>(p) = static_cast<CodeWord<kBits>>(word);
  } else {
    for (int b = 0; b < code_bytes<kBits>(count); ++b) {
      p[b] = static_cast<uint8_t>(word >> (8 * b));
    }
  }
}

// Forward of one chunk: y = relu(x) and its code word. Every x is loaded before any y is stored,
// so y may alias x (in-place); a chunk touches only its own elements and code bytes. The code is
// masked to `bits` bits, so a corrupt interval_codes table cannot spill into a neighbour's code.
template <int kBits, bool kVector, typename scalar_t, typename T>
SUGAR_HD void encode_chunk(const scalar_t* x, scalar_t* y, uint8_t* codes, int64_t chunk,
                           int64_t n, const BlockCodeTable<T>& table) {
  using Acc = std::conditional_t<kBits == 8, uint64_t, uint32_t>;
  constexpr Acc kMask = (Acc{1} << kBits) - 1;
  const int count = chunk_count<kCodeChunk>(chunk, n);
  scalar_t v[kCodeChunk];
  load_chunk<kVector>(x + chunk * kCodeChunk, count, v);
  Acc word = 0;
#pragma unroll
  for (int j = 0; j < kCodeChunk; ++j) {
    const Acc code = static_cast<Acc>(block_code_of(static_cast<T>(v[j]), table)) & kMask;
    word |= (j < count ? code : Acc{0}) << (j * kBits);
    v[j] = relu(v[j]);
  }
  store_chunk<kVector>(y + chunk * kCodeChunk, count, v);
  store_code_word<kBits, kVector>(codes + chunk * kBits, count, word);
}

// Backward of one chunk: grad_x = grad_y * levels[code] (levels has 2**bits entries).
template <int kBits, bool kVector, typename scalar_t, typename T>
SUGAR_HD void decode_chunk(const scalar_t* grad_y, const uint8_t* codes, const T* levels,
                           scalar_t* grad_x, int64_t chunk, int64_t n) {
  using Acc = std::conditional_t<kBits == 8, uint64_t, uint32_t>;
  constexpr Acc kMask = (Acc{1} << kBits) - 1;
  const int count = chunk_count<kCodeChunk>(chunk, n);
  const Acc word = static_cast<Acc>(load_code_word<kBits, kVector>(codes + chunk * kBits, count));
  scalar_t g[kCodeChunk];
  load_chunk<kVector>(grad_y + chunk * kCodeChunk, count, g);
#pragma unroll
  for (int j = 0; j < kCodeChunk; ++j) {
    const T level = levels[(word >> (j * kBits)) & kMask];
    g[j] = static_cast<scalar_t>(static_cast<T>(g[j]) * level);
  }
  store_chunk<kVector>(grad_x + chunk * kCodeChunk, count, g);
}

}  // namespace sugar
