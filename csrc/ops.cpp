// Host code: argument checks, layout handling, output allocation, kernel launch, and the
// CPU/CUDA registrations of the ops whose schemas sugar_kernels/_ops.py defines.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#ifdef SUGAR_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#endif

#include <cmath>
#include <optional>
#include <string_view>
#include <tuple>

#include "kernel_entry_points.h"

namespace sugar {
namespace {

GradParams parse_params(std::string_view surrogate, double alpha, std::string_view region) {
  std::optional<Surrogate> found;
  for (const auto& [name, value] : kSurrogateNames) {
    if (name == surrogate) found = value;
  }
  TORCH_CHECK_VALUE(found.has_value(), "sugar: unknown surrogate '", surrogate,
                    "'; valid surrogates: ", kSurrogateNameList);
  TORCH_CHECK_VALUE(std::isfinite(alpha), "sugar: alpha must be finite, got ", alpha);
  TORCH_CHECK_VALUE(region == "all" || region == "negative", "sugar: unknown region '", region,
                    "'; valid regions: all, negative");
  return {*found, alpha, region == "negative"};
}

void check_float_tensor(const at::Tensor& t, const char* op, const char* what) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                       dtype == at::kBFloat16,
                   op, ": ", what, " must be float32, float64, float16 or bfloat16, got ",
                   c10::toString(dtype));
  TORCH_CHECK(t.device().is_cpu() || t.device().is_cuda(), op, ": ", what,
              " must be on the CPU or a CUDA device, got ", t.device());
}

// The kernels walk flat storage, so they need dense tensors: any dim order (contiguous,
// channels_last, transposed) is kept as is; anything else (slices, expanded) is copied.
at::Tensor dense(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : t.contiguous();
}

// `t` with exactly the strides of the dense tensor `layout`, so the two share element order.
at::Tensor laid_out_like(const at::Tensor& t, const at::Tensor& layout) {
  if (t.strides() == layout.strides() && t.is_non_overlapping_and_dense()) return t;
  return at::empty_like(layout).copy_(t);
}

// Schema `str` arguments arrive as c10::string_view (std::string_view in recent torch, its own
// class in torch <= 2.7); both convert through data() and size().
std::string_view view_of(c10::string_view s) { return {s.data(), s.size()}; }

at::Tensor relu_forward(const at::Tensor& x, c10::string_view surrogate, double alpha,
                        c10::string_view region) {
  check_float_tensor(x, "sugar::relu_forward", "x");
  parse_params(view_of(surrogate), alpha, view_of(region));  // errors surface at forward time
  const at::Tensor xd = dense(x);
  at::Tensor y = at::empty_like(xd);
  if (xd.is_cuda()) {
#ifdef SUGAR_WITH_CUDA
    const c10::cuda::CUDAGuard guard(xd.device());
    relu_forward_cuda(xd.scalar_type(), xd.const_data_ptr(), y.mutable_data_ptr(), xd.numel());
#endif
  } else {
    relu_forward_cpu(xd.scalar_type(), xd.const_data_ptr(), y.mutable_data_ptr(), xd.numel());
  }
  return y;
}

