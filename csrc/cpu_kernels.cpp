// CPU kernels: at::vec SIMD over opmath values (float for half/bfloat16), at::parallel_for.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>

#include "sugar_kernels.h"

namespace sugar {

// Math<T> for SIMD vectors: the same surrogate formulas as on scalars (see sugar_math.h).
template <typename S>
struct Math<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  using Mask = V;
  // exp_u20: at::vec's inlined polynomial exp (<= 20 ulp, ~1e-6 relative, inside the float32
  // tolerance; the Sleef call behind exp() costs ~1.5x more here). It maps NaN to a finite
  // value, so exp() puts NaN back; exp_nan_free() need not.
  static V exp_nan_free(const V& x) { return x.exp_u20(); }
  static V exp(const V& x) { return V::blendv(x.exp_u20(), x, x.isnan()); }
  // erfc(z) = t * P(t) * exp(-z^2) for z >= 0, 2 - that for z < 0, t = 1 / (1 + p|z|):
  // Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7, the polynomial at::vec's float erf uses),
  // written for erfc so that it reuses the caller's exponential and has no cancellation for
  // large z. float only; float64 calls the accurate erfc.
  static V erfc_given_exp(const V& z, const V& e) {
    if constexpr (std::is_same_v<S, float>) {
      const V t = V(1.f) / at::vec::fmadd(V(0.3275911f), z.abs(), V(1.f));
      V poly = at::vec::fmadd(V(1.061405429f), t, V(-1.453152027f));
      poly = at::vec::fmadd(poly, t, V(1.421413741f));
      poly = at::vec::fmadd(poly, t, V(-0.284496736f));
      poly = at::vec::fmadd(poly, t, V(0.254829592f));
      const V tail = poly * t * e;  // erfc(|z|)
      return V::blendv(tail, V(2.f) - tail, z < V(0.f));
    } else {
      return z.erfc();
    }
  }
  static V neg_abs(const V& x) { return x | V(S(-0.0)); }  // sets the sign bit (NaN stays NaN)
  static V clamp(const V& x, const V& lo, const V& hi) { return at::vec::clamp(x, lo, hi); }
  static V select(const V& m, const V& a, const V& b) { return V::blendv(b, a, m); }
};

namespace {

constexpr int64_t kGrainSize = 32768;  // elements per parallel task

// A chunk of elements as opmath vectors: two Vectorized<opmath> per chunk for every dtype (one
// Vectorized<half/bfloat16> converts to two float vectors; float/double are unrolled by two for
// instruction-level parallelism). Full chunks and the tail of a range go through the same
// conversions, so every element's result is independent of where a thread's range starts.
template <typename scalar_t>
struct Chunk {
  using T = at::opmath_type<scalar_t>;
  using V = at::vec::Vectorized<T>;
  using VS = at::vec::Vectorized<scalar_t>;
  static constexpr bool kReduced = !std::is_same_v<scalar_t, T>;
  static constexpr int64_t kSize = 2 * V::size();
  static_assert(!kReduced || VS::size() == kSize, "one reduced vector holds two float vectors");

  V lo, hi;

  static Chunk load(const scalar_t* p, int64_t count = kSize) {
    if constexpr (kReduced) {
      auto [a, b] = at::vec::convert_to_float<scalar_t>(VS::loadu(p, count));
      return {a, b};
    } else if (count == kSize) {
      return {V::loadu(p), V::loadu(p + V::size())};
    } else {
      const int64_t first = std::min<int64_t>(count, V::size());
      return {V::loadu(p, first), V::loadu(p + first, count - first)};
    }
  }

  void store(scalar_t* p, int64_t count = kSize) const {
    if constexpr (kReduced) {
      at::vec::convert_from_float<scalar_t>(lo, hi).store(p, count);
    } else if (count == kSize) {
      lo.store(p);
      hi.store(p + V::size());
    } else {
      const int64_t first = std::min<int64_t>(count, V::size());
      lo.store(p, first);
      if (count > first) hi.store(p + first, count - first);
    }
  }
};

// Calls body(i, count) over [begin, end) in chunks: full ones, then the tail.
template <int64_t kSize, typename F>
inline void for_chunks(int64_t begin, int64_t end, F&& body) {
  int64_t i = begin;
  for (; i + kSize <= end; i += kSize) body(i, kSize);
  if (i < end) body(i, end - i);
}

}  // namespace

