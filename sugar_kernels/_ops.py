"""torch.library registration of the compiled ops: schemas, fake kernels and autograd formulas.

The schemas are defined here, once; ``csrc/`` provides the CPU and CUDA implementations and the
ops' autograd (``csrc/autograd.cpp``: in C++, because a Python autograd kernel costs more per
call than a small ReLU). The Triton ops get the same formulas from ``register_autograd_for``
below. If the extension is missing, the ops still exist (with fake kernels) but have no
CPU/CUDA kernel, and ``build_info()`` says why.
"""

from __future__ import annotations

import torch

LIBRARY = "sugar"
SCHEMAS = {
    "relu_forward": "(Tensor x, str surrogate, float alpha, str region) -> Tensor",
    "relu_backward": (
        "(Tensor grad_y, Tensor x, str surrogate, float alpha, str region) -> Tensor"
    ),
    # Code modes (sugar_kernels/codes.py): levels/thresholds in the opmath dtype on x's device.
    "relu_forward_codes": (
        "(Tensor x, Tensor levels, Tensor thresholds, Tensor interval_codes, Tensor search,"
        " int bits) -> (Tensor, Tensor)"
    ),
    "relu_forward_codes_": (
        "(Tensor(a!) x, Tensor levels, Tensor thresholds, Tensor interval_codes, Tensor search,"
        " int bits) -> Tensor"
    ),
    "relu_backward_codes": "(Tensor grad_y, Tensor codes, Tensor levels, int bits) -> Tensor",
    # g'(x) for double backward (csrc/autograd.cpp calls it): Python, below.
    "grad_factor_derivative": "(Tensor x, str surrogate, float alpha, str region) -> Tensor",
}

_lib = torch.library.Library(LIBRARY, "DEF")
for _name, _schema in SCHEMAS.items():
    _lib.define(_name + _schema)

try:
    from . import _C  # noqa: F401  (registers the CPU/CUDA kernels on import)

    EXTENSION_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only without a build
    _C = None
    EXTENSION_ERROR = f"sugar_kernels._C is not importable ({exc}); run `make install`"


@torch.library.register_fake(f"{LIBRARY}::relu_forward")
def _relu_forward_fake(x, surrogate, alpha, region):
    return torch.empty_like(x)


@torch.library.register_fake(f"{LIBRARY}::relu_backward")
def _relu_backward_fake(grad_y, x, surrogate, alpha, region):
    return torch.empty_like(x)