at::Tensor relu_backward(const at::Tensor& grad_y, const at::Tensor& x,
                         c10::string_view surrogate, double alpha, c10::string_view region) {
  const GradParams params = parse_params(view_of(surrogate), alpha, view_of(region));
  check_float_tensor(x, "sugar::relu_backward", "x");
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "sugar::relu_backward: grad_y has shape ",
              grad_y.sizes(), " but x has shape ", x.sizes());
  TORCH_CHECK_TYPE(grad_y.scalar_type() == x.scalar_type(), "sugar::relu_backward: grad_y is ",
                   c10::toString(grad_y.scalar_type()), " but x is ",
                   c10::toString(x.scalar_type()));
  TORCH_CHECK(grad_y.device() == x.device(), "sugar::relu_backward: grad_y is on ",
              grad_y.device(), " but x is on ", x.device());
  const at::Tensor xd = dense(x);
  const at::Tensor gd = laid_out_like(grad_y, xd);
  at::Tensor grad_x = at::empty_like(xd);
  if (xd.is_cuda()) {
#ifdef SUGAR_WITH_CUDA
    const c10::cuda::CUDAGuard guard(xd.device());
    relu_backward_cuda(xd.scalar_type(), gd.const_data_ptr(), xd.const_data_ptr(),
                       grad_x.mutable_data_ptr(), xd.numel(), params);
#endif
  } else {
    relu_backward_cpu(xd.scalar_type(), gd.const_data_ptr(), xd.const_data_ptr(),
                      grad_x.mutable_data_ptr(), xd.numel(), params);
  }
  return grad_x;
}

// ---- Code modes --------------------------------------------------------------------------------

at::ScalarType opmath_of(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

void check_bits(int64_t bits, const char* op) {
  TORCH_CHECK_VALUE(bits == 1 || bits == 2 || bits == 4 || bits == 8, op,
                    ": bits must be 1, 2, 4 or 8, got ", bits);
}

void check_table(const at::Tensor& t, const at::Tensor& x, at::ScalarType dtype, const char* op,
                 const char* what) {
  TORCH_CHECK(t.dim() == 1 && t.is_contiguous(), op, ": ", what,
              " must be a contiguous 1-d tensor");
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", what, " must be ", c10::toString(dtype),
                   " for ", c10::toString(x.scalar_type()), " inputs, got ",
                   c10::toString(t.scalar_type()));
  TORCH_CHECK(t.device() == x.device(), op, ": ", what, " is on ", t.device(), " but x is on ",
              x.device());
}

// The code tables. Sizes, dtypes and devices are checked for every device; that alone bounds
// every table the kernels copy (thresholds <= kMaxIntervals - 1 entries, so the padded copy of
// thresholds + scan <= 2 * thresholds entries fits kMaxPadded). The values that index other
// tables (the scan length, the bucket starts, the interval codes) are checked here for CPU
// tensors, where reading them costs ~1 us. For CUDA tensors reading them on the host would cost
// a device-to-host copy and a stream synchronisation on every forward call, so the CUDA kernels
// clamp them instead (scan and bucket starts to [0, #thresholds], codes masked to `bits` bits;
// see cuda_kernels.cu): a corrupt CUDA table gives wrong codes, never an out-of-bounds access.
// Index of the first of `count` entries that fails `ok`, or -1. A branch-free pass first (the
// common case; an integer OR reduction, which the compiler vectorises: ~0.2 us for the 4096
// bucket starts), the index search only to report an error.
template <typename T, typename Ok>
int64_t first_bad(const T* v, int64_t count, Ok ok) {
  int failed = 0;
  for (int64_t i = 0; i < count; ++i) failed |= static_cast<int>(!ok(v[i], i));
  if (!failed) return -1;
  for (int64_t i = 0;; ++i) {
    if (!ok(v[i], i)) return i;
  }
}