namespace {

// grad_x = grad_y * g(x) on [begin, end). flatten: GCC otherwise keeps at::vec's exp/erf as
// out-of-line calls in this loop and spills every live vector around them (~2x slower).
template <Surrogate S, typename scalar_t, typename T>
__attribute__((flatten)) void backward_range(const scalar_t* grad_y, const scalar_t* x,
                                             scalar_t* grad_x, int64_t begin, int64_t end,
                                             T alpha_, bool negative_only) {
  using C = Chunk<scalar_t>;
  const typename C::V alpha(alpha_);
  for_chunks<C::kSize>(begin, end, [&](int64_t i, int64_t count) {
    const C xs = C::load(x + i, count);
    C g = C::load(grad_y + i, count);
    g.lo = g.lo * grad_factor<S>(xs.lo, alpha, negative_only);
    g.hi = g.hi * grad_factor<S>(xs.hi, alpha, negative_only);
    g.store(grad_x + i, count);
  });
}

}  // namespace

void relu_forward_cpu(c10::ScalarType dtype, const void* x_, void* y_, int64_t n) {
  dispatch_float_types(dtype, "sugar::relu_forward", [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto* x = static_cast<const scalar_t*>(x_);
    auto* y = static_cast<scalar_t*>(y_);
    at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
      // In the storage type, so every output bit equals torch.relu's (-0.0 and NaN kept).
      for (int64_t i = begin; i < end; ++i) y[i] = relu(x[i]);
    });
  });
}

void relu_backward_cpu(c10::ScalarType dtype, const void* grad_y_, const void* x_, void* grad_x_,
                       int64_t n, const GradParams& params) {
  dispatch_float_types(dtype, "sugar::relu_backward", [&](auto tag) {
    using scalar_t = decltype(tag);
    using C = Chunk<scalar_t>;
    const auto* grad_y = static_cast<const scalar_t*>(grad_y_);
    const auto* x = static_cast<const scalar_t*>(x_);
    auto* grad_x = static_cast<scalar_t*>(grad_x_);
    const auto alpha = static_cast<typename C::T>(params.alpha);
    const bool negative_only = params.negative_only;
    dispatch_surrogate(params.surrogate, [&](auto surrogate) {  // one loop per surrogate
      at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
        backward_range<decltype(surrogate)::value>(grad_y, x, grad_x, begin, end, alpha,
                                                   negative_only);
      });
    });
  });
}

namespace {

// Forward of one block of kBlock elements (a whole number of packed bytes) with SIMD:
// interval_of() on Vectorized lanes (gathers), then the codes (gathered from an int32 copy of
// interval_codes) packed kBits at a time. Float opmath only.
constexpr int kBlock = at::vec::Vectorized<float>::size() > 8 ? at::vec::Vectorized<float>::size() : 8;

template <int kBits, typename scalar_t>
void encode_block_simd(const scalar_t* x, scalar_t* y, uint8_t* codes,
                       const CodeTable<float>& table, const int32_t* interval_codes32) {
  using V = at::vec::Vectorized<float>;
  using VI = at::vec::Vectorized<int32_t>;
  static_assert(VI::size() == V::size(), "gather needs one int32 lane per float lane");
  constexpr int kPer = 8 / kBits;
  int32_t code[kBlock];
  const V lo(table.lo), inv_width(table.inv_width), zero(0.f), last(kSearchBuckets - 1);
  const auto* bucket_start = reinterpret_cast<const float*>(table.bucket_start);
  const auto* codes32 = reinterpret_cast<const float*>(interval_codes32);
  for (int v = 0; v < kBlock; v += V::size()) {
    V xv;
    if constexpr (std::is_same_v<scalar_t, float>) {
      xv = V::loadu(x + v);
    } else {
      float buf[V::size()];
      for (int j = 0; j < V::size(); ++j) buf[j] = x[v + j];
      xv = V::loadu(buf);
    }
    // interval_of() on all lanes: bucket, its first candidate, then `scan` comparisons.
    V u = (xv - lo) * inv_width;
    u = V::blendv(zero, u, u > zero);  // NaN -> 0
    u = V::blendv(u, last, u > last);
    const VI bucket = at::vec::convert_to_int_of_same_size(u);
    const VI first = at::vec::cast<int32_t>(at::vec::gather<sizeof(float)>(bucket_start, bucket));
    VI below = first;
    for (int k = 0; k < table.scan; ++k) {
      const V t = at::vec::gather<sizeof(float)>(table.thresholds, first + VI(k));
      below = below - at::vec::cast<int32_t>(t < xv);  // a true lane is -1
    }
    at::vec::cast<int32_t>(at::vec::gather<sizeof(float)>(codes32, below)).store(code + v);
    if constexpr (std::is_same_v<scalar_t, float>) {
      V::blendv(xv, zero, xv < zero).store(y + v);  // relu(): keeps -0.0 and NaN
    }
  }
  if constexpr (!std::is_same_v<scalar_t, float>) {
    for (int j = 0; j < kBlock; ++j) y[j] = relu(x[j]);
  }
  for (int byte = 0; byte < kBlock / kPer; ++byte) {
    uint32_t packed = 0;
    for (int j = 0; j < kPer; ++j) packed |= static_cast<uint32_t>(code[byte * kPer + j]) << (j * kBits);
    codes[byte] = static_cast<uint8_t>(packed);
  }
}

template <int kBits, typename scalar_t>
void encode_blocks_simd(const scalar_t* x, scalar_t* y, uint8_t* codes, int64_t blocks,
                        const CodeTable<float>& table, const int32_t* interval_codes32) {
  constexpr int64_t kBytesPerBlock = kBlock * kBits / 8;
  at::parallel_for(0, blocks, kGrainSize / kBlock, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      encode_block_simd<kBits>(x + b * kBlock, y + b * kBlock, codes + b * kBytesPerBlock, table,
                               interval_codes32);
    }
  });
}

}  // namespace

