"""The backward rule in Python: autograd.Functions over any backend's ops, with vmap rules.

One rule (as ``csrc/autograd.cpp`` is the C++ ops' rule): backward ``grad_y * g(x)`` (exact) or
``grad_y * levels[code]`` (code modes), the backward ops differentiable again. Used for
- the Triton and the reference ops: ``register_autograd`` registers these Functions'
  ``setup_context``/``backward`` as the autograd of ``sugar::triton_relu_*`` and
  ``sugar::reference_relu_*``;
- every backend inside torch.func transforms (grad, vjp, jacrev, vmap): PyTorch refuses a C++
  ``torch::autograd::Function`` there, and these are ``setup_context`` style with vmap rules;
- the in-place code mode of the backends without C++ autograd (``InplaceCodes``).
Under a transform, first order only: a second derivative raises NotImplementedError (g'(x) needs
torch.autograd.grad, which functorch forbids inside one); plain ``torch.autograd.grad
(create_graph=True)`` keeps working. Forward-mode AD (``jvp``, ``jacfwd``) has no rule: PyTorch
raises its own error for it. vmap rules: the ops are elementwise, so one call covers a whole
batch; in code modes only when a sample's packed codes end on a byte (always at bits=8), else one
call per sample (as for jacrev's shared codes).
"""

from __future__ import annotations

import torch

from ._ops import LIBRARY, _grad_factor_derivative


def transformed(x: torch.Tensor) -> bool:
    """Whether x is a torch.func wrapper (grad, vjp, jacrev or vmap is tracing this call)."""
    return torch._C._functorch.is_functorch_wrapped_tensor(x)


def _batch_first(t: torch.Tensor, dim: int | None, batch_size: int) -> torch.Tensor:
    return t.movedim(dim, 0) if dim is not None else t.expand(batch_size, *t.shape)


def double_backward(backward_op, grad_y, x, grad_grad_x, surrogate, alpha, region, needs):
    """Gradients of ``backward_op(grad_y, x, ...) = grad_y * g(x)`` w.r.t. (grad_y, x): linear in
    grad_y, ``grad_y * g'(x)`` in x (see ``_ops._grad_factor_derivative``)."""
    grad_grad_y = grad_x = None
    if needs[0]:
        grad_grad_y = backward_op(grad_grad_x, x, surrogate, alpha, region)
    if needs[1]:
        d2 = _grad_factor_derivative(x, surrogate, alpha, region)
        grad_x = (grad_grad_x.to(d2.dtype) * grad_y.to(d2.dtype) * d2).to(x.dtype)
    return grad_grad_y, grad_x


class _Backward(torch.autograd.Function):
    """``backward_op(grad_y, x, ...) = grad_y * g(x)``, differentiable again."""

    @staticmethod
    def forward(grad_y, x, surrogate, alpha, region, backward_op):
        return backward_op(grad_y, x, surrogate, alpha, region)

    @staticmethod
    def vmap(info, in_dims, grad_y, x, surrogate, alpha, region, backward_op):
        # Elementwise: one call on the whole batch (batch dimension first in both); through
        # apply, so that a transform outside this vmap (e.g. grad) still sees the Function.
        grad_y = _batch_first(grad_y, in_dims[0], info.batch_size)
        x = _batch_first(x, in_dims[1], info.batch_size)
        return _Backward.apply(grad_y, x, surrogate, alpha, region, backward_op), 0

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_y, x, ctx.surrogate, ctx.alpha, ctx.region, ctx.backward_op = inputs
        ctx.save_for_backward(grad_y, x)

    @staticmethod
    def backward(ctx, grad_grad_x):
        grad_y, x = ctx.saved_tensors
        if ctx.needs_input_grad[1] and transformed(x):
            # g'(x) comes from torch.autograd.grad (_grad_factor_derivative), which functorch
            # forbids inside a transform.
            raise NotImplementedError(
                "sugar_relu: second derivatives through torch.func transforms (grad of grad, "
                "jacrev of jacrev, hessian) are not supported; use torch.autograd.grad with "
                "create_graph=True for them (first-order grad, vjp, jacrev and vmap work)"
            )
        op = ctx.backward_op

        def again(g, x, surrogate, alpha, region):
            return _Backward.apply(g, x, surrogate, alpha, region, op)

        args = (ctx.surrogate, ctx.alpha, ctx.region, ctx.needs_input_grad)
        return *double_backward(again, grad_y, x, grad_grad_x, *args), None, None, None, None


class _Forward(torch.autograd.Function):
    @staticmethod
    def forward(x, surrogate, alpha, region, forward_op, backward_op):
        return forward_op(x, surrogate, alpha, region)

    @staticmethod
    def vmap(info, in_dims, x, surrogate, alpha, region, forward_op, backward_op):
        y = _Forward.apply(x, surrogate, alpha, region, forward_op, backward_op)
        return y, in_dims[0]  # elementwise: one call on the whole batch

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.surrogate, ctx.alpha, ctx.region, _, ctx.backward_op = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        grad_x = _Backward.apply(grad_y, x, ctx.surrogate, ctx.alpha, ctx.region, ctx.backward_op)
        return grad_x, None, None, None, None, None


def _whole_bytes(sample: torch.Tensor, bits: int) -> bool:
    """Whether a sample's packed codes end on a byte: then a batch's codes are its samples' codes
    one after another, and one call serves the whole batch."""
    return sample.numel() * bits % 8 == 0


