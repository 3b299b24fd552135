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
  // value, so NaN is put back: NaN in, NaN out, as on every other path.
  static V exp(const V& x) { return V::blendv(x.exp_u20(), x, x.isnan()); }
  // 1 - erf: at::vec's erf is a fast polynomial, its erfc a much slower Sleef call (~6x here).
  // The cancellation for erfc(z) near 0 (large z) costs ~1e-7 absolute, inside the tolerance.
  static V erfc(const V& x) { return V(S(1)) - x.erf(); }
  static V abs(const V& x) { return x.abs(); }
  static V select(const V& m, const V& a, const V& b) { return V::blendv(b, a, m); }
};

namespace {

constexpr int64_t kGrainSize = 32768;  // elements per parallel task

// Load/store `count` (<= V::size()) elements as an opmath vector, converting half/bfloat16.
template <typename scalar_t, typename V = at::vec::Vectorized<at::opmath_type<scalar_t>>>
V load(const scalar_t* p, int64_t count) {
  if constexpr (std::is_same_v<scalar_t, typename V::value_type>) {
    return V::loadu(p, count);
  } else {
    typename V::value_type buf[V::size()] = {};
    for (int64_t j = 0; j < count; ++j) buf[j] = p[j];
    return V::loadu(buf);
  }
}

template <typename scalar_t, typename V>
void store(scalar_t* p, const V& v, int64_t count) {
  if constexpr (std::is_same_v<scalar_t, typename V::value_type>) {
    v.store(p, count);
  } else {
    typename V::value_type buf[V::size()];
    v.store(buf);
    for (int64_t j = 0; j < count; ++j) p[j] = static_cast<scalar_t>(buf[j]);
  }
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
    using V = at::vec::Vectorized<at::opmath_type<scalar_t>>;
    const auto* grad_y = static_cast<const scalar_t*>(grad_y_);
    const auto* x = static_cast<const scalar_t*>(x_);
    auto* grad_x = static_cast<scalar_t*>(grad_x_);
    const V alpha(static_cast<typename V::value_type>(params.alpha));
    dispatch_surrogate(params.surrogate, [&](auto surrogate) {  // one loop per surrogate
      constexpr Surrogate S = decltype(surrogate)::value;
      at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; i += V::size()) {
          const int64_t count = std::min<int64_t>(V::size(), end - i);
          const V g = grad_factor<S>(load(x + i, count), alpha, params.negative_only);
          store(grad_x + i, load(grad_y + i, count) * g, count);
        }
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
    const V xv = load(x + v, V::size());
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
