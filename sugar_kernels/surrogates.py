"""The surrogate catalogue: names, default alphas, the functions s(x) and their derivatives s'(x).

Two independent formulations live here on purpose:

* ``surrogate_function(name)`` returns s(x) built from stock PyTorch functions. Autograd through
  it is the paper's "forward gradient injection" and serves as the independent oracle in tests.
* ``surrogate_derivative(name, x, alpha)`` is the closed-form s'(x) written with the same
  numerically careful formulas as ``csrc/sugar_math.h`` (the C++/CUDA kernels), in whatever
  dtype it is given (the reference backend runs it in float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

SELU_LAMBDA = 1.0507009873554805
SELU_ALPHA = 1.6732632423543772
# |x| is clamped to this before evaluating s'(x): every s' equals its limit there to far below
# float32/float64 resolution, and it turns +-inf into finite inputs (inf * 0 would give NaN).
DERIVATIVE_CLAMP = 1.0e4


@dataclass(frozen=True)
class Surrogate:
    """One entry of the catalogue, the single list of surrogates for every language: the C++ enum,
    names and dispatch are generated from these rows (csrc/generate_surrogates.py reads them from
    this file's source, so the row arguments must be literals), the Triton ids are derived from
    them. Each surrogate also needs its formulas: s(x) in ``surrogate_function``, s'(x) in
    ``surrogate_derivative``, csrc/sugar_math.h and the Triton ``grad_factor``."""

    name: str
    alpha: float | None  # the parameter's default; None: the surrogate has no parameter
    formula: str  # s'(x), for documentation
    # True: s(x) from stock PyTorch ops is smooth at 0, so its second derivative comes from double
    # autograd of s(x); False (piecewise at 0): from autograd of the closed-form s'(x).
    smooth: bool
    id: int = -1  # position in SURROGATES: the C++ enum value and the Triton compile-time id

    @property
    def has_alpha(self) -> bool:
        return self.alpha is not None


SURROGATES: dict[str, Surrogate] = {
    s.name: replace(s, id=i)
    for i, s in enumerate(
        (
            Surrogate("bsilu", 1.67, "sigma(x) + (x+alpha) sigma(x) (1-sigma(x))", smooth=True),
            Surrogate("nelu", 0.01, "1 for x>0; 2 alpha x / (1+x^2)^2 for x<=0", smooth=False),
            Surrogate("elu", 1.0, "1 for x>0; alpha e^x for x<=0", smooth=False),
            Surrogate("selu", None, "lambda for x>0; lambda alpha0 e^x for x<=0", smooth=False),
            Surrogate("gelu", None, "Phi(x) + x phi(x)", smooth=True),
            Surrogate("silu", None, "sigma(x) (1 + x (1-sigma(x)))", smooth=True),
            Surrogate("mish", None, "tanh(sp(x)) + x sigma(x) (1 - tanh^2(sp(x)))", smooth=True),
            Surrogate("leaky_relu", 0.01, "1 for x>0; alpha for x<=0", smooth=False),
        )
    )
}
REGIONS = ("all", "negative")


def resolve(surrogate: str, alpha: float | None, region: str) -> tuple[str, float, str]:
    """Validate (surrogate, alpha, region) and return them with alpha filled in.

    Surrogates without a parameter get alpha 0.0, which the kernels ignore.
    """
    if not isinstance(surrogate, str) or surrogate not in SURROGATES:
        raise ValueError(
            f"unknown surrogate {surrogate!r}; valid surrogates: {', '.join(SURROGATES)}"
        )
    entry = SURROGATES[surrogate]
    if alpha is None:
        alpha = entry.alpha if entry.has_alpha else 0.0
    elif not entry.has_alpha:
        raise ValueError(
            f"surrogate {surrogate!r} has no alpha parameter, but alpha={alpha!r} was given; "
            f"surrogates with alpha: {', '.join(n for n, s in SURROGATES.items() if s.has_alpha)}"
        )
    else:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
        alpha = float(alpha)
        if not math.isfinite(alpha):
            raise ValueError(f"alpha must be finite, got {alpha}")
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; valid regions: {', '.join(REGIONS)}")
    return surrogate, float(alpha), region


# ---------------------------------------------------------------------------------------------
# s(x) from stock PyTorch functions (for the paper's formula and the autograd oracle)
# ---------------------------------------------------------------------------------------------
def surrogate_function(name: str):
    """s(x, alpha) as a differentiable function of stock PyTorch ops."""

    def bsilu(x, a):
        return (x + a) * torch.sigmoid(x) - a / 2

    def nelu(x, a):
        return torch.where(x > 0, x, a - a / (1 + x * x))

    def elu(x, a):
        return F.elu(x, alpha=a)

    def selu(x, a):
        return F.selu(x)

    def gelu(x, a):
        return F.gelu(x)

    def silu(x, a):
        return F.silu(x)

    def mish(x, a):
        return F.mish(x)

    def leaky_relu(x, a):
        return F.leaky_relu(x, negative_slope=a)

    return locals()[name]


# ---------------------------------------------------------------------------------------------
# s'(x) in closed form: the same formulas as csrc/sugar_math.h
# ---------------------------------------------------------------------------------------------
def _sigmoid_pair(x):
    """(sigma(x), sigma(-x), e) with e = exp(-|x|), from one exp and without cancellation."""
    e = torch.exp(-x.abs())
    inv = 1 / (1 + e)
    pos = x >= 0
    return torch.where(pos, inv, e * inv), torch.where(pos, e * inv, inv), e


def surrogate_derivative(name: str, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """s'(x) for the catalogue entry ``name``, computed in x's dtype."""
    x = torch.where(x < -DERIVATIVE_CLAMP, -DERIVATIVE_CLAMP, x)
    x = torch.where(x > DERIVATIVE_CLAMP, DERIVATIVE_CLAMP, x)  # NaN passes through
    one = torch.ones_like(x)
    if name == "bsilu":
        sig, sig_c, _ = _sigmoid_pair(x)
        return sig + (x + alpha) * sig * sig_c
    if name == "nelu":
        d = 1 + x * x
        return torch.where(x > 0, one, 2 * alpha * x / (d * d))
    if name == "elu":
        return torch.where(x > 0, one, alpha * torch.exp(x))
    if name == "selu":
        return SELU_LAMBDA * torch.where(x > 0, one, SELU_ALPHA * torch.exp(x))
    if name == "gelu":
        cdf = 0.5 * torch.erfc(-x * math.sqrt(0.5))
        pdf = torch.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
        return cdf + x * pdf
    if name == "silu":
        sig, sig_c, _ = _sigmoid_pair(x)
        return sig * (1 + x * sig_c)
    if name == "mish":
        # tanh(softplus(x)) = n / (n + 2) with n = e^x (e^x + 2); rewritten with e = exp(-|x|)
        # so that nothing overflows and 1 - tanh is computed without cancellation.
        sig, _, e = _sigmoid_pair(x)
        pos = x >= 0
        den = torch.where(pos, 1 + 2 * e + 2 * e * e, e * (e + 2) + 2)
        tanh_sp = torch.where(pos, 1 + 2 * e, e * (e + 2)) / den
        one_minus = torch.where(pos, 2 * e * e, torch.full_like(x, 2.0)) / den
        return tanh_sp + x * sig * one_minus * (1 + tanh_sp)
    if name == "leaky_relu":
        return torch.where(x > 0, one, torch.full_like(x, alpha))
    raise ValueError(f"unknown surrogate {name!r}")


def grad_factor(x: torch.Tensor, surrogate: str, alpha: float, region: str) -> torch.Tensor:
    """g(x): the factor backward multiplies grad_y by: s'(x) everywhere for region "all"; for
    region "negative", 1 for x > 0 and s'(x) for x <= 0."""
    d = surrogate_derivative(surrogate, x, alpha)
    if region == "negative":
        d = torch.where(x > 0, torch.ones_like(d), d)
    return d
