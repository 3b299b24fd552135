"""Pure-PyTorch SUGAR: the paper's formula (the oracle) and the "reference" backend."""

from __future__ import annotations

import torch

from .codes import decode_reference, encode_reference
from .surrogates import SURROGATES, grad_factor, surrogate_function


def paper_formula(
    x: torch.Tensor, surrogate: str = "bsilu", alpha: float | None = None, region: str = "all"
) -> torch.Tensor:
    """The paper's forward gradient injection, ``s(x) - s(x).detach() + relu(x).detach()``;
    ``alpha=None``: the surrogate's default.

    With ``region="negative"`` the injected function is x for x > 0 and s(x) for x <= 0, so the
    gradient is 1 on the positive side. Forward equals relu(x) up to rounding of s - s; use it as a
    gradient oracle (autograd through stock PyTorch functions) and as the baseline in benchmarks.
    """
    if alpha is None:
        alpha = SURROGATES[surrogate].alpha or 0.0
    s = surrogate_function(surrogate)(x, alpha)
    if region == "negative":
        s = torch.where(x > 0, x, s)
    return s - s.detach() + torch.relu(x).detach()


def reference_backward(
    grad_y: torch.Tensor, x: torch.Tensor, surrogate: str, alpha: float, region: str
) -> torch.Tensor:
    """grad_x = grad_y * g(x), g evaluated in float64 and rounded once to x's dtype."""
    g = grad_factor(x.to(torch.float64), surrogate, alpha, region)
    return (grad_y.to(torch.float64) * g).to(x.dtype)


class _ReferenceBackward(torch.autograd.Function):
    """reference_backward as a differentiable function (double backward with the exact g')."""

    @staticmethod
    def forward(grad_y, x, surrogate, alpha, region):
        return reference_backward(grad_y, x, surrogate, alpha, region)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_y, x, *ctx.args = inputs
        ctx.save_for_backward(grad_y, x)

    @staticmethod
    def backward(ctx, grad_grad_x):
        from ._ops import double_backward

        grad_y, x = ctx.saved_tensors
        grads = double_backward(
            _ReferenceBackward.apply, grad_y, x, grad_grad_x, *ctx.args, ctx.needs_input_grad
        )
        return *grads, None, None, None


class ReferenceSugarReLU(torch.autograd.Function):
    """The "reference" backend: torch.relu forward, closed-form float64 surrogate backward."""

    @staticmethod
    def forward(x, surrogate, alpha, region):
        return torch.relu(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.surrogate, ctx.alpha, ctx.region = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        grad_x = _ReferenceBackward.apply(grad_y, x, ctx.surrogate, ctx.alpha, ctx.region)
        return grad_x, None, None, None


# ---- code modes -------------------------------------------------------------------------------
def reference_forward_codes_(x, levels, thresholds, interval_codes, search, bits):
    """In-place reference: codes of x (as the kernels compute them), then x <- relu(x).

    ``search`` (the kernels' lookup accelerator) is accepted for a uniform signature, not needed.
    """
    codes = encode_reference(x, thresholds, interval_codes, bits)
    x.copy_(torch.relu(x))
    return codes


def reference_backward_codes(grad_y, codes, levels, bits):
    return decode_reference(grad_y, codes, levels, bits)


class ReferenceCodes(torch.autograd.Function):
    """The "reference" backend in a code mode: torch.relu forward, codes from encode_reference."""

    @staticmethod
    def forward(x, levels, thresholds, interval_codes, search, bits):
        return torch.relu(x), encode_reference(x, thresholds, interval_codes, bits)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, levels, _, _, _, ctx.bits = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1], levels)

    @staticmethod
    def backward(ctx, grad_y, _grad_codes):
        codes, levels = ctx.saved_tensors
        return decode_reference(grad_y, codes, levels, ctx.bits), None, None, None, None, None
