// Host-side declarations shared by ops.cpp (checks, allocation, registration) and the kernel
// files. Kernels work on the flat storage of dense tensors: pointers + element count.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <limits>

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

// y[i] = relu(x[i])
void relu_forward_cpu(c10::ScalarType dtype, const void* x, void* y, int64_t n);
// grad_x[i] = grad_y[i] * g(x[i])
void relu_backward_cpu(c10::ScalarType dtype, const void* grad_y, const void* x, void* grad_x,
                       int64_t n, const GradParams& params);

// Code modes. Tables are in the opmath type (float, or double for float64); `y` may equal `x`.
constexpr int kMaxIntervals = 1024;  // capacity of the threshold table (codes.py MAX_INTERVALS)

struct CodeArgs {
  int bits;
  const void* thresholds;  // opmath type
  const uint8_t* interval_codes;
  int num_thresholds;
};

// Copies the thresholds into `padded` (2 * top - 1 entries, +inf beyond the real ones).
template <typename T>
CodeTable<T> make_code_table(const CodeArgs& args, T* padded) {
  const int top = table_top_step(args.num_thresholds);
  const T* src = static_cast<const T*>(args.thresholds);
  for (int i = 0; i < 2 * top - 1; ++i) {
    padded[i] = i < args.num_thresholds ? src[i] : std::numeric_limits<T>::infinity();
  }
  return {padded, args.interval_codes, top};
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
