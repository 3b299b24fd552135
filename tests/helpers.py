"""Shared test helpers: the named sample tensors and the gradient tolerance check.

``sample_inputs(device, dtype)`` is the one source of test tensors for correctness, gradients,
``opcheck`` and the CUDA tests (the pytorch/extension-cpp pattern). Every tensor is generated from
a fixed seed with a private ``torch.Generator``, so nothing global is touched and every run sees
the same values.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

import sugar_kernels as sk
from sugar_kernels.surrogates import grad_factor

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# "cpu", and "cuda" where a GPU and the compiled CUDA kernels are there (else skipped, marked cuda).
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(
                not sk.build_info()["cuda_compiled"] or not torch.cuda.is_available(),
                reason="needs a CUDA GPU and the compiled CUDA kernels",
            ),
        ],
    ),
]
INT_VIEW = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}
LARGE_SIZE = 1_000_003  # ragged, > 2^19 so the CPU kernels split it over threads
# A non-default value for every surrogate that has a parameter: these, else twice the default.
_CHOSEN_ALPHA = {"bsilu": 0.5, "nelu": 0.25, "elu": 1.7, "leaky_relu": 0.2}
CUSTOM_ALPHA = {
    name: _CHOSEN_ALPHA.get(name, 2 * s.alpha) for name, s in sk.SURROGATES.items() if s.has_alpha
}

# (surrogate, alpha) pairs: default alpha (None) for every surrogate, plus the custom one.
SURROGATE_ALPHAS = [(name, None) for name in sk.SURROGATES] + list(CUSTOM_ALPHA.items())


def surrogate_alpha_id(pair) -> str:
    name, alpha = pair
    return name if alpha is None else f"{name}-a{alpha}"


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()  # CPU generator: the same values on every device
    g.manual_seed(seed)
    return g


def _randn(shape, seed: int, dtype: torch.dtype, device, scale: float = 4.0) -> torch.Tensor:
    """N(0, scale^2) values with ~3% exact zeros (x = 0 belongs to the negative side).

    scale 4 puts values well into the tails of every surrogate (|x| up to ~20).
    """
    x = torch.randn(shape, generator=_generator(seed), dtype=torch.float64) * scale
    zero = torch.rand(shape, generator=_generator(seed + 1)) < 0.03
    x = torch.where(zero, torch.zeros_like(x), x)
    return x.to(dtype=dtype, device=device)


def _from_bits(bits: list[int], dtype: torch.dtype, device) -> torch.Tensor:
    return torch.tensor(bits, dtype=INT_VIEW[dtype]).view(dtype).to(device)


def special_values(dtype: torch.dtype, device="cpu") -> torch.Tensor:
    """NaN (with sign and payload), +-Inf, +-0.0, finite extremes, subnormals and clamp edges."""
    fi = torch.finfo(dtype)
    values = [
        math.nan,
        math.inf,
        -math.inf,
        -0.0,
        0.0,
        fi.max,
        -fi.max,
        fi.tiny,
        -fi.tiny,
        fi.tiny * fi.eps,  # smallest subnormal
        -fi.tiny * fi.eps,
        1.0e4,  # the derivative clamp (bfloat16 rounds it to 9984)
        -1.0e4,
        2.0e4,
        -2.0e4,
        100.0,
        -100.0,
        30.0,
        -30.0,
        1.0,
        -1.0,
        fi.eps,
        -fi.eps,
    ]
    x = torch.tensor(values, dtype=torch.float64).to(dtype)
    # Quiet NaNs with a sign bit and a payload: the forward must return them bit for bit.
    if dtype == torch.float64:
        payload_nans = [-2251799276814336, 0x7FF8_0000_0000_1234]
    elif dtype == torch.float32:
        payload_nans = [-4194303, 0x7FC0_1234]
    elif dtype == torch.float16:
        payload_nans = [-512 + 3, 0x7E12]
    else:  # bfloat16
        payload_nans = [-64 + 3, 0x7FC3]
    nans = _from_bits(payload_nans, dtype, "cpu")
    return torch.cat([x, nans]).to(device)


def is_dense(x: torch.Tensor) -> bool:
    """True if x's elements occupy one block of memory without overlap (any dim order)."""
    if x.numel() <= 1:
        return True
    dims = sorted((s, n) for s, n in zip(x.stride(), x.shape) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def sample_inputs(
    device="cpu", dtype=torch.float32, *, large: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """Named test tensors (no requires_grad; callers take ``x.detach().requires_grad_()``).

    ``large=True`` adds the 1000003-element tensor; keep it to few parametrisations (CI time).
    """

    def r(shape, seed):
        return _randn(shape, seed, dtype, device)

    yield "0-dim", r((), 1)
    yield "empty", r((0,), 2)
    yield "empty-3d", r((3, 0, 5), 3)
    yield "size-1", r((1,), 4)
    yield "size-7", r((7,), 5)
    yield "size-1023", r((1023,), 6)
    yield "2d-contiguous", r((37, 129), 7)
    yield "transposed", r((65, 33), 8).t()
    yield "sliced", r((40, 130), 9)[:, 1::2]
    yield "offset-by-one", r((1025,), 10)[1:]  # misaligned data pointer, contiguous
    yield "permuted-3d", r((6, 7, 9), 11).permute(2, 0, 1)
    yield "expanded", r((1, 31), 12).expand(5, 31)  # stride 0: overlapping memory
    yield "channels_last", r((2, 5, 7, 9), 13).contiguous(memory_format=torch.channels_last)
    yield "special", special_values(dtype, device)
    if large:
        yield f"size-{LARGE_SIZE}", r((LARGE_SIZE,), 14)


def grad_output_for(y: torch.Tensor, seed: int = 1234) -> torch.Tensor:
    """A random upstream gradient with y's shape, strides and dtype (like randn_like)."""
    g = torch.randn(y.shape, generator=_generator(seed), dtype=torch.float64).to(y.dtype)
    out = torch.empty_like(y)
    out.copy_(g.to(y.device))
    return out


def oracle_grad(
    grad_out: torch.Tensor, x: torch.Tensor, surrogate: str, alpha, region: str
) -> torch.Tensor:
    """grad_y * g(x) in float64 (unrounded): the reference every backend is compared with."""
    _, alpha, _ = sk.surrogates.resolve(surrogate, alpha, region)
    return grad_out.double() * grad_factor(x.double(), surrogate, alpha, region)


# ---------------------------------------------------------------------------------------------
# Tolerances
# ---------------------------------------------------------------------------------------------
# The spec (issue 2) for float32: |g - ref| <= 2e-5 |ref| + 1e-6 |grad_out|. The derivatives cross
# zero, so a purely relative bound would be wrong; the second term scales with the upstream
# gradient because the error of g(x) in float32 is absolute near those zeros.
F32_RTOL = 2e-5
F32_GTOL = 1e-6


def tolerances(dtype: torch.dtype) -> tuple[float, float, float]:
    """(rtol, gtol, atol) for |g - ref| <= rtol |ref| + gtol |grad_out| + atol.

    * float32: the spec bound above; atol = one float32 subnormal spacing.
    * float16 / bfloat16: inputs are exact in float32, the kernels compute in float32 ("opmath",
      error v - ref bounded by the float32 spec) and round ONCE to the output dtype, which adds at
      most half an ulp: |round(v) - v| <= (eps/2) |v|, eps = 2^-10 (half) / 2^-7 (bfloat16).
      With |v| <= |ref| + err32 this gives rtol = eps/2 + 2e-5 (1 + eps/2),
      gtol = 1e-6 (1 + eps/2); in the subnormal range the rounding error is absolute, at most half
      the subnormal spacing (atol). There is no input rounding term: the oracle sees the same
      (already rounded) input values as the kernel. Computing g in the low dtype or rounding twice
      exceeds this bound, as it should.
    * float64: the kernels compute in float64; 1e-12 relative (a few thousand ulp, room for
      different but careful libm implementations of exp/erfc) plus 1e-15 |grad_out| near zeros.
    """
    fi = torch.finfo(dtype)
    subnormal = fi.tiny * fi.eps
    if dtype == torch.float64:
        return 1e-12, 1e-15, subnormal
    if dtype == torch.float32:
        return F32_RTOL, F32_GTOL, subnormal
    half_ulp = fi.eps / 2
    return half_ulp + F32_RTOL * (1 + half_ulp), F32_GTOL * (1 + half_ulp), subnormal / 2


def assert_grad_close(
    actual: torch.Tensor,
    ref: torch.Tensor,
    grad_out: torch.Tensor,
    dtype: torch.dtype | None = None,
    msg: str = "",
    tol: tuple[float, float, float] | None = None,
) -> None:
    """Check actual (any float dtype) against the float64 ``ref`` with ``tolerances(dtype)``.

    NaN must be at the same positions as in ref; infinite ref values must match exactly;
    everything else must satisfy the mixed bound. The failure message shows the worst elements.
    """
    dtype = dtype or actual.dtype
    assert actual.shape == ref.shape, f"{msg}: shape {tuple(actual.shape)} != {tuple(ref.shape)}"
    rtol, gtol, atol = tol or tolerances(dtype)
    # compare on actual's device (fast on GPU); only the failure report moves data to the host
    a = actual.detach().double().reshape(-1)
    r = ref.detach().to(a.device, torch.float64).reshape(-1)
    go = grad_out.detach().to(a.device, torch.float64).reshape(-1)
    nan_a, nan_r = a.isnan(), r.isnan()
    if not torch.equal(nan_a, nan_r):
        idx = (nan_a != nan_r).nonzero().flatten()[:5].tolist()
        raise AssertionError(
            f"{msg}: NaN mismatch at flat indices {idx}: actual {a[idx].tolist()}, "
            f"ref {r[idx].tolist()}"
        )
    inf_r = r.isinf()
    if not torch.equal(a[inf_r], r[inf_r]) or a[~inf_r].isinf().any():
        raise AssertionError(f"{msg}: infinite values differ")
    fin = ~(nan_r | inf_r)
    a, r, go = a[fin], r[fin], go[fin]
    err = (a - r).abs()
    bound = rtol * r.abs() + gtol * go.abs() + atol
    bad = err > bound
    if bad.any():
        excess = torch.where(bad, err / bound.clamp_min(1e-300), torch.zeros_like(err))
        worst = excess.argsort(descending=True)[:5]
        rows = ", ".join(
            f"(actual={a[i].item():.17g}, ref={r[i].item():.17g}, grad_out={go[i].item():.6g}, "
            f"err/bound={excess[i].item():.3g})"
            for i in worst.tolist()
        )
        raise AssertionError(
            f"{msg}: {int(bad.sum())} of {bad.numel()} elements outside "
            f"|g-ref| <= {rtol:.3g}|ref| + {gtol:.3g}|grad_out| + {atol:.3g}; worst: {rows}"
        )


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor, msg: str = "") -> None:
    """Equal bit patterns (so -0.0 != +0.0 and NaN payloads count), same shape and dtype."""
    assert actual.dtype == expected.dtype, f"{msg}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{msg}: shape {actual.shape} != {expected.shape}"
    iv = INT_VIEW[actual.dtype]
    a = actual.detach().contiguous().view(iv)
    e = expected.detach().to(actual.device).contiguous().view(iv)
    if not torch.equal(a, e):
        a, e = a.cpu().reshape(-1), e.cpu().reshape(-1)
        idx = (a != e).nonzero().flatten()[:5]
        af, ef = actual.detach().cpu().reshape(-1), expected.detach().cpu().reshape(-1)
        raise AssertionError(
            f"{msg}: {int((a != e).sum())} elements differ bitwise; first at flat indices "
            f"{idx.tolist()}: actual {af[idx].tolist()} (bits {a[idx].tolist()}), "
            f"expected {ef[idx].tolist()} (bits {e[idx].tolist()})"
        )
