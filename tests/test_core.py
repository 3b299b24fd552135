"""Correctness of the SUGAR op for every available backend: forward, gradients, layouts.

Forward must be bit-identical to ``torch.relu``; gradients must match the float64 oracle
``grad_y * grad_factor(x)`` within ``helpers.tolerances`` and, in float64, the autograd of the
paper's formula (an oracle built only from stock PyTorch functions). Parametrised over
``sk.available_backends(device)``, so the same tests check the reference backend and every
compiled kernel that is built. The CUDA part at the end skips cleanly without a GPU.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import (
    CUSTOM_ALPHA,
    DTYPES,
    LARGE_SIZE,
    SURROGATE_ALPHAS,
    assert_bitwise_equal,
    assert_grad_close,
    grad_output_for,
    is_dense,
    oracle_grad,
    sample_inputs,
    special_values,
    surrogate_alpha_id,
    tolerances,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import sugar_kernels as sk
from sugar_kernels.surrogates import SELU_LAMBDA, grad_factor, resolve

CPU_BACKENDS = sk.available_backends("cpu")
CUDA_BACKENDS = [b for b in sk.available_backends("cuda") if b != "reference"]
REGIONS = ("all", "negative")
DTYPE_IDS = [str(d).removeprefix("torch.") for d in DTYPES]


def _run(x, surrogate, alpha, region, backend, grad_out=None):
    """Forward + backward through sugar_relu; returns (y, grad_x, grad_out)."""
    xl = x.detach().requires_grad_()
    y = sk.sugar_relu(xl, surrogate, alpha=alpha, region=region, backend=backend)
    if grad_out is None:
        grad_out = grad_output_for(y)
    (gx,) = torch.autograd.grad(y, xl, grad_out)
    return y, gx, grad_out


def _paper_grad(x, grad_out, surrogate, alpha, region):
    """Gradient of the paper's formula by autograd (float64, stock PyTorch functions only)."""
    _, alpha, _ = resolve(surrogate, alpha, region)
    xp = x.detach().double().requires_grad_()
    y = sk.paper_formula(xp, surrogate, alpha, region)
    (g,) = torch.autograd.grad(y, xp, grad_out.double())
    return g


# ---------------------------------------------------------------------------------------------
# Backends and build
# ---------------------------------------------------------------------------------------------
def test_available_backends_consistent_with_build_info():
    info = sk.build_info()
    for key in ("torch", "cpu_compiled", "cuda_compiled", "cuda_archs", "triton", "extension"):
        assert key in info
    assert CPU_BACKENDS[-1] == "reference"
    assert ("cpu" in CPU_BACKENDS) == bool(info["cpu_compiled"])
    if info["cpu_compiled"]:
        assert CPU_BACKENDS[0] == "cpu", "auto must prefer the compiled CPU kernel"
    if not info["extension"]:
        assert "make install" in str(info["extension_error"])
    assert "cuda" not in CPU_BACKENDS
    if not torch.cuda.is_available():
        assert sk.available_backends("cuda") == ["reference"]


@pytest.mark.skipif(not sk.build_info()["cpu_compiled"], reason="CPU kernel not compiled")
def test_cpu_backend_runs_compiled_op():
    """backend="cpu" and "auto" go through the compiled op, not the reference op."""
    x = torch.randn(8, requires_grad=True)
    for backend in ("cpu", "auto"):
        y = sk.sugar_relu(x, backend=backend)
        assert "reference" not in type(y.grad_fn).__name__.lower(), type(y.grad_fn).__name__
    y_ref = sk.sugar_relu(x, backend="reference")
    assert "reference" in type(y_ref.grad_fn).__name__.lower()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_auto_equals_first_available_backend(dtype):
    x = dict(sample_inputs("cpu", dtype))["special"]
    y_auto, g_auto, go = _run(x, "bsilu", None, "all", "auto")
    y_first, g_first, _ = _run(x, "bsilu", None, "all", CPU_BACKENDS[0], go)
    assert_bitwise_equal(y_auto, y_first, "forward")
    assert_bitwise_equal(g_auto, g_first, "grad")


