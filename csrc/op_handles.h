// Typed dispatcher handles of the sugar ops (schemas: sugar_kernels/_ops.py), looked up once.
// Calls through them take the full dispatch path (autograd, tracing, fake, CPU/CUDA kernels), as
// a call from Python through torch.ops does.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <tuple>

namespace sugar::handles {

using Forward = at::Tensor(const at::Tensor&, c10::string_view, double, c10::string_view);
using Backward = at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, double,
                            c10::string_view);
using ForwardCodes = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                        const at::Tensor&, const at::Tensor&,
                                                        const at::Tensor&, int64_t);
using ForwardCodesInplace = at::Tensor(at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       const at::Tensor&, const at::Tensor&, int64_t);
using BackwardCodes = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);

template <typename Signature>
c10::TypedOperatorHandle<Signature> find(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

inline const c10::TypedOperatorHandle<Forward>& relu_forward() {
  static const auto handle = find<Forward>("sugar::relu_forward");
  return handle;
}
inline const c10::TypedOperatorHandle<Backward>& relu_backward() {
  static const auto handle = find<Backward>("sugar::relu_backward");
  return handle;
}
// g'(x), defined in Python (CompositeImplicitAutograd: differentiable, traced through).
inline const c10::TypedOperatorHandle<Forward>& grad_factor_derivative() {
  static const auto handle = find<Forward>("sugar::grad_factor_derivative");
  return handle;
}
inline const c10::TypedOperatorHandle<ForwardCodes>& relu_forward_codes() {
  static const auto handle = find<ForwardCodes>("sugar::relu_forward_codes");
  return handle;
}
inline const c10::TypedOperatorHandle<ForwardCodesInplace>& relu_forward_codes_() {
  static const auto handle = find<ForwardCodesInplace>("sugar::relu_forward_codes_");
  return handle;
}
inline const c10::TypedOperatorHandle<BackwardCodes>& relu_backward_codes() {
  static const auto handle = find<BackwardCodes>("sugar::relu_backward_codes");
  return handle;
}

}  // namespace sugar::handles