class _BackwardCodes(torch.autograd.Function):
    """``grad_y * levels[code]``: linear in grad_y; codes and levels get no gradient."""

    @staticmethod
    def forward(grad_y, codes, levels, bits, backward_op):
        return backward_op(grad_y, codes, levels, bits)

    @staticmethod
    def vmap(info, in_dims, grad_y, codes, levels, bits, backward_op):
        grad_y = _batch_first(grad_y, in_dims[0], info.batch_size)
        apply = _BackwardCodes.apply
        if in_dims[2] is None and in_dims[1] is not None:  # codes per sample (forward batched)
            codes = codes.movedim(in_dims[1], 0)
            if _whole_bytes(grad_y[0], bits):
                return apply(grad_y, codes.reshape(-1), levels, bits, backward_op), 0
            rows = [apply(g, c, levels, bits, backward_op) for g, c in zip(grad_y, codes)]
        else:  # shared codes (e.g. jacrev's batch of cotangents), or batched levels
            levels = _batch_first(levels, in_dims[2], info.batch_size)
            codes = _batch_first(codes, in_dims[1], info.batch_size)
            rows = [apply(*args, bits, backward_op) for args in zip(grad_y, codes, levels)]
        return torch.stack(rows), 0

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, codes, levels, ctx.bits, ctx.backward_op = inputs
        ctx.save_for_backward(codes, levels)

    @staticmethod
    def backward(ctx, grad_grad_x):
        codes, levels = ctx.saved_tensors
        grad = _BackwardCodes.apply(grad_grad_x, codes, levels, ctx.bits, ctx.backward_op)
        return grad, None, None, None, None


class _ForwardCodes(torch.autograd.Function):
    @staticmethod
    def forward(x, levels, thresholds, interval_codes, search, bits, forward_op, backward_op):
        return tuple(forward_op(x, levels, thresholds, interval_codes, search, bits))

    @staticmethod
    def vmap(info, in_dims, x, *tables_bits_ops):
        # Codes come back as (batch, bytes per sample): one call when a sample's codes end on a
        # byte, else one call per sample. Batched tables: one call per sample as well.
        size = info.batch_size
        x = _batch_first(x, in_dims[0], size)
        bits = tables_bits_ops[4]
        apply = _ForwardCodes.apply
        if all(d is None for d in in_dims[1:5]) and _whole_bytes(x[0], bits):
            y, codes = apply(x, *tables_bits_ops)
            return (y, codes.view(size, codes.numel() // size)), (0, 0)  # also 0-size samples
        tables = [_batch_first(t, d, size) for t, d in zip(tables_bits_ops, in_dims[1:5])]
        rows = [apply(*args, *tables_bits_ops[4:]) for args in zip(x, *tables)]
        return (torch.stack([y for y, _ in rows]), torch.stack([c for _, c in rows])), (0, 0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, levels, _, _, _, ctx.bits, _, ctx.backward_op = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1], levels)

    @staticmethod
    def backward(ctx, grad_y, _grad_codes):
        codes, levels = ctx.saved_tensors
        grad_x = _BackwardCodes.apply(grad_y, codes, levels, ctx.bits, ctx.backward_op)
        return grad_x, None, None, None, None, None, None, None


class InplaceCodes(torch.autograd.Function):
    """In-place code mode: relu(x) written over x (mark_dirty), packed codes saved for backward.

    ``forward_op`` is the backend's mutating op, ``backward_op`` its code backward; the autograd
    engine then raises PyTorch's usual error for a leaf requiring grad. ``apply`` returns the
    1-tuple ``(x,)``: the codes stay internal (saved on ``ctx``), because autograd allows a
    Function that modifies a *view* in place to return only one tensor, and
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
        grad_x = _BackwardCodes.apply(grad_y, codes, levels, ctx.bits, ctx.backward_op)
        return grad_x, None, None, None, None, None, None, None


def register_autograd(prefix: str) -> None:
    """Registers the Functions' rule as the autograd of ``sugar::{prefix}relu_forward``,
    ``relu_backward``, ``relu_forward_codes`` and ``relu_backward_codes``. The ops' inputs are
    the Functions' inputs without the trailing op arguments, which are filled in here."""
    ops = torch.ops.sugar
    backward_op = getattr(ops, f"{prefix}relu_backward")
    backward_codes_op = getattr(ops, f"{prefix}relu_backward_codes")
    for name, function, op_args in (
        ("relu_forward", _Forward, (None, backward_op)),
        ("relu_backward", _Backward, (backward_op,)),
        ("relu_forward_codes", _ForwardCodes, (None, backward_codes_op)),
        ("relu_backward_codes", _BackwardCodes, (backward_codes_op,)),
    ):

        def setup_context(ctx, inputs, output, function=function, op_args=op_args):
            function.setup_context(ctx, (*inputs, *op_args), output)

        def backward(ctx, *grads, function=function, op_args=op_args):
            return function.backward(ctx, *grads)[: -len(op_args)]

        torch.library.register_autograd(
            f"{LIBRARY}::{prefix}{name}", backward, setup_context=setup_context
        )


def sugar_relu(x, surrogate, alpha, region, backend):
    """Exact mode through ``backend``'s ops (a ``backends.Backend``) with this module's autograd."""
    return _Forward.apply(x, surrogate, alpha, region, backend.forward, backend.backward)


def sugar_relu_codes(x, tables, bits, inplace, backend):
    """A code mode; in place as the functional op plus ``x.copy_``, as under torch.compile."""
    forward_op, backward_op = backend.forward_codes, backend.backward_codes
    y = _ForwardCodes.apply(x, *tables, bits, forward_op, backward_op)[0]
    return x.copy_(y) if inplace else y
