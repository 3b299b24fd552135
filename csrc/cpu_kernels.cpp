// The base build of the CPU kernels (cpu_build.h): with the flags setup.py gives every source
// (AVX2 on x86-64), into namespace sugar::base. It handles every call.
#include "cpu_build.h"  // first: sets the build's switches

#include "cpu_codes_avx2.h"
#include "cpu_exact.h"

namespace sugar::base {

const CpuBuild kBuild = {&relu_forward, &relu_backward, &relu_forward_codes,
                         &relu_backward_codes};

}  // namespace sugar::base