# ---------------------------------------------------------------------------------------------
# Forward: bit-identical to torch.relu, same strides
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_forward_bitwise_equals_torch_relu(backend, dtype):
    for name, x in sample_inputs("cpu", dtype, large=True):
        before = x.clone()
        expected = torch.relu(x)
        for requires_grad in (False, True):
            xi = x.detach().requires_grad_(requires_grad)
            y = sk.sugar_relu(xi, backend=backend)
            assert_bitwise_equal(y, expected, f"{name} requires_grad={requires_grad}")
            assert y.device == x.device
            if is_dense(x):
                assert y.stride() == expected.stride(), f"{name}: strides {y.stride()}"
        assert_bitwise_equal(x, before, f"{name}: input modified")


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize(
    "surrogate, alpha", SURROGATE_ALPHAS, ids=[surrogate_alpha_id(p) for p in SURROGATE_ALPHAS]
)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_forward_independent_of_surrogate(backend, surrogate, alpha, region):
    for dtype in DTYPES:
        x = special_values(dtype)
        y = sk.sugar_relu(
            x.requires_grad_(), surrogate, alpha=alpha, region=region, backend=backend
        )
        assert_bitwise_equal(y, torch.relu(x.detach()), f"{dtype}")


def test_forward_channels_last_kept():
    x = torch.randn(2, 6, 5, 4).contiguous(memory_format=torch.channels_last)
    for backend in CPU_BACKENDS:
        y = sk.sugar_relu(x, backend=backend)
        assert y.is_contiguous(memory_format=torch.channels_last), backend
        assert y.stride() == x.stride(), backend


# ---------------------------------------------------------------------------------------------
# Gradients vs the float64 oracle
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize(
    "surrogate, alpha", SURROGATE_ALPHAS, ids=[surrogate_alpha_id(p) for p in SURROGATE_ALPHAS]
)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradients_match_oracle(backend, dtype, surrogate, alpha, region):
    for name, x in sample_inputs("cpu", dtype):
        before = x.clone()
        y, gx, go = _run(x, surrogate, alpha, region, backend)
        go_before = go.clone()
        assert gx.dtype == dtype and gx.shape == x.shape and gx.device == x.device
        ref = oracle_grad(go, x, surrogate, alpha, region)
        assert_grad_close(gx, ref, go, dtype, f"{backend} {dtype} {surrogate} {region} {name}")
        if dtype == torch.float64 and name != "special":
            # independent oracle: autograd through the paper's formula (finite inputs only)
            paper = _paper_grad(x, go, surrogate, alpha, region)
            assert_grad_close(gx, paper, go, dtype, f"vs paper formula, {surrogate} {name}")
        assert_bitwise_equal(x, before, f"{name}: x modified")
        assert_bitwise_equal(go, go_before, f"{name}: grad_out modified")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradients_any_grad_out_layout(backend, dtype):
    """grad_y may arrive in another layout than x (transposed, expanded, channels_last)."""
    gen = torch.Generator().manual_seed(5)
    shape = (2, 3, 5, 4)
    xs = {
        "contiguous": torch.randn(shape, generator=gen).to(dtype) * 4,
        "channels_last": (torch.randn(shape, generator=gen) * 4)
        .to(dtype)
        .contiguous(memory_format=torch.channels_last),
    }
    base = torch.randn(shape, generator=gen).to(dtype)
    gos = {
        "contiguous": base,
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "permuted": base.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0),
        "expanded": base[:1, :1].expand(shape),
        "sliced": torch.randn(2, 3, 5, 8, generator=gen).to(dtype)[..., ::2],
    }
    for xname, x in xs.items():
        for gname, go in gos.items():
            _, gx, _ = _run(x, "silu", None, "negative", backend, go)
            ref = oracle_grad(go, x, "silu", None, "negative")
            assert_grad_close(gx, ref, go, dtype, f"x {xname}, grad_out {gname}")


