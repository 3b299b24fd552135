// Autograd of the C++/CUDA ops, in C++: a Python autograd kernel (torch.library.register_autograd)
// costs ~40 us per forward+backward, several times a small ReLU's whole time. Each function below
// runs its op below the autograd key (the CPU, CUDA, fake or tracing kernel, as the dispatcher
// picks) and records a backward that calls the sugar ops again through the dispatcher, so
// torch.compile, torch.export and opcheck trace them like any op. The formulas are those of
// sugar_kernels/_ops.py, which registers the same autograd in Python for the Triton ops.
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

#include "op_handles.h"

namespace sugar {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// In a plain backward (grad mode off) the backward ops' own autograd layer would only forward the
// call below itself: skip it. With create_graph it runs and records the double backward.
struct BelowAutogradUnlessRecording {
  std::optional<at::AutoDispatchBelowADInplaceOrView> guard;
  BelowAutogradUnlessRecording() {
    if (!at::GradMode::is_enabled()) guard.emplace();
  }
};

// The non-tensor arguments of the exact ops, kept on the context.
void save_params(AutogradContext* ctx, c10::string_view surrogate, double alpha,
                 c10::string_view region) {
  ctx->saved_data["surrogate"] = std::string(surrogate.data(), surrogate.size());
  ctx->saved_data["alpha"] = alpha;
  ctx->saved_data["region"] = std::string(region.data(), region.size());
}

struct Params {
  std::string surrogate, region;
  double alpha;
};

Params params_of(AutogradContext* ctx) {
  return {ctx->saved_data["surrogate"].toStringRef(), ctx->saved_data["region"].toStringRef(),
          ctx->saved_data["alpha"].toDouble()};
}

// y = relu(x); grad_x = relu_backward(grad_y, x) = grad_y * g(x).
struct ReluForward : torch::autograd::Function<ReluForward> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, c10::string_view surrogate,
                            double alpha, c10::string_view region) {
    at::Tensor y;
    {
      const at::AutoDispatchBelowADInplaceOrView guard;
      y = handles::relu_forward().call(x, surrogate, alpha, region);
    }
    save_params(ctx, surrogate, alpha, region);
    ctx->save_for_backward({x});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Params p = params_of(ctx);
    const at::Tensor x = ctx->get_saved_variables()[0];
    const BelowAutogradUnlessRecording below;
    return {handles::relu_backward().call(grads[0], x, p.surrogate, p.alpha, p.region), {}, {}, {}};
  }
};

// grad_x = grad_y * g(x) is linear in grad_y (its gradient is the same op) and has derivative
// grad_y * g'(x) in x.
struct ReluBackward : torch::autograd::Function<ReluBackward> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_y, const at::Tensor& x,
                            c10::string_view surrogate, double alpha, c10::string_view region) {
    at::Tensor grad_x;
    {
      const at::AutoDispatchBelowADInplaceOrView guard;
      grad_x = handles::relu_backward().call(grad_y, x, surrogate, alpha, region);
    }
    save_params(ctx, surrogate, alpha, region);
    ctx->save_for_backward({grad_y, x});
    return grad_x;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Params p = params_of(ctx);
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &grad_y = saved[0], &x = saved[1], &grad_grad_x = grads[0];
    at::Tensor grad_grad_y, grad_x;
    if (ctx->needs_input_grad(0)) {
      const BelowAutogradUnlessRecording below;
      grad_grad_y = handles::relu_backward().call(grad_grad_x, x, p.surrogate, p.alpha, p.region);
    }
    if (ctx->needs_input_grad(1)) {  // g'(x) is made of stock ops, with autograd inside
      const at::Tensor d2 =
          handles::grad_factor_derivative().call(x, p.surrogate, p.alpha, p.region);
      grad_x = grad_grad_x.to(d2.scalar_type())
                   .mul(grad_y.to(d2.scalar_type()))
                   .mul(d2)
                   .to(x.scalar_type());
    }
    return {grad_grad_y, grad_x, {}, {}, {}};
  }
};

// (y, codes) = relu(x) and x's codes; grad_x = grad_y * levels[code]. Codes are not
// differentiable; the tables are constants.
struct ReluForwardCodes : torch::autograd::Function<ReluForwardCodes> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& levels,
                               const at::Tensor& thresholds, const at::Tensor& interval_codes,
                               const at::Tensor& search, int64_t bits) {
    at::Tensor y, codes;
    {
      const at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(y, codes) =
          handles::relu_forward_codes().call(x, levels, thresholds, interval_codes, search, bits);
    }
    ctx->mark_non_differentiable({codes});
    ctx->saved_data["bits"] = bits;
    ctx->save_for_backward({codes, levels});
    return {y, codes};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const int64_t bits = ctx->saved_data["bits"].toInt();
    const BelowAutogradUnlessRecording below;
    const at::Tensor grad_x =
        handles::relu_backward_codes().call(grads[0], saved[0], saved[1], bits);
    return {grad_x, {}, {}, {}, {}, {}};
  }
};