void relu_forward_codes_cpu(c10::ScalarType dtype, const void* x_, void* y_, uint8_t* codes,
                            int64_t n, const CodeArgs& args) {
  dispatch_float_types(dtype, "sugar::relu_forward_codes", [&](auto tag) {
    using scalar_t = decltype(tag);
    using T = at::opmath_type<scalar_t>;
    const auto* x = static_cast<const scalar_t*>(x_);
    auto* y = static_cast<scalar_t*>(y_);
    T padded[kMaxPadded];
    const CodeTable<T> table = make_code_table<T>(args, padded);
    // Float opmath: SIMD over whole blocks. The rest (and float64) byte by byte.
    int64_t blocks = 0;
    if constexpr (std::is_same_v<T, float>) {
      int32_t interval_codes32[kMaxIntervals];
      for (int i = 0; i <= args.num_thresholds; ++i) interval_codes32[i] = args.interval_codes[i];
      blocks = n / kBlock;
      switch (args.bits) {
        case 1: encode_blocks_simd<1>(x, y, codes, blocks, table, interval_codes32); break;
        case 2: encode_blocks_simd<2>(x, y, codes, blocks, table, interval_codes32); break;
        case 4: encode_blocks_simd<4>(x, y, codes, blocks, table, interval_codes32); break;
        default: encode_blocks_simd<8>(x, y, codes, blocks, table, interval_codes32); break;
      }
    }
    const int per = 8 / args.bits;
    at::parallel_for(blocks * kBlock / per, packed_size(n, args.bits), kGrainSize / per,
                     [&](int64_t begin, int64_t end) {
      for (int64_t byte = begin; byte < end; ++byte) {
        encode_byte(x, y, codes, byte, n, args.bits, table);
      }
    });
  });
}

void relu_backward_codes_cpu(c10::ScalarType dtype, const void* grad_y_, const uint8_t* codes,
                             const void* levels_, void* grad_x_, int64_t n, int bits) {
  dispatch_float_types(dtype, "sugar::relu_backward_codes", [&](auto tag) {
    using scalar_t = decltype(tag);
    using T = at::opmath_type<scalar_t>;
    const auto* grad_y = static_cast<const scalar_t*>(grad_y_);
    const auto* levels = static_cast<const T*>(levels_);
    auto* grad_x = static_cast<scalar_t*>(grad_x_);
    at::parallel_for(0, packed_size(n, bits), kGrainSize * bits / 8, [&](int64_t begin,
                                                                          int64_t end) {
      for (int64_t byte = begin; byte < end; ++byte) {
        decode_byte(grad_y, codes, levels, grad_x, byte, n, bits);
      }
    });
  });
}

}  // namespace sugar
