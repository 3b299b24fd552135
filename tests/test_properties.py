"""Property-based tests (hypothesis): random shapes, strides, dtypes, surrogates, regions, code
modes and in-place calls against the reference.

Two settings objects, chosen locally (no global hypothesis profile is registered):

* ``CI``: a few dozen derandomised examples per test, so every run checks the same cases;
* ``THOROUGH``: 1000 random examples per test, for a dedicated run:
  ``HYPOTHESIS_PROFILE=thorough python -m pytest -m slow tests/test_properties.py``.
  Those tests are marked ``slow`` and skip unless the variable is set.

What is checked, for every drawn case: the forward is bit-identical to ``torch.relu`` (-0.0
included; a NaN comes back with its own bits, see ``check_case``), keeps torch.relu's layout,
and in place writes into x's storage; exact-mode gradients match the float64 oracle within
``helpers.tolerances``; code-mode gradients equal ``grad_y * levels[code(x)]`` computed by the
pure-PyTorch quantisation, bit for bit; an in-place call on a self-overlapping (expanded)
tensor raises like ``torch.relu_``.
"""

from __future__ import annotations

import os

import pytest
import torch
from helpers import (
    CUSTOM_ALPHA,
    DTYPES,
    assert_bitwise_equal,
    assert_grad_close,
    oracle_grad,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sugar_kernels as sk
from sugar_kernels import code_tables as C
from sugar_kernels.surrogates import resolve

# The Triton interpreter is too slow for hundreds of examples; it has its own tests.
BACKENDS = [b for b in sk.available_backends("cpu") if b != "triton"]
THOROUGH_RUN = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"

CI = settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
THOROUGH = settings(
    max_examples=1000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

LAYOUTS = ("contiguous", "transposed", "sliced", "expanded", "channels_last")
SPECIALS = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e4, -1e4, 1e-40, -1e-40]


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------
@st.composite
def cases(draw):
    """(x, grad_out_kind, config): a float tensor of some shape, layout and dtype, and a call."""
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(LAYOUTS))
    ndim = 4 if layout == "channels_last" else draw(st.integers(0, 4))
    # sizes 0 and 1 often; a ragged dimension up to 37 sometimes (packing tails, vector loops)
    size = st.one_of(st.integers(0, 3), st.integers(1, 9), st.integers(10, 37))
    shape = draw(st.lists(size, min_size=ndim, max_size=ndim))
    if ndim and sum(shape) > 60:  # keep numel modest: the reference backend works in float64
        shape = [min(s, 5) for s in shape]
    x = _make_layout(draw, layout, shape, dtype)

    name = draw(st.sampled_from(list(sk.SURROGATES)))
    alpha = None
    if sk.SURROGATES[name].has_alpha and draw(st.booleans()):
        alpha = CUSTOM_ALPHA[name]
    config = {
        "surrogate": name,
        "alpha": alpha,
        "region": draw(st.sampled_from(sk.REGIONS)),
        "bits": draw(st.sampled_from([None, 8, 4, 2, 1])),
        "backend": draw(st.sampled_from(BACKENDS)),
    }
    config["inplace"] = config["bits"] is not None and draw(st.booleans())
    grad_kind = draw(st.sampled_from(["random", "expanded-scalar", "transposed"]))
    return x, grad_kind, config


def _values(draw, n: int, dtype: torch.dtype) -> torch.Tensor:
    """n values: mostly N(0, 4^2) from a drawn seed, with drawn special values spliced in."""
    seed = draw(st.integers(0, 2**31 - 1))
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 4
    if n:
        specials = draw(st.lists(st.sampled_from(SPECIALS), max_size=min(n, 6)))
        for i, s in enumerate(specials):
            v[(seed + 7 * i) % n] = s
    return v.to(dtype)


def _make_layout(draw, layout: str, shape: list[int], dtype) -> torch.Tensor:
    numel = 1
    for s in shape:
        numel *= s
    if layout in ("contiguous", "channels_last") or len(shape) < 2 and layout == "transposed":
        x = _values(draw, numel, dtype).reshape(shape)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        return x
    if layout == "transposed":
        perm = draw(st.permutations(range(len(shape))))
        base_shape = [shape[p] for p in perm]
        base = _values(draw, numel, dtype).reshape(base_shape)
        inverse = sorted(range(len(perm)), key=lambda i: perm[i])
        return base.permute(*inverse)
    if layout == "sliced":
        if not shape:
            return _values(draw, 1, dtype).reshape(())
        dim = draw(st.integers(0, len(shape) - 1))
        step = draw(st.integers(2, 3))
        offset = draw(st.integers(0, 1))
        base_shape = list(shape)
        base_shape[dim] = shape[dim] * step + offset
        base = _values(draw, _prod(base_shape), dtype).reshape(base_shape)
        index = [slice(None)] * len(shape)
        index[dim] = slice(offset, offset + shape[dim] * step, step)
        return base[tuple(index)]
    # expanded: some dims of size 1 broadcast to the drawn size (stride 0)
    if not shape:
        return _values(draw, 1, dtype).reshape(()).expand(())
    dims = draw(st.sets(st.integers(0, len(shape) - 1), min_size=1))
    base_shape = [1 if d in dims else s for d, s in enumerate(shape)]
    return _values(draw, _prod(base_shape), dtype).reshape(base_shape).expand(*shape)