def _codes_fake(x, bits):
    per = 8 // bits
    return x.new_empty(((x.numel() + per - 1) // per,), dtype=torch.uint8)


@torch.library.register_fake(f"{LIBRARY}::relu_forward_codes")
def _relu_forward_codes_fake(x, levels, thresholds, interval_codes, search, bits):
    return torch.empty_like(x), _codes_fake(x, bits)


@torch.library.register_fake(f"{LIBRARY}::relu_forward_codes_")
def _relu_forward_codes_inplace_fake(x, levels, thresholds, interval_codes, search, bits):
    return _codes_fake(x, bits)


@torch.library.register_fake(f"{LIBRARY}::relu_backward_codes")
def _relu_backward_codes_fake(grad_y, codes, levels, bits):
    return torch.empty_like(grad_y, memory_format=torch.contiguous_format)


# ---- double backward ---------------------------------------------------------------------------
# The backward ops are differentiable too, so gradient penalties, Hessian-vector products and
# torch.autograd.gradgradcheck get correct answers instead of the autograd fallback's silent
# "not used in the graph" / missing gradients. grad_x = grad_y * g(x) is linear in grad_y (its
# derivative is the same op applied to the incoming gradient) and, in exact mode, has derivative
# grad_y * g'(x) in x, with g' the surrogate's second derivative (0 where g is constant: x > 0
# with region "negative", |x| beyond the derivative clamp). In code modes g is piecewise
# constant in x (codes are not differentiable), so only grad_y gets a gradient.
# Smooth surrogates (catalogue field `smooth`): differentiate the stock-op s(x) twice. The closed
# forms of their s' go through exp(-|x|), whose autograd derivative at exactly x = 0 is wrong.


def _grad_factor_derivative(x, surrogate, alpha, region):
    """g'(x) in the opmath dtype: the surrogate's second derivative, 0 where g is constant.

    Smooth surrogates: double autograd of s(x) built from stock PyTorch ops. Piecewise ones
    (nelu, elu, selu, leaky_relu): autograd of the closed-form s'(x), which keeps x = 0 on the
    negative side as the forward semantics do (stock F.elu would put it on the positive side).
    Differentiable itself (create_graph) when grad mode is on, so higher orders stay correct.
    """
    from .surrogates import DERIVATIVE_CLAMP, SURROGATES, surrogate_derivative, surrogate_function

    op = torch.float64 if x.dtype == torch.float64 else torch.float32
    create = torch.is_grad_enabled()
    with torch.enable_grad():
        t = x.to(op)
        if not t.requires_grad:
            t = t.detach().requires_grad_()
        if SURROGATES[surrogate].smooth:
            s = surrogate_function(surrogate)(t, alpha)
            (ds,) = torch.autograd.grad(s, t, torch.ones_like(s), create_graph=True)
        else:
            ds = surrogate_derivative(surrogate, t, alpha)
        if ds.requires_grad:
            (d2s,) = torch.autograd.grad(
                ds,
                t,
                torch.ones_like(ds),
                create_graph=create,
                allow_unused=True,
                materialize_grads=True,
            )
        else:  # a piecewise-constant s' (leaky_relu)
            d2s = torch.zeros_like(t)
    flat = (t.abs() > DERIVATIVE_CLAMP) | ((t > 0) if region == "negative" else False)
    return torch.where(flat, torch.zeros_like(d2s), d2s)


# Composite: autograd, tracing and every device go through the stock ops it is made of.
_lib.impl("grad_factor_derivative", _grad_factor_derivative, "CompositeImplicitAutograd")


def double_backward(backward_op, grad_y, x, grad_grad_x, surrogate, alpha, region, needs):
    """Gradients of ``backward_op(grad_y, x, ...) = grad_y * g(x)`` w.r.t. (grad_y, x)."""
    grad_grad_y = grad_x = None
    if needs[0]:
        grad_grad_y = backward_op(grad_grad_x, x, surrogate, alpha, region)
    if needs[1]:
        d2 = _grad_factor_derivative(x, surrogate, alpha, region)
        grad_x = (grad_grad_x.to(d2.dtype) * grad_y.to(d2.dtype) * d2).to(x.dtype)
    return grad_grad_y, grad_x


def _backward_setup_context(ctx, inputs, output):
    grad_y, x, ctx.surrogate, ctx.alpha, ctx.region = inputs
    ctx.save_for_backward(grad_y, x)


def register_autograd_for(prefix: str) -> None:
    """Registers autograd, once, for one family of ops: ``sugar::{prefix}relu_forward``,
    ``relu_backward``, ``relu_forward_codes`` and ``relu_backward_codes`` ("triton_" for the
    Triton ones; the C++/CUDA ops have the same formulas in csrc/autograd.cpp). Only the
    backward op the formulas call differs between backends."""
    ops = torch.ops.sugar
    backward_op = getattr(ops, f"{prefix}relu_backward")
    backward_codes_op = getattr(ops, f"{prefix}relu_backward_codes")

    def forward_setup(ctx, inputs, output):
        x, ctx.surrogate, ctx.alpha, ctx.region = inputs
        ctx.save_for_backward(x)

    def forward_backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        return backward_op(grad_y, x, ctx.surrogate, ctx.alpha, ctx.region), None, None, None

    def backward_backward(ctx, grad_grad_x):
        grad_y, x = ctx.saved_tensors
        args = (ctx.surrogate, ctx.alpha, ctx.region, ctx.needs_input_grad)
        return *double_backward(backward_op, grad_y, x, grad_grad_x, *args), None, None, None

    def codes_setup(ctx, inputs, output):
        _, levels, _, _, _, ctx.bits = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1], levels)

    def codes_backward(ctx, grad_y, _grad_codes):
        codes, levels = ctx.saved_tensors
        return backward_codes_op(grad_y, codes, levels, ctx.bits), None, None, None, None, None

    # grad_x = grad_y * levels[code] is linear in grad_y; codes are piecewise constant in x.
    def backward_codes_setup(ctx, inputs, output):
        _, codes, levels, ctx.bits = inputs
        ctx.save_for_backward(codes, levels)

    def backward_codes_backward(ctx, grad_grad_x):
        codes, levels = ctx.saved_tensors
        grad_grad_y = None
        if ctx.needs_input_grad[0]:
            grad_grad_y = backward_codes_op(grad_grad_x, codes, levels, ctx.bits)
        return grad_grad_y, None, None, None

    for name, backward, setup in (
        ("relu_forward", forward_backward, forward_setup),
        ("relu_backward", backward_backward, _backward_setup_context),
        ("relu_forward_codes", codes_backward, codes_setup),
        ("relu_backward_codes", backward_codes_backward, backward_codes_setup),
    ):
        torch.library.register_autograd(f"{LIBRARY}::{prefix}{name}", backward, setup_context=setup)


class InplaceCodes(torch.autograd.Function):
    """In-place code mode: relu(x) written over x (mark_dirty), packed codes saved for backward.

    ``forward_op`` is the mutating op of the backend (C++ or Triton), ``backward_op`` its
    backward; the autograd engine then raises PyTorch's usual error for a leaf requiring grad.
    ``apply`` returns the 1-tuple ``(x,)``: the codes stay internal (saved on ``ctx``), because
    autograd allows a Function that modifies a *view* in place to return only one tensor, and
    ``nn.ReLU(inplace=True)`` works on views (slices, chunks, ``view``/``flatten`` results).
    """

    @staticmethod
    def forward(ctx, x, levels, thresholds, interval_codes, search, bits, forward_op, backward_op):
        codes = forward_op(x, levels, thresholds, interval_codes, search, bits)
        ctx.bits, ctx.backward_op = bits, backward_op
        ctx.mark_dirty(x)
        ctx.save_for_backward(codes, levels)
        return (x,)

    @staticmethod
    def backward(ctx, grad_y):
        codes, levels = ctx.saved_tensors
        grad_x = ctx.backward_op(grad_y, codes, levels, ctx.bits)
        return grad_x, None, None, None, None, None, None, None


def has_kernel(op: str, dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{LIBRARY}::{op}", dispatch_key)
