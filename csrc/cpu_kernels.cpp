// CPU kernels: at::vec SIMD over opmath values (float for half/bfloat16), at::parallel_for.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

#include "sugar_kernels.h"

namespace sugar {

// Math<T> for SIMD vectors: the same surrogate formulas as on scalars (see sugar_math.h).
template <typename S>
struct Math<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  using Mask = V;
  static V exp(const V& x) { return x.exp(); }
  static V erfc(const V& x) { return x.erfc(); }
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
    at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; i += V::size()) {
        const int64_t count = std::min<int64_t>(V::size(), end - i);
        const V g = load(grad_y + i, count) * grad_factor(load(x + i, count), params);
        store(grad_x + i, g, count);
      }
    });
  });
}

void relu_forward_codes_cpu(c10::ScalarType dtype, const void* x_, void* y_, uint8_t* codes,
                            int64_t n, const CodeArgs& args) {
  dispatch_float_types(dtype, "sugar::relu_forward_codes", [&](auto tag) {
    using scalar_t = decltype(tag);
    using T = at::opmath_type<scalar_t>;
    const auto* x = static_cast<const scalar_t*>(x_);
    auto* y = static_cast<scalar_t*>(y_);
    const CodeTable<T> table = make_code_table<T>(args);
    const int64_t bytes = packed_size(n, args.bits);
    at::parallel_for(0, bytes, kGrainSize * args.bits / 8, [&](int64_t begin, int64_t end) {
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