def _prod(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def _grad_out(kind: str, y: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(12345)
    if kind == "expanded-scalar":  # what (y * c).sum().backward() sends
        return torch.full((), 0.75, dtype=y.dtype).expand(y.shape)
    if kind == "transposed" and y.dim() >= 2:
        t = torch.randn(tuple(reversed(y.shape)), generator=g, dtype=torch.float64)
        return (
            t.to(y.dtype).t() if y.dim() == 2 else t.to(y.dtype).permute(*reversed(range(y.dim())))
        )
    return torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)


def _layout(t: torch.Tensor) -> tuple:
    return tuple((n, st_) for n, st_ in zip(t.shape, t.stride()) if n > 1)


def _storage_copy(x: torch.Tensor) -> torch.Tensor:
    """A 1-D copy of x's whole storage (x's view of it is x.as_strided geometry)."""
    n_storage = x.untyped_storage().nbytes() // x.element_size()
    return x.detach().as_strided((n_storage,), (1,), 0).clone()


def _relu_inplace_raises(x: torch.Tensor) -> bool:
    """Whether torch.relu_ refuses a tensor of x's geometry (internal memory overlap)."""
    storage = _storage_copy(x)
    try:
        torch.relu_(storage.as_strided(x.shape, x.stride(), x.storage_offset()))
    except RuntimeError:
        return True
    return False


# ---------------------------------------------------------------------------------------------
# The property
# ---------------------------------------------------------------------------------------------
def check_case(x: torch.Tensor, grad_kind: str, config: dict) -> None:
    cfg = dict(config)
    inplace = cfg.pop("inplace")
    x_orig = x.detach().clone()  # same values (clone keeps dense layouts), not the same storage
    # torch.relu, except that a NaN comes back with its own bits: torch.relu's AVX512 bfloat16
    # path itself returns 0xFFFF for every NaN (its scalar path keeps the bits), so relu of the
    # same values is not bit-stable across layouts/lengths; SUGAR always returns the input NaN.
    expected_y = torch.where(x_orig.isnan(), x_orig, torch.relu(x_orig))
    where = f"{config} shape={tuple(x.shape)} stride={x.stride()} dtype={x.dtype}"

    if inplace:
        # In place on a non-leaf with x's exact geometry: a 1-D copy of x's whole storage,
        # times 1, viewed with x's sizes, strides and offset. The gradient at x's positions is
        # then read from the 1-D leaf's gradient through the same geometry.
        leaf = _storage_copy(x).requires_grad_()
        pre = leaf.clone()  # a non-leaf; bit-exact (leaf * 1 may canonicalise NaNs)
        target = pre.as_strided(x.shape, x.stride(), x.storage_offset())
        if _relu_inplace_raises(x):  # self-overlapping memory: must raise like torch.relu_
            with pytest.raises(RuntimeError, match="more than one element"):
                sk.sugar_relu(target, inplace=True, **cfg)
            return
        ptr = target.data_ptr()
        y = sk.sugar_relu(target, inplace=True, **cfg)
        assert y.data_ptr() == ptr and y.shape == x.shape and y.stride() == x.stride(), where
        assert_bitwise_equal(y, expected_y, f"in-place forward {where}")
        go = _grad_out(grad_kind, y)
        # (the gradient w.r.t. pre itself would be w.r.t. its new, rebased version)
        (g_leaf,) = torch.autograd.grad(y, leaf, go)
        gx = g_leaf.contiguous().as_strided(x.shape, x.stride(), x.storage_offset())
    else:
        xin = x.detach().requires_grad_()  # keeps x's strides, expanded ones included
        y = sk.sugar_relu(xin, **cfg)
        # torch.relu's layout (strides of size-1 dimensions and of empty tensors mean nothing)
        assert y.numel() == 0 or _layout(y) == _layout(torch.relu(x.detach())), where
        assert_bitwise_equal(y, expected_y, f"forward {where}")
        go = _grad_out(grad_kind, y)
        (gx,) = torch.autograd.grad(y, xin, go)

    if cfg["bits"] is None:
        ref = oracle_grad(go, x_orig, cfg["surrogate"], cfg["alpha"], cfg["region"])
        assert_grad_close(gx, ref, go, x.dtype, where)
    else:
        _, alpha, _ = resolve(cfg["surrogate"], cfg["alpha"], cfg["region"])
        levels, thr, icodes = C.tables(
            cfg["surrogate"], alpha, cfg["region"], cfg["bits"], x.device, x.dtype
        )
        codes = C.encode_reference(x_orig, thr, icodes, cfg["bits"])
        expected = C.decode_reference(go.contiguous(), codes, levels, cfg["bits"])
        assert_bitwise_equal(gx.contiguous(), expected, f"code-mode grad {where}")


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
@CI
@given(case=cases())
def test_matches_reference(case):
    check_case(*case)


@pytest.mark.slow
@pytest.mark.skipif(not THOROUGH_RUN, reason="set HYPOTHESIS_PROFILE=thorough to run")
@THOROUGH
@given(case=cases())
def test_matches_reference_thorough(case):
    check_case(*case)


@CI
@given(
    patterns=st.lists(st.integers(-(2**15), 2**15 - 1), min_size=0, max_size=33),
    bits=st.sampled_from([8, 4, 2, 1]),
    inplace=st.booleans(),
    backend=st.sampled_from(BACKENDS),
)
def test_code_mode_any_half_bit_pattern_any_length(patterns, bits, inplace, backend):
    """Arbitrary float16 bit patterns (subnormals, extremes, +-0, NaNs with payloads) at every
    length around the packing boundary: forward bits, codes and gradients as the reference."""
    x = torch.tensor(patterns, dtype=torch.int16).view(torch.float16)
    config = {
        "surrogate": "bsilu",
        "alpha": None,
        "region": "negative",
        "bits": bits,
        "backend": backend,
        "inplace": inplace,
    }
    check_case(x, "random", config)
