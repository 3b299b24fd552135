"""torch.library registration of the compiled ops: schemas, fake kernels and autograd formulas.

The schemas are defined here, once; ``csrc/`` provides the CPU and CUDA implementations and the
ops' autograd (``csrc/autograd.cpp``: in C++, because a Python autograd kernel costs more per
call than a small ReLU). The Triton ops get the Python formulas of ``python_autograd.py``.
If the extension is missing, the ops still exist (with fake kernels) but have no
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
    # Code modes (sugar_kernels/code_tables.py): levels/thresholds in x's opmath dtype and device.
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


def _relu_forward_fake(x, surrogate, alpha, region):
    return torch.empty_like(x)


def _relu_backward_fake(grad_y, x, surrogate, alpha, region):
    return torch.empty_like(x)


def _codes_fake(x, bits):
    per = 8 // bits
    return x.new_empty(((x.numel() + per - 1) // per,), dtype=torch.uint8)


def _relu_forward_codes_fake(x, levels, thresholds, interval_codes, search, bits):
    return torch.empty_like(x), _codes_fake(x, bits)


def _relu_forward_codes_inplace_fake(x, levels, thresholds, interval_codes, search, bits):
    return _codes_fake(x, bits)


def _relu_backward_codes_fake(grad_y, codes, levels, bits):
    return torch.empty_like(grad_y, memory_format=torch.contiguous_format)


# The output shapes, strides and dtypes every op family's kernels produce.
FAKES = {
    "relu_forward": _relu_forward_fake,
    "relu_backward": _relu_backward_fake,
    "relu_forward_codes": _relu_forward_codes_fake,
    "relu_forward_codes_": _relu_forward_codes_inplace_fake,
    "relu_backward_codes": _relu_backward_codes_fake,
}
for _name, _fake in FAKES.items():
    torch.library.register_fake(f"{LIBRARY}::{_name}", _fake)


def define_op_family(prefix: str, kernels: dict) -> None:
    """Defines ``sugar::{prefix}{name}`` with the schema of ``sugar::{name}``, ``kernels[name]``
    as its kernel on every device and the same fake kernel, for each name in ``FAKES``."""
    for name, fake in FAKES.items():
        qualname = f"{LIBRARY}::{prefix}{name}"
        _lib.define(prefix + name + SCHEMAS[name])
        _lib.impl(prefix + name, kernels[name], "CompositeExplicitAutograd")
        torch.library.register_fake(qualname, fake)


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


def has_kernel(op: str, dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{LIBRARY}::{op}", dispatch_key)