LARGE_CASES = [
    (torch.float32, "bsilu", None, "all"),
    (torch.float16, "gelu", None, "negative"),
    (torch.bfloat16, "mish", None, "all"),
    (torch.float64, "nelu", CUSTOM_ALPHA["nelu"], "negative"),
]


@pytest.mark.parametrize(
    "dtype, surrogate, alpha, region",
    LARGE_CASES,
    ids=[f"{str(c[0])[6:]}-{c[1]}-{c[3]}" for c in LARGE_CASES],
)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradients_large(backend, dtype, surrogate, alpha, region):
    x = dict(sample_inputs("cpu", dtype, large=True))[f"size-{LARGE_SIZE}"]
    _, gx, go = _run(x, surrogate, alpha, region, backend)
    ref = oracle_grad(go, x, surrogate, alpha, region)
    assert_grad_close(gx, ref, go, dtype, f"{backend} {dtype} {surrogate} {region} large")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradient_region_semantics(backend):
    """g = 1 exactly for x > 0 with region="negative"; x = 0 belongs to the negative side."""
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-30, 0.5, 3.0], dtype=torch.float64)
    ones = torch.ones_like(x)
    for surrogate, alpha in SURROGATE_ALPHAS:
        _, g_neg, _ = _run(x, surrogate, alpha, "negative", backend, ones)
        _, g_all, _ = _run(x, surrogate, alpha, "all", backend, ones)
        assert torch.equal(g_neg[3:], torch.ones(3, dtype=torch.float64)), surrogate
        # at x <= 0 both regions use s'(x)
        assert torch.equal(g_neg[:3], g_all[:3]), surrogate
    # s'(0) values: x = 0 is on the negative side
    _, g, _ = _run(x[1:3], "leaky_relu", 0.2, "negative", backend, ones[:2])
    assert g.tolist() == [0.2, 0.2]
    _, g, _ = _run(x[1:3], "elu", 1.7, "all", backend, ones[:2])
    assert g.tolist() == [1.7, 1.7]
    _, g, _ = _run(x[1:3], "nelu", None, "all", backend, ones[:2])
    assert g.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dead_units_get_gradient(backend):
    """The point of SUGAR: negative inputs receive gradient, unlike ReLU."""
    x = torch.linspace(-3, -0.1, 11)
    _, g, _ = _run(x, "bsilu", None, "all", backend, torch.ones_like(x))
    assert (g != 0).all()
    _, g_relu_like, _ = _run(x, "leaky_relu", 0.0, "all", backend, torch.ones_like(x))
    assert (g_relu_like == 0).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_saved_tensors_hooks_see_only_x(backend):
    """Exact mode saves x (and only x) through save_for_backward, visible to saved-tensor hooks."""
    packed = []

    def pack(t):
        packed.append(t)
        return ("packed", t)

    def unpack(p):
        assert p[0] == "packed"
        return p[1]

    x = torch.randn(4, 33, requires_grad=True)
    go = torch.randn(4, 33)
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        y = sk.sugar_relu(x, "gelu", backend=backend)
    assert len(packed) == 1, f"saved {len(packed)} tensors"
    assert packed[0].data_ptr() == x.data_ptr() and packed[0].shape == x.shape
    (g,) = torch.autograd.grad(y, x, go)
    assert_grad_close(g, oracle_grad(go, x, "gelu", None, "all"), go)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_activation_checkpointing(backend):
    from torch.utils.checkpoint import checkpoint

    lin = torch.nn.Linear(16, 16)
    x = torch.randn(8, 16, requires_grad=True)

    def block(t):
        return lin(sk.sugar_relu(lin(t), "mish", region="negative", backend=backend)).sum()

    (g_plain,) = torch.autograd.grad(block(x), x)
    (g_ckpt,) = torch.autograd.grad(checkpoint(block, x, use_reentrant=False), x)
    assert_bitwise_equal(g_ckpt, g_plain, "checkpointed grad")


