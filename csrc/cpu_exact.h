// The kernels both builds compile (cpu_build.h): the exact forward and backward, and the scalar
// forward of the code modes, which both builds' SIMD code kernels hand their rest to.
#pragma once

#include "cpu_vec.h"

#include <ATen/Parallel.h>

#include <cstdint>
#include <limits>

#include "kernel_entry_points.h"

namespace sugar {
namespace SUGAR_CPU_ISA {
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

void relu_forward(c10::ScalarType dtype, const void* x_, void* y_, int64_t n) {
  dispatch_float_types(dtype, "sugar::relu_forward", [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto* x = static_cast<const scalar_t*>(x_);
    auto* y = static_cast<scalar_t*>(y_);
    at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
      // x < 0 ? 0 : x in the storage type: -0.0 and NaN bits are kept.
      if constexpr (sizeof(scalar_t) == 2) {
        // half/bfloat16 on their bits (the compiler vectorises this; comparing c10::Half values
        // is a scalar conversion per element, ~30x slower): x < 0 exactly for the bit patterns
        // from the smallest negative subnormal (0x8001) up to -inf.
        const uint16_t neg_inf = (-std::numeric_limits<scalar_t>::infinity()).x;
        for (int64_t i = begin; i < end; ++i) {
          const uint16_t v = x[i].x;
          const bool negative = static_cast<uint16_t>(v - 0x8001u) <= neg_inf - 0x8001u;
          y[i].x = negative ? 0 : v;
        }
      } else {
        for (int64_t i = begin; i < end; ++i) y[i] = relu(x[i]);
      }
    });
  });
}

void relu_backward(c10::ScalarType dtype, const void* grad_y_, const void* x_, void* grad_x_,
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

// ---- Code modes: the scalar forward (float64, builds without SIMD code kernels, and the elements
// after the last whole SIMD step), one packed byte at a time with sugar_math.h's encode_byte. ----
// The forward of elements [done, n) (done: a whole number of bytes).
template <typename scalar_t, typename T>
void encode_rest(const scalar_t* x, scalar_t* y, uint8_t* codes, int64_t done, int64_t n,
                 int bits, const CodeTable<T>& table) {
  const int per = 8 / bits;
  at::parallel_for(done / per, packed_size(n, bits), kGrainSize / per,
                   [&](int64_t begin, int64_t end) {
    for (int64_t byte = begin; byte < end; ++byte) {
      encode_byte(x, y, codes, byte, n, bits, table);
    }
  });
}

}  // namespace
}  // namespace SUGAR_CPU_ISA
}  // namespace sugar
