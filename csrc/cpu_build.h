// How the CPU kernels are built: every compile-time switch of the csrc/cpu_* files is set here,
// and each build's kernels are declared here.
//
// Two builds of the same kernels, one translation unit each, which share no symbol (at::vec's
// types live in a per-capability inline namespace, ours in SUGAR_CPU_ISA):
//   base    cpu_kernels.cpp with the flags setup.py gives every source (AVX2 on x86-64, or none);
//           namespace sugar::base; handles every call.
//   avx512  vec512_kernels.cpp (x86-64 with GCC, when setup.py defines SUGAR_CPU_AVX512), with
//           AVX-512 enabled below by a target pragma; namespace sugar::avx512; exact kernels and
//           the code modes of float opmath. cpu_dispatch.cpp runs it where torch itself runs
//           AVX-512 (at::get_cpu_capability), else the base build (also for
//           ATEN_CPU_CAPABILITY=default: every source is compiled for AVX2). Both give the same
//           bits (tests/test_cpu_kernels.py).
// A translation unit of the AVX-512 build defines SUGAR_CPU_BUILD_AVX512 and includes this header
// before any other: the target pragma and CPU_CAPABILITY must precede at::vec's headers.
//
// Switches (setup.py: -D on the command line; the others derived here):
//   CPU_CAPABILITY_AVX2     setup.py: the base build is compiled for AVX2 (at::vec's AVX2 types)
//   SUGAR_CPU_AVX512        setup.py: the AVX-512 build exists and may be dispatched to
//   SUGAR_CPU_BUILD_AVX512  this translation unit is the AVX-512 build
//   SUGAR_CPU_ISA           the namespace of this translation unit's build: base or avx512
//   SUGAR_CODES_AVX2        the base build has the AVX2 code-mode kernels (cpu_codes_avx2.h)
//   SUGAR_CPU_BASE_CAPABILITY  the base build's instruction set, as cpu_capability() reports it
#pragma once

#ifdef SUGAR_CPU_BUILD_AVX512
#if defined(__clang__) || !defined(__GNUC__)
#error "the AVX-512 build needs GCC's #pragma GCC target (setup.py adds it only for GCC)"
#endif
// The instruction set is enabled here rather than by command-line flags (setuptools applies one
// set of flags to all sources).
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
// GCC 12 reports ~1200 false "may be used uninitialized" warnings inside its own
// avx512fintrin.h (the `__Y = __Y` idiom of _mm512_undefined_*), and one ABI note about passing
// __m512 by value (-Wpsabi; these functions never cross a library boundary). Silenced here only.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wpsabi"
// g++ does not define the feature macros for a target pragma; the headers (Sleef's declarations)
// test them, so define what -mavx512f -mavx512bw -mavx512vl -mavx512dq would.
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#undef CPU_CAPABILITY
#undef CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define SUGAR_CPU_ISA avx512
#else
#define SUGAR_CPU_ISA base
#if defined(CPU_CAPABILITY_AVX2)
#define SUGAR_CODES_AVX2 1
#define SUGAR_CPU_BASE_CAPABILITY "AVX2"
#else
#define SUGAR_CPU_BASE_CAPABILITY "DEFAULT"
#endif
#endif

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "kernel_entry_points.h"

namespace sugar {

// The kernels of one build, behind the entry points of kernel_entry_points.h (cpu_dispatch.cpp).
// The code-mode kernels return false where the build has none for the call (the AVX-512 build:
// float64, tables it has no search for); the base build's always return true.
struct CpuBuild {
  void (*relu_forward)(c10::ScalarType dtype, const void* x, void* y, int64_t n);
  void (*relu_backward)(c10::ScalarType dtype, const void* grad_y, const void* x, void* grad_x,
                        int64_t n, const GradParams& params);
  bool (*relu_forward_codes)(c10::ScalarType dtype, const void* x, void* y, uint8_t* codes,
                             int64_t n, const CodeArgs& args);
  bool (*relu_backward_codes)(c10::ScalarType dtype, const void* grad_y, const uint8_t* codes,
                              const void* levels, void* grad_x, int64_t n, int bits);
};

namespace base {
extern const CpuBuild kBuild;  // cpu_kernels.cpp
}
namespace avx512 {
extern const CpuBuild kBuild;  // vec512_kernels.cpp, when SUGAR_CPU_AVX512 is defined
}

}  // namespace sugar