# ---------------------------------------------------------------------------------------------
# The oracle itself: closed forms vs autograd of stock PyTorch functions
# ---------------------------------------------------------------------------------------------
def _finite_grid(dtype):
    grid = torch.linspace(-40, 40, 16001, dtype=torch.float64)
    extra = torch.tensor(
        [
            0.0,
            -0.0,
            1e-300,
            -1e-300,
            1e-8,
            -1e-8,
            1e-3,
            -1e-3,
            100.0,
            -100.0,
            700.0,
            -700.0,
            1e3,
            -1e3,
        ],
        dtype=torch.float64,
    )
    return torch.cat([grid, extra]).to(dtype)


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize(
    "surrogate, alpha", SURROGATE_ALPHAS, ids=[surrogate_alpha_id(p) for p in SURROGATE_ALPHAS]
)
def test_grad_factor_matches_paper_autograd(surrogate, alpha, region):
    """float64 closed forms (also the kernels' formulas) vs torch autograd of s(x)."""
    x = _finite_grid(torch.float64)
    ones = torch.ones_like(x)
    _, a, _ = resolve(surrogate, alpha, region)
    assert_grad_close(
        grad_factor(x, surrogate, a, region),
        _paper_grad(x, ones, surrogate, alpha, region),
        ones,
        torch.float64,
        f"{surrogate} {region}",
    )


@pytest.mark.parametrize("surrogate", list(sk.SURROGATES))
def test_paper_formula_default_alpha_is_the_surrogates(surrogate):
    """Without alpha, the paper's formula uses the surrogate's own default, as sugar_relu does
    (e.g. 1.0 for elu, not bsilu's 1.67)."""
    x = _finite_grid(torch.float64)
    ones = torch.ones_like(x)
    xp = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(sk.paper_formula(xp, surrogate), xp, ones)
    _, a, _ = resolve(surrogate, None, "all")
    assert_grad_close(g, grad_factor(x, surrogate, a, "all"), ones, torch.float64, surrogate)


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize(
    "surrogate, alpha", SURROGATE_ALPHAS, ids=[surrogate_alpha_id(p) for p in SURROGATE_ALPHAS]
)
def test_grad_factor_float32_meets_spec(surrogate, alpha, region):
    """The closed forms evaluated in float32 (what the kernels do) meet the float32 tolerance."""
    fi = torch.finfo(torch.float32)
    x = torch.cat(
        [
            _finite_grid(torch.float32),
            torch.tensor([fi.max, -fi.max, fi.tiny, -fi.tiny, 1e4, -1e4, 3e4, -3e4]),
        ]
    )
    ones = torch.ones_like(x)
    _, a, _ = resolve(surrogate, alpha, region)
    assert_grad_close(
        grad_factor(x, surrogate, a, region),
        grad_factor(x.double(), surrogate, a, region),
        ones,
        torch.float32,
        f"{surrogate} {region}",
    )