void check_table_values(const at::Tensor& thresholds, const at::Tensor& interval_codes,
                        const at::Tensor& search, int64_t bits, const char* op) {
  const int64_t m = thresholds.numel();
  const int32_t* s = search.const_data_ptr<int32_t>();
  TORCH_CHECK(s[0] >= 0 && s[0] <= m, op, ": search[0] (the scan length) must be in [0, ", m,
              "] (the number of thresholds), got ", s[0]);
  const int64_t bad_start =
      first_bad(s + 1, kSearchBuckets, [m](int32_t v, int64_t) { return v >= 0 && v <= m; });
  TORCH_CHECK(bad_start < 0, op, ": search[", bad_start + 1,
              "] (a bucket start) must be in [0, ", m, "] (the number of thresholds), got ",
              s[bad_start + 1]);
  const uint8_t* codes = interval_codes.const_data_ptr<uint8_t>();
  const int64_t bad_code =
      first_bad(codes, m + 1, [bits](uint8_t c, int64_t) { return c < (1 << bits); });
  TORCH_CHECK(bad_code < 0, op, ": interval_codes[", bad_code, "] = ",
              static_cast<int>(codes[bad_code]), " is not a ", bits, "-bit code");
  AT_DISPATCH_FLOATING_TYPES(thresholds.scalar_type(), "check_thresholds", [&] {
    const scalar_t* t = thresholds.const_data_ptr<scalar_t>();
    // t[i] <= t[i + 1] is false when either is NaN, so only t[0] needs its own NaN check.
    int64_t bad = m > 0 && std::isnan(t[0]) ? 0 : -1;
    if (bad < 0 && m > 1) {
      const int64_t after =
          first_bad(t + 1, m - 1, [t](scalar_t v, int64_t i) { return t[i] <= v; });
      bad = after < 0 ? -1 : after + 1;
    }
    TORCH_CHECK(bad < 0, op, ": thresholds must be sorted and not NaN, got thresholds[", bad,
                "] = ", t[bad]);
  });
}

CodeArgs code_args(const at::Tensor& x, const at::Tensor& levels, const at::Tensor& thresholds,
                   const at::Tensor& interval_codes, const at::Tensor& search, int64_t bits,
                   const char* op) {
  check_float_tensor(x, op, "x");
  check_bits(bits, op);
  const auto opmath = opmath_of(x.scalar_type());
  check_table(levels, x, opmath, op, "levels");
  check_table(thresholds, x, opmath, op, "thresholds");
  check_table(interval_codes, x, at::kByte, op, "interval_codes");
  check_table(search, x, at::kInt, op, "search");
  TORCH_CHECK(levels.numel() == (int64_t{1} << bits), op, ": expected 2**bits = ",
              int64_t{1} << bits, " levels, got ", levels.numel());
  TORCH_CHECK(thresholds.numel() <= kMaxIntervals - 1, op, ": expected at most ",
              kMaxIntervals - 1, " thresholds, got ", thresholds.numel());
  TORCH_CHECK(interval_codes.numel() == thresholds.numel() + 1, op,
              ": expected len(thresholds) + 1 = ", thresholds.numel() + 1,
              " interval codes, got ", interval_codes.numel());
  TORCH_CHECK(search.numel() == kSearchBuckets + 1, op, ": expected a search table of ",
              kSearchBuckets + 1, " entries (scan length, then bucket starts), got ",
              search.numel());
  if (x.is_cpu()) check_table_values(thresholds, interval_codes, search, bits, op);
  return {static_cast<int>(bits), thresholds.const_data_ptr(),
          interval_codes.const_data_ptr<uint8_t>(), static_cast<int>(thresholds.numel()),
          search.const_data_ptr<int32_t>()};
}

// y = relu(xc) and codes of xc, xc contiguous (codes follow the logical element order); y may be xc.
void encode(const at::Tensor& xc, const at::Tensor& y, const at::Tensor& codes,
            const CodeArgs& args) {
  if (xc.is_cuda()) {
#ifdef SUGAR_WITH_CUDA
    const c10::cuda::CUDAGuard guard(xc.device());
    relu_forward_codes_cuda(xc.scalar_type(), xc.const_data_ptr(), y.mutable_data_ptr(),
                            codes.mutable_data_ptr<uint8_t>(), xc.numel(), args);
#endif
  } else {
    relu_forward_codes_cpu(xc.scalar_type(), xc.const_data_ptr(), y.mutable_data_ptr(),
                           codes.mutable_data_ptr<uint8_t>(), xc.numel(), args);
  }
}

at::Tensor new_codes(const at::Tensor& x, int64_t bits) {
  return at::empty({packed_size(x.numel(), static_cast<int>(bits))},
                   x.options().dtype(at::kByte));
}

