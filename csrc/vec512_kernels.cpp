// The AVX-512 build of the CPU kernels: cpu_kernels.cpp again, with AVX-512 code generation
// and at::vec's AVX-512 implementation, into namespace sugar::avx512 (called only after the
// run-time check in cpu_kernels.cpp). setup.py adds this file on x86-64 with GCC.
//
// The instruction set is enabled here rather than by command-line flags (setuptools applies one
// set of flags to all sources). This file's name must sort after every other C++ source
// (setuptools links objects in sorted order): an inline function from a shared header that
// several objects emit is then taken from a base-flag object, never from this one.
#if defined(__clang__) || !defined(__GNUC__)
#error "vec512_kernels.cpp needs GCC's #pragma GCC target (setup.py adds it only for GCC)"
#endif
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

#include "cpu_kernels.cpp"
