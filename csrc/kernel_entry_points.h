// The kernels' entry points as the host code (ops.cpp) calls them, defined in cpu_dispatch.cpp
// and cuda_kernels.cu, and the host-side helpers they share (dtype dispatch, code tables).
// Kernels work on the flat storage of dense tensors: pointers + element count.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <limits>

#include "sugar_limits.h"
#include "sugar_math.h"

namespace sugar {

// Calls f(scalar_t{}) for the four floating dtypes the ops support.
template <typename F>
void dispatch_float_types(c10::ScalarType dtype, const char* op, F&& f) {
  switch (dtype) {
    case c10::ScalarType::Float: return f(float{});
    case c10::ScalarType::Double: return f(double{});
    case c10::ScalarType::Half: return f(c10::Half{});
    case c10::ScalarType::BFloat16: return f(c10::BFloat16{});
    default:
      TORCH_CHECK(false, op, ": expected a float32, float64, float16 or bfloat16 tensor, got ",
                  c10::toString(dtype));
  }
}

// The instruction set the CPU kernels run with: "AVX512", "AVX2" or "DEFAULT" (chosen at the
// first call from torch's own choice, at::get_cpu_capability, and what was built).
const char* cpu_capability();

// y[i] = relu(x[i])
void relu_forward_cpu(c10::ScalarType dtype, const void* x, void* y, int64_t n);
// grad_x[i] = grad_y[i] * g(x[i])
void relu_backward_cpu(c10::ScalarType dtype, const void* grad_y, const void* x, void* grad_x,
                       int64_t n, const GradParams& params);

// Code modes. Tables are in the opmath type (float, or double for float64); `y` may equal `x`.
// Capacities: kMaxIntervals, kMaxPadded (sugar_limits.h).

struct CodeArgs {
  int bits;
  const void* thresholds;  // opmath type, sorted
  const uint8_t* interval_codes;
  int num_thresholds;
  const int32_t* search;  // [scan, bucket starts...] (host or device memory, like the tensors)
};

// Host side (CPU): copies the thresholds into `padded` (num_thresholds + scan entries, +inf
// beyond the real ones) and derives the bucket mapping from the first and last threshold.
// Needs tables that ops.cpp validated (scan and bucket starts in [0, num_thresholds]).
template <typename T>
CodeTable<T> make_code_table(const CodeArgs& args, T* padded) {
  const T* src = static_cast<const T*>(args.thresholds);
  const int m = args.num_thresholds;
  const int scan = args.search[0];
  for (int i = 0; i < m + scan; ++i) {
    padded[i] = i < m ? src[i] : std::numeric_limits<T>::infinity();
  }
  return {padded, args.interval_codes, args.search + 1, m ? src[0] : T(0), inverse_width(src, m),
          scan};
}

inline int64_t packed_size(int64_t n, int bits) {
  const int per = 8 / bits;
  return (n + per - 1) / per;
}

void relu_forward_codes_cpu(c10::ScalarType dtype, const void* x, void* y, uint8_t* codes,
                            int64_t n, const CodeArgs& args);
void relu_backward_codes_cpu(c10::ScalarType dtype, const void* grad_y, const uint8_t* codes,
                             const void* levels, void* grad_x, int64_t n, int bits);

#ifdef SUGAR_WITH_CUDA
void relu_forward_codes_cuda(c10::ScalarType dtype, const void* x, void* y, uint8_t* codes,
                             int64_t n, const CodeArgs& args);
void relu_backward_codes_cuda(c10::ScalarType dtype, const void* grad_y, const uint8_t* codes,
                              const void* levels, void* grad_x, int64_t n, int bits);
void relu_forward_cuda(c10::ScalarType dtype, const void* x, void* y, int64_t n);
void relu_backward_cuda(c10::ScalarType dtype, const void* grad_y, const void* x, void* grad_x,
                        int64_t n, const GradParams& params);
#endif

}  // namespace sugar
