// The SIMD building blocks of the CPU kernels, in the build of the including translation unit
// (cpu_build.h): the surrogate math on at::vec vectors, and chunks of opmath vectors.
#pragma once

#include "cpu_build.h"  // first: the AVX-512 build's target and CPU_CAPABILITY

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>  // at::vec, and convert_to_float for half/bfloat16

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "sugar_math.h"

namespace sugar {

// Math<T> for SIMD vectors: the same surrogate formulas as on scalars (see sugar_math.h).
template <typename S>
struct Math<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  using Mask = V;
  // exp_u20: at::vec's inlined polynomial exp (<= 20 ulp, ~1e-6 relative, inside the float32
  // tolerance; the Sleef call behind exp() costs ~1.5x more here). It maps NaN to a finite
  // value, so exp() puts NaN back.
  static V exp(const V& x) { return V::blendv(x.exp_u20(), x, x.isnan()); }
  // e^x for x <= 0 (float): 2^k * P(r), k = round(x log2 e), r = x - k ln2 (two-part ln2), P the
  // degree-5 polynomial exp_u20 uses (~1e-6 relative). x is first raised to -87 (e^-87 ~ 1.6e-38
  // is below every tolerance), so 2^k stays a normal float and is built by adding k + 127 to the
  // exponent bits: ~12 instructions and a short dependency chain, against ~17 for exp_u20.
  static V exp_nonpositive(const V& x) {
    if constexpr (std::is_same_v<S, float>) {
      const V shifter(12582912.f + 127.f);  // 1.5 * 2^23 + 127: rounds, and biases the exponent
      const V xc = at::vec::clamp_min(x, V(-87.f));
      const V t = at::vec::fmadd(xc, V(1.44269504f), shifter);  // low bits: k + 127
      const V k = t - shifter;
      V r = at::vec::fnmadd(k, V(0.693359375f), xc);  // ln2 = 0.693359375 - 2.12194440e-4
      r = at::vec::fnmadd(k, V(-2.12194440e-4f), r);
      V p = at::vec::fmadd(r, V(0.00828929059f), V(0.0418978221f));
      p = at::vec::fmadd(r, p, V(0.166676521f));
      p = at::vec::fmadd(r, p, V(0.499991506f));
      p = at::vec::fmadd(r, p, V(0.999999701f));
      p = at::vec::fmadd(r, p, V(1.f));
      const auto bits = at::vec::cast<int32_t>(t) << at::vec::Vectorized<int32_t>(23);  // 2^k
      return p * at::vec::cast<float>(bits);
    } else {
      return x.exp_u20();
    }
  }
  // erfc(z) = t * P(t) * exp(-z^2) for z >= 0, 2 - that for z < 0, t = 1 / (1 + p|z|):
  // Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7, the polynomial at::vec's float erf uses),
  // written for erfc so that it reuses the caller's exponential and has no cancellation for
  // large z. float only; float64 calls the accurate erfc.
  static V erfc_given_exp(const V& z, const V& e) {
    if constexpr (std::is_same_v<S, float>) {
      const V t = V(1.f) / at::vec::fmadd(V(0.3275911f), z.abs(), V(1.f));
      V poly = at::vec::fmadd(V(1.061405429f), t, V(-1.453152027f));
      poly = at::vec::fmadd(poly, t, V(1.421413741f));
      poly = at::vec::fmadd(poly, t, V(-0.284496736f));
      poly = at::vec::fmadd(poly, t, V(0.254829592f));
      const V tail = poly * t * e;  // erfc(|z|)
      return V::blendv(tail, V(2.f) - tail, z < V(0.f));
    } else {
      return z.erfc();
    }
  }
  static V neg_abs(const V& x) { return x | V(S(-0.0)); }  // sets the sign bit (NaN stays NaN)
  static V clamp(const V& x, const V& lo, const V& hi) { return at::vec::clamp(x, lo, hi); }
  static V select(const V& m, const V& a, const V& b) { return V::blendv(b, a, m); }
};

namespace SUGAR_CPU_ISA {
namespace {

constexpr int64_t kGrainSize = 32768;  // elements per parallel task

// A chunk of elements as opmath vectors: two Vectorized<opmath> per chunk for every dtype (one
// Vectorized<half/bfloat16> converts to two float vectors; float/double are unrolled by two for
// instruction-level parallelism). Full chunks and the tail of a range go through the same
// conversions, so every element's result is independent of where a thread's range starts.
template <typename scalar_t>
struct Chunk {
  using T = at::opmath_type<scalar_t>;
  using V = at::vec::Vectorized<T>;
  using VS = at::vec::Vectorized<scalar_t>;
  static constexpr bool kReduced = !std::is_same_v<scalar_t, T>;
  static constexpr int64_t kSize = 2 * V::size();
  static_assert(!kReduced || VS::size() == kSize, "one reduced vector holds two float vectors");

  V lo, hi;

  static Chunk load(const scalar_t* p, int64_t count = kSize) {
    if constexpr (kReduced) {
      auto [a, b] = at::vec::convert_to_float<scalar_t>(VS::loadu(p, count));
      return {a, b};
    } else if (count == kSize) {
      return {V::loadu(p), V::loadu(p + V::size())};
    } else {
      const int64_t first = std::min<int64_t>(count, V::size());
      return {V::loadu(p, first), V::loadu(p + first, count - first)};
    }
  }

  void store(scalar_t* p, int64_t count = kSize) const {
    if constexpr (kReduced) {
      at::vec::convert_from_float<scalar_t>(lo, hi).store(p, count);
    } else if (count == kSize) {
      lo.store(p);
      hi.store(p + V::size());
    } else {
      const int64_t first = std::min<int64_t>(count, V::size());
      lo.store(p, first);
      if (count > first) hi.store(p + first, count - first);
    }
  }
};

// Calls body(i, count) over [begin, end) in chunks: full ones, then the tail.
template <int64_t kSize, typename F>
inline void for_chunks(int64_t begin, int64_t end, F&& body) {
  int64_t i = begin;
  for (; i + kSize <= end; i += kSize) body(i, kSize);
  if (i < end) body(i, end - i);
}

}  // namespace
}  // namespace SUGAR_CPU_ISA
}  // namespace sugar