// In place: x = relu(x), codes returned; the same gradient. Autograd allows a function that
// modifies a view in place to return only that view, so the codes leave through `codes_out`.
struct ReluForwardCodesInplace : torch::autograd::Function<ReluForwardCodesInplace> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& levels,
                            const at::Tensor& thresholds, const at::Tensor& interval_codes,
                            const at::Tensor& search, int64_t bits, at::Tensor* codes_out) {
    at::Tensor codes;
    {
      const at::AutoDispatchBelowADInplaceOrView guard;
      at::Tensor target = x;
      codes = handles::relu_forward_codes_().call(target, levels, thresholds, interval_codes,
                                                  search, bits);
    }
    ctx->mark_dirty({x});
    ctx->saved_data["bits"] = bits;
    ctx->save_for_backward({codes, levels});
    *codes_out = codes;
    return x;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list grad_inputs = ReluForwardCodes::backward(ctx, std::move(grads));
    grad_inputs.emplace_back();  // codes_out
    return grad_inputs;
  }
};

// grad_x = grad_y * levels[code]: linear in grad_y; codes are piecewise constant in x.
struct ReluBackwardCodes : torch::autograd::Function<ReluBackwardCodes> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_y, const at::Tensor& codes,
                            const at::Tensor& levels, int64_t bits) {
    at::Tensor grad_x;
    {
      const at::AutoDispatchBelowADInplaceOrView guard;
      grad_x = handles::relu_backward_codes().call(grad_y, codes, levels, bits);
    }
    ctx->saved_data["bits"] = bits;
    ctx->save_for_backward({codes, levels});
    return grad_x;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    at::Tensor grad_grad_y;
    const BelowAutogradUnlessRecording below;
    if (ctx->needs_input_grad(0)) {
      const int64_t bits = ctx->saved_data["bits"].toInt();
      grad_grad_y = handles::relu_backward_codes().call(grads[0], saved[0], saved[1], bits);
    }
    return {grad_grad_y, {}, {}, {}};
  }
};

at::Tensor relu_forward_autograd(const at::Tensor& x, c10::string_view surrogate, double alpha,
                                 c10::string_view region) {
  return ReluForward::apply(x, surrogate, alpha, region);
}

at::Tensor relu_backward_autograd(const at::Tensor& grad_y, const at::Tensor& x,
                                  c10::string_view surrogate, double alpha,
                                  c10::string_view region) {
  return ReluBackward::apply(grad_y, x, surrogate, alpha, region);
}

std::tuple<at::Tensor, at::Tensor> relu_forward_codes_autograd(
    const at::Tensor& x, const at::Tensor& levels, const at::Tensor& thresholds,
    const at::Tensor& interval_codes, const at::Tensor& search, int64_t bits) {
  const variable_list out =
      ReluForwardCodes::apply(x, levels, thresholds, interval_codes, search, bits);
  return {out[0], out[1]};
}

// A tracer's tensor (FakeTensor, FunctionalTensor), a tensor subclass (DTensor) or an active
// Python dispatch mode: a graph is being recorded or another layer interprets the op.
bool seen_by_python(const at::Tensor& x) {
  return x.key_set().has(c10::DispatchKey::Python) ||
         x.key_set().has(c10::DispatchKey::Functionalize) ||
         c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::Python);
}

at::Tensor relu_forward_codes_inplace_autograd(at::Tensor& x, const at::Tensor& levels,
                                              const at::Tensor& thresholds,
                                              const at::Tensor& interval_codes,
                                              const at::Tensor& search, int64_t bits) {
  if (seen_by_python(x)) {
    // Traced, the in-place op is the functional op plus x.copy_(y), each with its own autograd.
    // ReluForwardCodesInplace runs the mutation with grad mode off (as every autograd Function
    // does), so functionalization records it as a no_grad mutation; when x is an input of a
    // compiled region, AOTAutograd then keeps it out of the autograd graph and the traced
    // backward is the identity. copy_ is a mutation that autograd and functionalization know.
    auto [y, codes] =
        handles::relu_forward_codes().call(x, levels, thresholds, interval_codes, search, bits);
    x.copy_(y);
    return codes;
  }
  at::Tensor codes;
  ReluForwardCodesInplace::apply(x, levels, thresholds, interval_codes, search, bits, &codes);
  return codes;  // mark_dirty bumped x's version, as the ADInplaceOrView kernel of aten ops does
}

at::Tensor relu_backward_codes_autograd(const at::Tensor& grad_y, const at::Tensor& codes,
                                        const at::Tensor& levels, int64_t bits) {
  return ReluBackwardCodes::apply(grad_y, codes, levels, bits);
}

}  // namespace

TORCH_LIBRARY_IMPL(sugar, Autograd, m) {
  m.impl("relu_forward", &relu_forward_autograd);
  m.impl("relu_backward", &relu_backward_autograd);
  m.impl("relu_forward_codes", &relu_forward_codes_autograd);
  m.impl("relu_forward_codes_", &relu_forward_codes_inplace_autograd);
  m.impl("relu_backward_codes", &relu_backward_codes_autograd);
}

}  // namespace sugar
