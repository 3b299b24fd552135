// Host driver for the per-chunk functions of csrc/sugar_chunks.h: the very functions the CUDA
// kernels call per thread, run here over every chunk position, tail length, alignment and bits
// (built and run by tests/test_chunk_driver.py, with AddressSanitizer so that any read or write
// outside an array aborts). Chunks run in reverse order, so a chunk that wrote outside its own
// elements or code bytes would leave a wrong value behind. Results are compared bit for bit with
// a simple per-element reference (a linear count of thresholds below x, the packing order of
// sugar_kernels/code_tables.py); the full-size outputs are also written for the test to compare with
// the Python reference.
//
//   chunk_driver DTYPE BITS DIR   reads DIR/{x,grad_y}.bin (DTYPE) and DIR/{thresholds,levels}.bin
//                                 (opmath), DIR/interval_codes.bin (uint8), DIR/search.bin (int32);
//                                 writes DIR/{y,codes,grad_x}.out; prints "ok <cases>".
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <type_traits>
#include <vector>

#include "sugar_chunks.h"

namespace {

using namespace sugar;

int failures = 0;
long cases = 0;

#define EXPECT(cond, ...)                    \
  do {                                       \
    if (!(cond)) {                           \
      if (++failures <= 20) {                \
        std::fprintf(stderr, __VA_ARGS__);   \
        std::fprintf(stderr, "\n");          \
      }                                      \
    }                                        \
  } while (0)

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(2);
  }
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

template <typename T>
std::vector<T> read_array(const std::string& path) {
  const std::vector<char> bytes = read_file(path);
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

template <typename T>
void write_array(const std::string& path, const T* data, size_t count) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(count * sizeof(T)));
}

template <typename T>
bool same_bits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// A 16-byte aligned heap array whose element `offset` is returned: offset 0 aligned, 1 not.
template <typename T>
struct Buffer {
  std::vector<T> storage;
  T* data;
  Buffer(size_t count, size_t offset, T fill) : storage(count + offset + 16 / sizeof(T) + 8) {
    auto base = reinterpret_cast<uintptr_t>(storage.data());
    const uintptr_t aligned = (base + 15) / 16 * 16;
    data = reinterpret_cast<T*>(aligned) + offset;
    for (auto& v : storage) v = fill;
  }
};

// The tables of one "thread block", filled exactly as the kernel fills them (thread by thread).
template <typename T>
struct BlockTables {
  std::vector<T> padded = std::vector<T>(kMaxPadded);
  std::vector<uint8_t> codes = std::vector<uint8_t>(kMaxIntervals);
  std::vector<uint32_t> bucket = std::vector<uint32_t>(kSearchBuckets);
  BlockCodeTable<T> table;
  int direct = 0;  // buckets marked direct
  BlockTables(const std::vector<T>& thresholds, const std::vector<uint8_t>& interval_codes,
              const std::vector<int32_t>& search, int nthreads) {
    const int m = static_cast<int>(thresholds.size());
    const int scan = clamp_scan(search[0], m);
    for (int tid = nthreads - 1; tid >= 0; --tid) {
      fill_code_tables(tid, nthreads, thresholds.data(), interval_codes.data(), m,
                       search.data() + 1, scan, padded.data(), codes.data(), bucket.data());
    }
    // (__syncthreads() in the kernel)
    table = block_code_table(padded.data(), codes.data(), bucket.data(), m, scan);
    for (int tid = nthreads - 1; tid >= 0; --tid) {
      mark_direct_buckets(tid, nthreads, table, m, bucket.data());
    }
    for (const uint32_t entry : bucket) direct += entry & kDirect ? 1 : 0;
  }
};

// Reference: #{t : t < x} by a linear scan (NaN compares false: interval 0).
template <typename T>
int interval_reference(T x, const std::vector<T>& thresholds) {
  int below = 0;
  for (const T t : thresholds) below += t < x ? 1 : 0;
  return below;
}

template <typename scalar_t>
struct Data {
  using T = opmath_t<scalar_t>;
  std::vector<scalar_t> x, grad_y;
  std::vector<T> thresholds, levels;
  std::vector<uint8_t> interval_codes;
  std::vector<int32_t> search;
};