# limits of s'(x) at -inf and +inf (region "all"); alpha is the resolved value
LIMITS = {
    "bsilu": (lambda a: 0.0, 1.0),
    "nelu": (lambda a: 0.0, 1.0),
    "elu": (lambda a: 0.0, 1.0),
    "selu": (lambda a: 0.0, SELU_LAMBDA),
    "gelu": (lambda a: 0.0, 1.0),
    "silu": (lambda a: 0.0, 1.0),
    "mish": (lambda a: 0.0, 1.0),
    "leaky_relu": (lambda a: a, 1.0),
}


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize(
    "surrogate, alpha", SURROGATE_ALPHAS, ids=[surrogate_alpha_id(p) for p in SURROGATE_ALPHAS]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_grad_factor_nonfinite_inputs(dtype, surrogate, alpha, region):
    """The documented behaviour the kernels must copy: +-inf give the limits, NaN gives NaN
    (leaky_relu: alpha, since NaN > 0 is false)."""
    _, a, _ = resolve(surrogate, alpha, region)
    g = grad_factor(
        torch.tensor([-math.inf, math.inf, math.nan], dtype=dtype), surrogate, a, region
    ).double()
    lo, hi = LIMITS[surrogate]
    hi = 1.0 if region == "negative" else hi
    assert g[0].item() == pytest.approx(lo(a), rel=1e-7, abs=1e-12)
    assert g[1].item() == pytest.approx(hi, rel=1e-7)
    if surrogate == "leaky_relu":
        assert g[2].item() == pytest.approx(a, rel=1e-7)
    else:
        assert math.isnan(g[2].item())


# ---------------------------------------------------------------------------------------------
# Property test: arbitrary float32 values, including NaN/Inf/subnormals
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=60, deadline=None, database=None)
@given(
    values=st.lists(st.floats(width=32), min_size=1, max_size=40),
    surrogate=st.sampled_from(list(sk.SURROGATES)),
    region=st.sampled_from(REGIONS),
    scale=st.floats(min_value=-1e3, max_value=1e3, width=32),
)
def test_property_float32(backend, values, surrogate, region, scale):
    x = torch.tensor(values, dtype=torch.float32)
    go = torch.full_like(x, scale)
    y, gx, _ = _run(x, surrogate, None, region, backend, go)
    assert_bitwise_equal(y, torch.relu(x), "forward")
    assert_grad_close(
        gx,
        oracle_grad(go, x, surrogate, None, region),
        go,
        torch.float32,
        f"{surrogate} {region} x={values}",
    )


# ---------------------------------------------------------------------------------------------
# CUDA: the same checks on the GPU, plus the vectorised / misaligned / large-index paths
# ---------------------------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU available")
CUDA_BIG = 2**20 + 3


