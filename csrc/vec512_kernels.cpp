// The AVX-512 build of the CPU kernels (cpu_build.h): at::vec's AVX-512 implementation and the
// AVX-512 code modes, into namespace sugar::avx512, called only after the run-time check in
// cpu_dispatch.cpp. setup.py adds this file on x86-64 with GCC.
//
// This file's name must sort after every other C++ source (setuptools links objects in sorted
// order): an inline function from a shared header that several objects emit is then taken from a
// base-flag object, never from this one.
#define SUGAR_CPU_BUILD_AVX512 1
#include "cpu_build.h"  // first: enables AVX-512 for everything below

#include "cpu_codes_avx512.h"
#include "cpu_exact.h"

namespace sugar::avx512 {

const CpuBuild kBuild = {&relu_forward, &relu_backward, &relu_forward_codes,
                         &relu_backward_codes};

}  // namespace sugar::avx512
