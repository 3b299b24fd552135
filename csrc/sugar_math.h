// The surrogate math, shared by the CPU kernels (scalar and at::vec::Vectorized) and the CUDA
// kernels (device scalars). Everything here is written once against a small "Math<T>" trait:
// arithmetic uses T's operators, comparisons produce Math<T>::Mask, and branches are selects, so
// the same function body compiles for float, double and SIMD vectors. The formulas are the ones
// documented in sugar_kernels/surrogates.py (surrogate_derivative), which the tests compare
// against torch's autograd.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define SUGAR_HD __host__ __device__ __forceinline__
#else
#define SUGAR_HD inline __attribute__((always_inline))
#endif

// Surrogate (the enum), kSurrogateNames and dispatch_surrogate, generated from the catalogue.
#include "_surrogates.h"

namespace sugar {

struct GradParams {
  Surrogate surrogate;
  double alpha;        // ignored by surrogates without a parameter
  bool negative_only;  // region="negative": g(x) = 1 for x > 0
};

constexpr double kSeluLambda = 1.0507009873554805;
constexpr double kSeluAlpha = 1.6732632423543772;
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
// s'(x) equals its limit at |x| = 1e4 far below float64 resolution; clamping there turns +-inf
// into finite inputs (otherwise inf * 0 = NaN). NaN passes through the clamp unchanged.
constexpr double kDerivativeClamp = 1.0e4;

// Math<T>: the few non-operator functions the formulas need, per value type. The scalar ones
// are below; the SIMD one (csrc/cpu_vec.h) may take the shortcuts the comments allow.
//   exp(x)                 e^x, NaN for NaN
//   exp_nonpositive(x)     e^x for x <= 0 where a NaN x makes the caller's result NaN anyway:
//                          any value for x > 0 or NaN (the SIMD version skips those cases)
//   erfc_given_exp(z, e)   erfc(z), given e = exp(-z*z) (the SIMD float version uses it)
//   neg_abs(x)             -|x|
//   clamp(x, lo, hi)       min(max(x, lo), hi), NaN stays NaN
template <typename T>
struct Math;

template <>
struct Math<float> {
  using Mask = bool;
  static SUGAR_HD float exp(float x) { return ::expf(x); }
  static SUGAR_HD float exp_nonpositive(float x) { return ::expf(x); }
  static SUGAR_HD float erfc_given_exp(float z, float) { return ::erfcf(z); }
  static SUGAR_HD float neg_abs(float x) { return -::fabsf(x); }
  static SUGAR_HD float clamp(float x, float lo, float hi) {
    return x < lo ? lo : (x > hi ? hi : x);
  }
  static SUGAR_HD float select(bool m, float a, float b) { return m ? a : b; }
};

template <>
struct Math<double> {
  using Mask = bool;
  static SUGAR_HD double exp(double x) { return ::exp(x); }
  static SUGAR_HD double exp_nonpositive(double x) { return ::exp(x); }
  static SUGAR_HD double erfc_given_exp(double z, double) { return ::erfc(z); }
  static SUGAR_HD double neg_abs(double x) { return -::fabs(x); }
  static SUGAR_HD double clamp(double x, double lo, double hi) {
    return x < lo ? lo : (x > hi ? hi : x);
  }
  static SUGAR_HD double select(bool m, double a, double b) { return m ? a : b; }
};

// sigma(x), sigma(-x) and e = exp(-|x|), from one exp and without cancellation in 1 - sigma.
template <typename T>
struct SigmoidPair {
  T sig, sig_c, e;
};

// x must not be NaN-sensitive: callers multiply by x, so a NaN x gives NaN whatever e is.
template <typename T>
SUGAR_HD SigmoidPair<T> sigmoid_pair(T x) {
  using M = Math<T>;
  const T e = M::exp_nonpositive(M::neg_abs(x));
  const T inv = T(1) / (T(1) + e);
  const auto pos = x >= T(0);
  return {M::select(pos, inv, e * inv), M::select(pos, e * inv, inv), e};
}

template <Surrogate>
constexpr bool kNoFormula = false;

// s'(x) for the surrogate S (a compile-time constant, so each instantiation is branch-free).
template <Surrogate S, typename T>
SUGAR_HD T surrogate_derivative(T x, T alpha) {
  using M = Math<T>;
  const T one(1), zero(0), lim(kDerivativeClamp);
  x = M::clamp(x, T(0) - lim, lim);
  if constexpr (S == Surrogate::bsilu) {
    const SigmoidPair<T> p = sigmoid_pair(x);
    return p.sig + (x + alpha) * p.sig * p.sig_c;
  } else if constexpr (S == Surrogate::nelu) {
    const T d = one + x * x;
    return M::select(x > zero, one, T(2) * alpha * x / (d * d));
  } else if constexpr (S == Surrogate::elu) {
    return M::select(x > zero, one, alpha * M::exp(x));
  } else if constexpr (S == Surrogate::selu) {
    return T(kSeluLambda) * M::select(x > zero, one, T(kSeluAlpha) * M::exp(x));
  } else if constexpr (S == Surrogate::gelu) {
    // One exponential for both: exp(-x^2/2) is the pdf's and erfc's exp(-z^2), z = -x/sqrt2.
    const T e = M::exp_nonpositive(T(-0.5) * x * x);
    const T cdf = T(0.5) * M::erfc_given_exp((zero - x) * T(kInvSqrt2), e);
    return cdf + x * (e * T(kInvSqrt2Pi));
  } else if constexpr (S == Surrogate::silu) {
    const SigmoidPair<T> p = sigmoid_pair(x);
    return p.sig * (one + x * p.sig_c);
  } else if constexpr (S == Surrogate::mish) {
    // tanh(softplus(x)) = n / (n + 2) with n = e^x (e^x + 2), rewritten with e = exp(-|x|).
    const SigmoidPair<T> p = sigmoid_pair(x);
    const T e = p.e;
    const auto pos = x >= zero;
    const T n = e * (e + T(2));
    const T den = M::select(pos, one + T(2) * e + T(2) * e * e, n + T(2));
    const T tanh_sp = M::select(pos, one + T(2) * e, n) / den;
    const T one_minus = M::select(pos, T(2) * e * e, T(2)) / den;
    return tanh_sp + x * p.sig * one_minus * (one + tanh_sp);
  } else if constexpr (S == Surrogate::leaky_relu) {
    return M::select(x > zero, one, alpha);
  } else {
    static_assert(kNoFormula<S>, "surrogate_derivative has no branch for this surrogate");
  }
}

// g(x) for the surrogate S: what backward multiplies grad_y by (region "all" or "negative").
template <Surrogate S, typename T>
SUGAR_HD T grad_factor(T x, T alpha, bool negative_only) {
  const T d = surrogate_derivative<S, T>(x, alpha);
  return negative_only ? Math<T>::select(x > T(0), T(1), d) : d;
}

// Forward: exactly torch.relu (keeps -0.0 and NaN, as clamp_min(x, 0) does).
template <typename T>
SUGAR_HD T relu(T x) {
  return x < T(0) ? T(0) : x;
}

// ---- Code modes (bits = 8/4/2/1): see sugar_kernels/code_tables.py for how the tables are built. ----
// The x axis is cut at sorted `thresholds` into intervals; each interval has a code (the index of
// the gradient level nearest to g(x) there). Codes are packed 8/bits per byte, element i of the
// logical tensor in bits [(i % per) * bits, ...) of byte i / per.
constexpr int kSearchBuckets = 4096;  // sugar_kernels/code_tables.py SEARCH_BUCKETS

template <typename T>
struct CodeTable {
  const T* thresholds;            // sorted, followed by at least `scan` entries of +inf
  const uint8_t* interval_codes;  // one code per interval (#thresholds + 1)
  const int32_t* bucket_start;    // kSearchBuckets entries (code_tables.py search_table)
  T lo, inv_width;                // bucket of x: (x - lo) * inv_width, clamped
  int scan;                       // comparisons after bucket_start, the same for every bucket
};

// The bucket mapping's scale: kSearchBuckets over [first, last threshold] (0 if that is empty).
template <typename T>
SUGAR_HD T inverse_width(const T* thresholds, int count) {
  const T span = count ? thresholds[count - 1] - thresholds[0] : T(0);
  return span > T(0) ? T(kSearchBuckets) / span : T(0);
}

// Which bucket of the search table x falls in; NaN and -inf go to bucket 0.
template <typename T>
SUGAR_HD int bucket_of(T x, const CodeTable<T>& table) {
  T u = (x - table.lo) * table.inv_width;
  u = u > T(0) ? u : T(0);
  u = u < T(kSearchBuckets - 1) ? u : T(kSearchBuckets - 1);
  return static_cast<int>(u);
}

// #{t : t < x}: start at the bucket's first candidate, add `scan` independent comparisons (the
// +inf padding is never below x). NaN compares false everywhere and lands in interval 0.
template <typename T>
SUGAR_HD int interval_of(T x, const CodeTable<T>& table) {
  const int first = table.bucket_start[bucket_of(x, table)];
  int below = first;
  for (int k = 0; k < table.scan; ++k) below += table.thresholds[first + k] < x ? 1 : 0;
  return below;
}

template <typename T>
SUGAR_HD uint8_t code_of(T x, const CodeTable<T>& table) {
  return table.interval_codes[interval_of(x, table)];
}

// Forward of one packed byte: y = relu(x) and the byte of codes for elements
// [byte * per, byte * per + per) (fewer in the last byte). y may alias x (in-place).
template <typename scalar_t, typename T>
SUGAR_HD void encode_byte(const scalar_t* x, scalar_t* y, uint8_t* codes, int64_t byte, int64_t n,
                          int bits, const CodeTable<T>& table) {
  const int per = 8 / bits;
  const int64_t first = byte * per;
  const int count = n - first < per ? static_cast<int>(n - first) : per;
  uint32_t packed = 0;
  for (int j = 0; j < count; ++j) {
    const scalar_t v = x[first + j];
    packed |= static_cast<uint32_t>(code_of(static_cast<T>(v), table)) << (j * bits);
    y[first + j] = relu(v);
  }
  codes[byte] = static_cast<uint8_t>(packed);
}

// Backward of one packed byte: grad_x = grad_y * levels[code] for its elements.
template <typename scalar_t, typename T>
SUGAR_HD void decode_byte(const scalar_t* grad_y, const uint8_t* codes, const T* levels,
                          scalar_t* grad_x, int64_t byte, int64_t n, int bits) {
  const int per = 8 / bits;
  const int64_t first = byte * per;
  const int count = n - first < per ? static_cast<int>(n - first) : per;
  const uint32_t packed = codes[byte];
  const uint32_t mask = (1u << bits) - 1u;
  for (int j = 0; j < count; ++j) {
    const T level = levels[(packed >> (j * bits)) & mask];
    grad_x[first + j] = static_cast<scalar_t>(static_cast<T>(grad_y[first + j]) * level);
  }
}

}  // namespace sugar