// One forward + backward over x[0, n) with the chunk functions (as the kernels would run them:
// vector path for full chunks when kVector, element path for the tail), checked against the
// reference. `offset` 1 makes every pointer misaligned (the kernels then use kVector = false).
template <int kBits, bool kVector, typename scalar_t>
void check_codes(const Data<scalar_t>& d, const BlockCodeTable<opmath_t<scalar_t>>& table,
                 int64_t n,
                 size_t offset, bool inplace, std::type_identity_t<std::vector<scalar_t>>* y_out,
                 std::vector<uint8_t>* codes_out,
                 std::type_identity_t<std::vector<scalar_t>>* grad_out) {
  using T = opmath_t<scalar_t>;
  ++cases;
  const int64_t chunks = (n + kCodeChunk - 1) / kCodeChunk;
  const int64_t full = kVector ? n / kCodeChunk : 0;
  const int64_t bytes = (n * kBits + 7) / 8;
  const scalar_t poison = static_cast<scalar_t>(-777.0f);
  Buffer<scalar_t> x(n, offset, poison), y(n, offset, poison), gy(n, offset, poison),
      gx(n, offset, poison);
  // codes at offset * kBits: aligned to the code word when offset is 0 (the vector path).
  Buffer<uint8_t> codes(bytes + 8, offset, 0xA5);
  std::copy(d.x.begin(), d.x.begin() + n, x.data);
  std::copy(d.grad_y.begin(), d.grad_y.begin() + n, gy.data);
  scalar_t* yp = inplace ? x.data : y.data;
  for (int64_t c = chunks - 1; c >= 0; --c) {
    if (c < full) {
      encode_chunk<kBits, true>(x.data, yp, codes.data, c, n, table);
    } else {
      encode_chunk<kBits, false>(x.data, yp, codes.data, c, n, table);
    }
  }
  for (int64_t c = chunks - 1; c >= 0; --c) {
    if (c < full) {
      decode_chunk<kBits, true>(gy.data, codes.data, d.levels.data(), gx.data, c, n);
    } else {
      decode_chunk<kBits, false>(gy.data, codes.data, d.levels.data(), gx.data, c, n);
    }
  }
  const char* how = kVector ? "vector" : "element";
  std::vector<uint8_t> packed(static_cast<size_t>(bytes), 0);
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t xi = d.x[i];
    const int code = d.interval_codes[interval_reference(static_cast<T>(xi), d.thresholds)];
    packed[i * kBits / 8] |= static_cast<uint8_t>(code << (i * kBits % 8));
    const scalar_t relu_ref = static_cast<T>(xi) < T(0) ? static_cast<scalar_t>(0.0f) : xi;
    EXPECT(same_bits(yp[i], relu_ref), "bits=%d %s n=%lld offset=%zu inplace=%d: y[%lld] wrong",
           kBits, how, static_cast<long long>(n), offset, inplace, static_cast<long long>(i));
    const scalar_t g_ref =
        static_cast<scalar_t>(static_cast<T>(d.grad_y[i]) * d.levels[code]);
    EXPECT(same_bits(gx.data[i], g_ref), "bits=%d %s n=%lld offset=%zu: grad_x[%lld] wrong",
           kBits, how, static_cast<long long>(n), offset, static_cast<long long>(i));
  }
  for (int64_t b = 0; b < bytes; ++b) {
    EXPECT(codes.data[b] == packed[b], "bits=%d %s n=%lld offset=%zu: code byte %lld is %d, "
           "expected %d", kBits, how, static_cast<long long>(n), offset,
           static_cast<long long>(b), codes.data[b], packed[b]);
  }
  for (int64_t b = bytes; b < bytes + 8; ++b) {
    EXPECT(codes.data[b] == 0xA5, "bits=%d %s n=%lld: wrote code byte %lld beyond the end",
           kBits, how, static_cast<long long>(n), static_cast<long long>(b));
  }
  for (int64_t i = n; i < n + 4; ++i) {  // elements past the end stay untouched
    EXPECT(same_bits(yp[i], poison) && same_bits(gx.data[i], poison),
           "bits=%d %s n=%lld: wrote element %lld beyond the end", kBits, how,
           static_cast<long long>(n), static_cast<long long>(i));
  }
  if (y_out) {
    y_out->assign(yp, yp + n);
    codes_out->assign(codes.data, codes.data + bytes);
    grad_out->assign(gx.data, gx.data + n);
  }
}

