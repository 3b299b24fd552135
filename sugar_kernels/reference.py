"""Pure-PyTorch SUGAR: the paper's formula (the oracle) and the "reference" backend."""

from __future__ import annotations

import torch

from .surrogates import grad_factor, surrogate_function


def paper_formula(
    x: torch.Tensor, surrogate: str = "bsilu", alpha: float = 1.67, region: str = "all"
) -> torch.Tensor:
    """The paper's forward gradient injection, ``s(x) - s(x).detach() + relu(x).detach()``.

    With ``region="negative"`` the injected function is x for x > 0 and s(x) for x <= 0, so the
    gradient is 1 on the positive side. Forward equals relu(x) up to rounding of s - s; use it as a
    gradient oracle (autograd through stock PyTorch functions) and as the baseline in benchmarks.
    """
    s = surrogate_function(surrogate)(x, alpha)
    if region == "negative":
        s = torch.where(x > 0, x, s)
    return s - s.detach() + torch.relu(x).detach()


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference_backward(
    grad_y: torch.Tensor, x: torch.Tensor, surrogate: str, alpha: float, region: str
) -> torch.Tensor:
    """grad_x = grad_y * g(x), g evaluated in float64 and rounded once to x's dtype."""
    g = grad_factor(x.to(torch.float64), surrogate, alpha, region)
    return (grad_y.to(torch.float64) * g).to(x.dtype)


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
        return reference_backward(grad_y, x, ctx.surrogate, ctx.alpha, ctx.region), None, None, None
