"""Pure-PyTorch SUGAR: the paper's formula (the oracle) and the "reference" backend's ops.

The backend is an op family like the Triton one (so torch.export and torch.compile keep its
backward): ``sugar::reference_relu_*``, with the schemas and fake kernels of ``sugar::relu_*``
and the Python backward rule of ``python_autograd.py``.
"""

from __future__ import annotations

import torch

from ._ops import define_op_family
from .code_tables import decode_reference, encode_reference
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


# ---- the "reference" backend: the ops sugar::reference_relu_* (schemas of sugar::relu_*) --------
# Outputs are laid out as the fake kernels say (``_ops.FAKES``), as every backend's are.
def _relu_forward(x, surrogate, alpha, region):
    return torch.relu(x)


def _relu_backward(grad_y, x, surrogate, alpha, region):
    """grad_x = grad_y * g(x), g evaluated in float64 and rounded once to x's dtype."""
    g = grad_factor(x.to(torch.float64), surrogate, alpha, region)
    return torch.empty_like(x).copy_(grad_y.to(torch.float64) * g)


def _relu_forward_codes(x, levels, thresholds, interval_codes, search, bits):
    """relu(x) and the codes of x as the kernels compute them (``search``, the kernels' lookup
    accelerator, is not needed here)."""
    return torch.relu(x), encode_reference(x, thresholds, interval_codes, bits)


def _relu_forward_codes_(x, levels, thresholds, interval_codes, search, bits):
    codes = encode_reference(x, thresholds, interval_codes, bits)
    x.copy_(torch.relu(x))
    return codes


def _relu_backward_codes(grad_y, codes, levels, bits):
    return decode_reference(grad_y, codes, levels, bits).contiguous()


define_op_family(
    "reference_",
    {
        "relu_forward": _relu_forward,
        "relu_backward": _relu_backward,
        "relu_forward_codes": _relu_forward_codes,
        "relu_forward_codes_": _relu_forward_codes_,
        "relu_backward_codes": _relu_backward_codes,
    },
)