template <typename scalar_t>
const opmath_t<scalar_t>* table_levels(const Data<scalar_t>& d) {
  return d.levels.data();
}

// Exact mode: relu_chunk and backward_chunk<S> over every chunk and tail, against the scalar
// per-element formula.
template <bool kVector, typename scalar_t>
void check_exact(const Data<scalar_t>& d, int64_t n, size_t offset) {
  using T = opmath_t<scalar_t>;
  constexpr int N = kPackElems<scalar_t>;
  const int64_t chunks = (n + N - 1) / N;
  const int64_t full = kVector ? n / N : 0;
  const scalar_t poison = static_cast<scalar_t>(-777.0f);
  Buffer<scalar_t> x(n, offset, poison), y(n, offset, poison), gy(n, offset, poison),
      gx(n, offset, poison);
  std::copy(d.x.begin(), d.x.begin() + n, x.data);
  std::copy(d.grad_y.begin(), d.grad_y.begin() + n, gy.data);
  for (int64_t c = chunks - 1; c >= 0; --c) {
    if (c < full) {
      relu_chunk<true>(x.data, y.data, c, n);
    } else {
      relu_chunk<false>(x.data, y.data, c, n);
    }
  }
  ++cases;
  for (int64_t i = 0; i < n + 2; ++i) {
    const scalar_t ref = i < n ? (static_cast<T>(d.x[i]) < T(0) ? static_cast<scalar_t>(0.0f)
                                                                 : d.x[i])
                               : poison;
    EXPECT(same_bits(y.data[i], ref), "exact relu n=%lld offset=%zu: y[%lld] wrong",
           static_cast<long long>(n), offset, static_cast<long long>(i));
  }
  const T alpha = T(0.5);
  for (bool negative : {false, true}) {
    for (int s = 0; s < kSurrogateCount; ++s) {
      dispatch_surrogate(static_cast<Surrogate>(s), [&](auto surrogate) {
        constexpr Surrogate S = decltype(surrogate)::value;
        ++cases;
        for (int64_t c = chunks - 1; c >= 0; --c) {
          if (c < full) {
            backward_chunk<S, true>(gy.data, x.data, gx.data, c, n, alpha, negative);
          } else {
            backward_chunk<S, false>(gy.data, x.data, gx.data, c, n, alpha, negative);
          }
        }
        for (int64_t i = 0; i < n + 2; ++i) {
          const scalar_t ref =
              i < n ? static_cast<scalar_t>(static_cast<T>(d.grad_y[i]) *
                                            grad_factor<S, T>(static_cast<T>(d.x[i]), alpha,
                                                              negative))
                    : poison;
          EXPECT(same_bits(gx.data[i], ref), "exact backward s=%d n=%lld offset=%zu: [%lld]", s,
                 static_cast<long long>(n), offset, static_cast<long long>(i));
        }
      });
    }
  }
}

// Corrupt tables (as a direct op call on CUDA could pass them): the clamps keep every access
// inside the block's tables (AddressSanitizer aborts otherwise) and every code inside its bits.
template <int kBits, typename scalar_t>
void check_corrupt_tables(const Data<scalar_t>& d) {
  const int m = static_cast<int>(d.thresholds.size());
  const int32_t bad_scans[] = {100000, -1, m + 1, kMaxPadded, -2147483647 - 1};
  const int32_t bad_starts[] = {-5, m + 1, 2147483647, kMaxPadded};
  for (int32_t scan : bad_scans) {
    for (int32_t start : bad_starts) {
      Data<scalar_t> bad = d;
      bad.search[0] = scan;
      for (size_t i = 1; i < bad.search.size(); i += 3) bad.search[i] = start;
      for (auto& c : bad.interval_codes) c = static_cast<uint8_t>(c | 0xF0);
      const BlockTables<opmath_t<scalar_t>> tables(bad.thresholds, bad.interval_codes,
                                                   bad.search, 256);
      const int64_t n = 203;
      std::vector<scalar_t> x(d.x.begin(), d.x.begin() + n), y(n);
      std::vector<uint8_t> codes((n * kBits + 7) / 8 + 8, 0xA5);
      for (int64_t c = 0; c < (n + kCodeChunk - 1) / kCodeChunk; ++c) {
        encode_chunk<kBits, false>(x.data(), y.data(), codes.data(), c, n, tables.table);
      }
      ++cases;
      const size_t used = (n * kBits + 7) / 8;
      for (size_t b = used; b < codes.size(); ++b) {
        EXPECT(codes[b] == 0xA5, "corrupt tables: code byte %zu beyond the end written", b);
      }
      // The last byte's padding bits (beyond element n-1) stay zero: no code spilled over.
      const int tail_bits = static_cast<int>(n * kBits % 8);
      if (tail_bits) {
        EXPECT((codes[used - 1] >> tail_bits) == 0, "corrupt tables: code spilled past bits");
      }
    }
  }
}