std::tuple<at::Tensor, at::Tensor> relu_forward_codes(const at::Tensor& x,
                                                      const at::Tensor& levels,
                                                      const at::Tensor& thresholds,
                                                      const at::Tensor& interval_codes,
                                                      const at::Tensor& search, int64_t bits) {
  const CodeArgs args = code_args(x, levels, thresholds, interval_codes, search, bits,
                                  "sugar::relu_forward_codes");
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc);
  at::Tensor codes = new_codes(x, bits);
  encode(xc, y, codes, args);
  if (!x.is_contiguous()) y = at::empty_like(x).copy_(y);  // keep torch.relu's output layout
  return {y, codes};
}

at::Tensor relu_forward_codes_(at::Tensor& x, const at::Tensor& levels,
                               const at::Tensor& thresholds, const at::Tensor& interval_codes,
                               const at::Tensor& search, int64_t bits) {
  const CodeArgs args = code_args(x, levels, thresholds, interval_codes, search, bits,
                                  "sugar::relu_forward_codes_");
  at::Tensor codes = new_codes(x, bits);
  if (x.is_contiguous()) {
    encode(x, x, codes, args);
  } else {
    const at::Tensor xc = x.contiguous();
    encode(xc, xc, codes, args);
    x.copy_(xc);
  }
  return codes;
}

at::Tensor relu_backward_codes(const at::Tensor& grad_y, const at::Tensor& codes,
                               const at::Tensor& levels, int64_t bits) {
  const char* op = "sugar::relu_backward_codes";
  check_float_tensor(grad_y, op, "grad_y");
  check_bits(bits, op);
  check_table(levels, grad_y, opmath_of(grad_y.scalar_type()), op, "levels");
  check_table(codes, grad_y, at::kByte, op, "codes");
  TORCH_CHECK(levels.numel() == (int64_t{1} << bits), op, ": expected 2**bits = ",
              int64_t{1} << bits, " levels, got ", levels.numel());
  TORCH_CHECK(codes.numel() == packed_size(grad_y.numel(), static_cast<int>(bits)), op,
              ": codes hold ", codes.numel(), " bytes but grad_y has ", grad_y.numel(),
              " elements at ", bits, " bits");
  const at::Tensor gc = grad_y.contiguous();
  at::Tensor grad_x = at::empty_like(gc);
  if (gc.is_cuda()) {
#ifdef SUGAR_WITH_CUDA
    const c10::cuda::CUDAGuard guard(gc.device());
    relu_backward_codes_cuda(gc.scalar_type(), gc.const_data_ptr(), codes.const_data_ptr<uint8_t>(),
                             levels.const_data_ptr(), grad_x.mutable_data_ptr(), gc.numel(),
                             static_cast<int>(bits));
#endif
  } else {
    relu_backward_codes_cpu(gc.scalar_type(), gc.const_data_ptr(), codes.const_data_ptr<uint8_t>(),
                            levels.const_data_ptr(), grad_x.mutable_data_ptr(), gc.numel(),
                            static_cast<int>(bits));
  }
  return grad_x;
}

}  // namespace

#define SUGAR_REGISTER_KERNELS(m)                            \
  m.impl("relu_forward", &relu_forward);                     \
  m.impl("relu_backward", &relu_backward);                   \
  m.impl("relu_forward_codes", &relu_forward_codes);         \
  m.impl("relu_forward_codes_", &relu_forward_codes_);       \
  m.impl("relu_backward_codes", &relu_backward_codes)

TORCH_LIBRARY_IMPL(sugar, CPU, m) { SUGAR_REGISTER_KERNELS(m); }

#ifdef SUGAR_WITH_CUDA
TORCH_LIBRARY_IMPL(sugar, CUDA, m) { SUGAR_REGISTER_KERNELS(m); }
#endif

}  // namespace sugar