def _cuda_samples(dtype):
    yield from sample_inputs("cuda", dtype, large=True)
    base = dict(sample_inputs("cuda", dtype))
    g = torch.Generator(device="cuda")
    g.manual_seed(99)
    big = (torch.randn(CUDA_BIG + 9, device="cuda", generator=g, dtype=torch.float32) * 4).to(dtype)
    yield "cuda-2^20+3", big[:CUDA_BIG]
    for k in (1, 2, 3):  # data pointers not 16-byte aligned: the non-vectorised path
        yield f"cuda-misaligned-{k}", big[k : k + CUDA_BIG]
    yield (
        "cuda-channels_last-big",
        big[: 2 * 64 * 96 * 80].view(2, 64, 96, 80).contiguous(memory_format=torch.channels_last),
    )
    yield "cuda-sliced-big", big[: 2 * (CUDA_BIG // 2)].view(-1, 2)[:, 1]
    yield "cuda-special-tail", torch.cat([big[:1021], base["special"]])  # tail past a vector


@pytest.mark.cuda
@needs_cuda
class TestCUDA:
    def test_backends_listed(self):
        assert sk.build_info()["cuda_compiled"], "CUDA kernels not compiled on a GPU machine"
        assert sk.available_backends("cuda")[0] == "cuda"

    @pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
    @pytest.mark.parametrize("backend", CUDA_BACKENDS + ["reference"])
    def test_forward_bitwise(self, backend, dtype):
        for name, x in _cuda_samples(dtype):
            expected = torch.relu(x)
            y = sk.sugar_relu(x.detach().requires_grad_(), backend=backend)
            assert y.device == x.device
            assert_bitwise_equal(y, expected, name)
            if is_dense(x):
                assert y.stride() == expected.stride(), name

    @pytest.mark.parametrize("region", REGIONS)
    @pytest.mark.parametrize(
        "surrogate, alpha", SURROGATE_ALPHAS, ids=[surrogate_alpha_id(p) for p in SURROGATE_ALPHAS]
    )
    @pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
    @pytest.mark.parametrize("backend", CUDA_BACKENDS)
    def test_gradients(self, backend, dtype, surrogate, alpha, region):
        for name, x in _cuda_samples(dtype):
            before = x.clone()
            _, gx, go = _run(x, surrogate, alpha, region, backend)
            assert gx.device == x.device and gx.dtype == dtype
            ref = oracle_grad(go, x, surrogate, alpha, region)
            assert_grad_close(gx, ref, go, dtype, f"{backend} {dtype} {surrogate} {region} {name}")
            assert_bitwise_equal(x, before, f"{name}: x modified")

    @pytest.mark.parametrize("backend", CUDA_BACKENDS)
    def test_matches_cpu_backend(self, backend):
        x = torch.randn(4097, dtype=torch.float32) * 4
        go = torch.randn_like(x)
        cpu = CPU_BACKENDS[0]
        for surrogate, alpha in SURROGATE_ALPHAS:
            _, g_cpu, _ = _run(x, surrogate, alpha, "all", cpu, go)
            _, g_cuda, _ = _run(x.cuda(), surrogate, alpha, "all", backend, go.cuda())
            ref = oracle_grad(go, x, surrogate, alpha, "all")
            assert_grad_close(g_cuda.cpu(), ref, go, torch.float32, f"cuda {surrogate}")
            assert_grad_close(g_cpu, ref, go, torch.float32, f"cpu {surrogate}")

    @pytest.mark.parametrize("backend", CUDA_BACKENDS)
    def test_side_stream(self, backend):
        """Kernels launch on the current stream, not the default one.

        The inputs become valid only after a sleep on a side stream; a kernel launched on
        another stream would read the NaN placeholders.
        """
        x = torch.randn(CUDA_BIG, device="cuda")
        go = torch.randn_like(x)
        x_late = torch.full_like(x, math.nan)
        go_late = torch.full_like(go, math.nan)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            torch.cuda._sleep(50_000_000)  # tens of ms: long enough for a wrong-stream launch
            x_late.copy_(x)
            go_late.copy_(go)
            y, gx, _ = _run(x_late, "bsilu", None, "all", backend, go_late)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        assert_bitwise_equal(y, torch.relu(x), "forward")
        assert_grad_close(gx, oracle_grad(go, x, "bsilu", None, "all"), go)

    @pytest.mark.parametrize("backend", CUDA_BACKENDS)
    def test_64bit_indexing(self, backend):
        """More than 2^31 elements: the tail must be computed (needs ~20 GB of GPU memory)."""
        n = 2**31 + 7
        if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
            pytest.skip("needs a GPU with >= 40 GiB")
        x = torch.empty(n, dtype=torch.float16, device="cuda")
        x[: 2**20].normal_(0, 4)
        x[2**20 :] = x[: 2**20].repeat(2**11)[: n - 2**20]
        xl = x.requires_grad_()
        y = sk.sugar_relu(xl, "gelu", backend=backend)
        go = torch.ones_like(y)
        (gx,) = torch.autograd.grad(y, xl, go)
        for sl in (slice(0, 4096), slice(2**31 - 2048, n)):
            assert_bitwise_equal(y[sl], torch.relu(x.detach()[sl]), f"forward {sl}")
            assert_grad_close(
                gx[sl],
                oracle_grad(go[sl], x.detach()[sl], "gelu", None, "all"),
                go[sl],
                torch.float16,
                f"grad {sl}",
            )
        del x, xl, y, gx, go
        torch.cuda.empty_cache()


def test_tolerances_are_derived_from_dtype():
    """Guard against accidental loosening: half/bf16 within ~half an ulp, float64 tight."""
    assert tolerances(torch.float32)[:2] == (2e-5, 1e-6)
    assert tolerances(torch.float16)[0] < 2**-11 + 3e-5
    assert tolerances(torch.bfloat16)[0] < 2**-8 + 3e-5
    assert tolerances(torch.float64)[0] <= 1e-12