template <typename scalar_t, int kBits>
int run(const std::string& dir) {
  using T = opmath_t<scalar_t>;
  Data<scalar_t> d;
  d.x = read_array<scalar_t>(dir + "/x.bin");
  d.grad_y = read_array<scalar_t>(dir + "/grad_y.bin");
  d.thresholds = read_array<T>(dir + "/thresholds.bin");
  d.levels = read_array<T>(dir + "/levels.bin");
  d.interval_codes = read_array<uint8_t>(dir + "/interval_codes.bin");
  d.search = read_array<int32_t>(dir + "/search.bin");
  const int64_t n_max = static_cast<int64_t>(d.x.size());
  std::vector<int64_t> sizes;
  for (int64_t n = 0; n <= 41; ++n) sizes.push_back(n);
  for (int64_t n : {255, 256, 257, 1001}) sizes.push_back(n);
  sizes.push_back(n_max);
  // Tables filled by 256 threads (the launch) and by 7 (another stride), each checked.
  for (int nthreads : {256, 7}) {
    const BlockTables<T> tables(d.thresholds, d.interval_codes, d.search, nthreads);
    // Both search paths run: buckets with a threshold (searched) and without (direct).
    EXPECT(tables.direct > 0 && tables.direct < kSearchBuckets, "%d direct buckets of %d",
           tables.direct, kSearchBuckets);
    for (int64_t n : sizes) {
      if (n > n_max) continue;
      const bool last = n == n_max && nthreads == 256;
      std::vector<scalar_t> y, g;
      std::vector<uint8_t> codes;
      check_codes<kBits, true>(d, tables.table, n, 0, false, last ? &y : nullptr, &codes, &g);
      check_codes<kBits, true>(d, tables.table, n, 0, true, nullptr, nullptr, nullptr);
      check_codes<kBits, false>(d, tables.table, n, 1, false, nullptr, nullptr, nullptr);
      check_codes<kBits, false>(d, tables.table, n, 1, true, nullptr, nullptr, nullptr);
      if (last) {
        write_array(dir + "/y.out", y.data(), y.size());
        write_array(dir + "/codes.out", codes.data(), codes.size());
        write_array(dir + "/grad_x.out", g.data(), g.size());
      }
    }
  }
  if (kBits == 8) {  // exact mode does not depend on bits: once per dtype
    for (int64_t n : sizes) {
      if (n > n_max || (n > 64 && n != n_max)) continue;
      check_exact<true>(d, n, 0);
      check_exact<false>(d, n, 1);
    }
  }
  check_corrupt_tables<kBits>(d);
  if (failures) {
    std::fprintf(stderr, "%d failures in %ld cases\n", failures, cases);
    return 1;
  }
  std::printf("ok %ld cases\n", cases);
  return 0;
}

template <typename scalar_t>
int run_bits(int bits, const std::string& dir) {
  switch (bits) {
    case 1: return run<scalar_t, 1>(dir);
    case 2: return run<scalar_t, 2>(dir);
    case 4: return run<scalar_t, 4>(dir);
    case 8: return run<scalar_t, 8>(dir);
    default: std::fprintf(stderr, "bits must be 1, 2, 4 or 8\n"); return 2;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: chunk_driver DTYPE BITS DIR\n");
    return 2;
  }
  const std::string dtype = argv[1];
  const int bits = std::atoi(argv[2]);
  if (dtype == "float32") return run_bits<float>(bits, argv[3]);
  if (dtype == "float64") return run_bits<double>(bits, argv[3]);
  if (dtype == "float16") return run_bits<c10::Half>(bits, argv[3]);
  if (dtype == "bfloat16") return run_bits<c10::BFloat16>(bits, argv[3]);
  std::fprintf(stderr, "unknown dtype %s\n", dtype.c_str());
  return 2;
}
