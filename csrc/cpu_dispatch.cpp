// The CPU entry points of kernel_entry_points.h: each call runs the AVX-512 build where torch
// itself runs AVX-512, else the base build (cpu_build.h). torch's choice
// (at::get_cpu_capability) honours ATEN_CPU_CAPABILITY=default/avx2/avx512 and the CPU's
// features; the CPU check below repeats the one that matters for safety.
#include "cpu_build.h"

#include <ATen/Version.h>  // at::get_cpu_capability

#include "kernel_entry_points.h"

namespace sugar {
namespace {

bool use_avx512() {
#ifdef SUGAR_CPU_AVX512
  static const bool yes = at::get_cpu_capability() == "AVX512" &&
                          __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return yes;
#else
  return false;
#endif
}

const CpuBuild& preferred() {
#ifdef SUGAR_CPU_AVX512
  if (use_avx512()) return avx512::kBuild;
#endif
  return base::kBuild;
}

}  // namespace

const char* cpu_capability() { return use_avx512() ? "AVX512" : SUGAR_CPU_BASE_CAPABILITY; }

void relu_forward_cpu(c10::ScalarType dtype, const void* x, void* y, int64_t n) {
  preferred().relu_forward(dtype, x, y, n);
}

void relu_backward_cpu(c10::ScalarType dtype, const void* grad_y, const void* x, void* grad_x,
                       int64_t n, const GradParams& params) {
  preferred().relu_backward(dtype, grad_y, x, grad_x, n, params);
}

void relu_forward_codes_cpu(c10::ScalarType dtype, const void* x, void* y, uint8_t* codes,
                            int64_t n, const CodeArgs& args) {
  if (!preferred().relu_forward_codes(dtype, x, y, codes, n, args)) {
    base::kBuild.relu_forward_codes(dtype, x, y, codes, n, args);
  }
}

void relu_backward_codes_cpu(c10::ScalarType dtype, const void* grad_y, const uint8_t* codes,
                             const void* levels, void* grad_x, int64_t n, int bits) {
  if (!preferred().relu_backward_codes(dtype, grad_y, codes, levels, grad_x, n, bits)) {
    base::kBuild.relu_backward_codes(dtype, grad_y, codes, levels, grad_x, n, bits);
  }
}

}  // namespace sugar
