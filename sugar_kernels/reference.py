"""Pure-PyTorch SUGAR: the paper's formula (the oracle) and the "reference" backend's ops.

Their autograd is the torch.func path's (``python_autograd.py``): one Python backward rule.
"""

from __future__ import annotations

import torch

from .code_tables import decode_reference, encode_reference
from .python_autograd import _Forward, _ForwardCodes
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


def relu_forward(x, surrogate, alpha, region):
    """The reference forward op: torch.relu (the arguments are the op schema's)."""
    return torch.relu(x)


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


def relu_forward_codes(x, levels, thresholds, interval_codes, search, bits):
    return torch.relu(x), encode_reference(x, thresholds, interval_codes, bits)


class ReferenceSugarReLU(_Forward):
    """The "reference" backend in exact mode (named so that its grad_fn says so)."""


class ReferenceCodes(_ForwardCodes):
    """The "reference" backend in a code mode."""


def sugar_relu(x, surrogate, alpha, region):
    return ReferenceSugarReLU.apply(x, surrogate, alpha, region, relu_forward, reference_backward)


def sugar_relu_codes(x, *tables_and_bits):
    """``(relu(x), codes)``, differentiable (the arguments of the code forward op)."""
    forward, backward = relu_forward_codes, reference_backward_codes
    return ReferenceCodes.apply(x, *tables_and_bits, forward, backward)
