"""The Triton kernels compiled for a CUDA GPU (skipped without one; CPU CI runs them through the
interpreter in tests/triton_interpret).

float32/bfloat16/float16/float64 against the float64 oracle, layouts, the autotuned path, more
than 2^31 elements, the full opcheck, torch.compile(fullgraph=True) through the triton_op, and
agreement with the CUDA extension when it is built. Kernel variants are compiled once per
(dtype, surrogate, region): the parametrisation below keeps that to ~50 compilations.
"""

from __future__ import annotations

import pytest
import torch

import sugar_kernels as sk
import triton_kernels
from sugar_kernels.surrogates import resolve
from tests.helpers import (
    SURROGATE_ALPHAS,
    assert_bitwise_equal,
    assert_grad_close,
    grad_output_for,
    is_dense,
    oracle_grad,
    sample_inputs,
    surrogate_alpha_id,
    tolerances,
)

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
_ok, _why = triton_kernels.triton_status("cuda")
if not _ok:
    pytest.skip(f"Triton cannot run CUDA tensors here: {_why}", allow_module_level=True)

from triton_kernels import sugar_relu  # noqa: E402

pytestmark = pytest.mark.cuda

DEVICE = "cuda"
REGIONS = ("all", "negative")
HAS_CUDA_EXTENSION = "cuda" in sk.available_backends("cuda")


def run(x: torch.Tensor, surrogate: str, alpha, region: str, grad_out=None):
    """Forward and backward through triton_kernels; returns (x, y, grad_out, grad_x)."""
    _, alpha, _ = resolve(surrogate, alpha, region)
    x = x.detach().requires_grad_()
    y = triton_kernels.sugar_relu_triton(x, surrogate, alpha, region)
    if grad_out is None:
        grad_out = grad_output_for(y)
    y.backward(grad_out)
    return x, y, grad_out, x.grad


def mixed_input(dtype: torch.dtype) -> torch.Tensor:
    """Special values, ragged sizes and 1000003 N(0, 16) values with exact zeros, flattened."""
    s = dict(sample_inputs(DEVICE, dtype, large=True))
    parts = ["special", "size-1023", "2d-contiguous", f"size-{1_000_003}"]
    return torch.cat([s[k].reshape(-1) for k in parts])


def test_status():
    ok, why = triton_kernels.triton_status("cuda")
    assert ok, why


def _cases():
    # Every surrogate x region x alpha in float32 and bfloat16; float16 and float64 (compiled
    # separately) for every surrogate/alpha in region "all".
    for dtype in (torch.float32, torch.bfloat16):
        for pair in SURROGATE_ALPHAS:
            for region in REGIONS:
                yield dtype, pair, region
    for dtype in (torch.float16, torch.float64):
        for pair in SURROGATE_ALPHAS:
            yield dtype, pair, "all"


@pytest.mark.parametrize(
    "dtype,pair,region",
    list(_cases()),
    ids=[f"{str(d)[6:]}-{surrogate_alpha_id(p)}-{r}" for d, p, r in _cases()],
)
def test_matches_oracle(dtype, pair, region):
    surrogate, alpha = pair
    x, y, grad_out, grad_x = run(mixed_input(dtype), surrogate, alpha, region)
    x = x.detach()
    assert_bitwise_equal(y, torch.relu(x), "forward")
    ref = oracle_grad(grad_out, x, surrogate, alpha, region)
    msg = f"{dtype} {surrogate} alpha={alpha} region={region}"
    assert_grad_close(grad_x, ref, grad_out, msg=msg)
    if HAS_CUDA_EXTENSION:
        # Agreement with the CUDA extension: forward bit for bit; backward within twice the
        # oracle bound of each other (each is within the bound of the oracle).
        _, a, _ = resolve(surrogate, alpha, region)
        assert_bitwise_equal(torch.ops.sugar.relu_forward(x, surrogate, a, region), y, "cuda ext")
        ext = torch.ops.sugar.relu_backward(grad_out, x, surrogate, a, region)
        rtol, gtol, atol = tolerances(dtype)
        assert_grad_close(
            grad_x,
            ext.double(),
            grad_out,
            dtype=dtype,
            msg=f"vs CUDA extension: {msg}",
            tol=(2 * rtol, 2 * gtol, 2 * atol),
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", [name for name, _ in sample_inputs("cpu")])
def test_layouts_and_special_tensors(dtype, name):
    x0 = dict(sample_inputs(DEVICE, dtype))[name]
    x, y, grad_out, grad_x = run(x0, "bsilu", None, "negative")
    assert_bitwise_equal(y, torch.relu(x0), name)
    ref = oracle_grad(grad_out, x0, "bsilu", None, "negative")
    assert_grad_close(grad_x, ref, grad_out, msg=name)
    if is_dense(x0) and x0.numel() > 1:
        assert y.stride() == x0.stride() and grad_x.stride() == x0.stride(), name


def test_expanded_grad():
    x0 = dict(sample_inputs(DEVICE, torch.float32))["channels_last"]
    x = x0.detach().requires_grad_()
    triton_kernels.sugar_relu_triton(x, "mish", 0.0, "all").sum().backward()
    ones = torch.ones_like(x0)
    assert_grad_close(x.grad, oracle_grad(ones, x0, "mish", None, "all"), ones)
    assert x.grad.stride() == x0.stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_autotuned_path(dtype):
    """Tensors of at least AUTOTUNE_MIN_ELEMENTS go through triton.autotune."""
    n = sugar_relu.AUTOTUNE_MIN_ELEMENTS + 3
    g = torch.Generator().manual_seed(5)
    x0 = (torch.randn(n, generator=g, dtype=torch.float64) * 4).to(dtype).to(DEVICE)
    x, y, grad_out, grad_x = run(x0, "gelu", None, "all")
    assert_bitwise_equal(y, torch.relu(x0), "forward")
    assert_grad_close(grad_x, oracle_grad(grad_out, x0, "gelu", None, "all"), grad_out)


def test_more_than_2_31_elements():
    """64-bit offsets: elements past index 2^31 are computed (bfloat16, ~17 GB in all)."""
    n = 2**31 + 4096 + 7
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip(f"needs ~24 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    g = torch.Generator(device=DEVICE).manual_seed(7)
    x = torch.randn(n, generator=g, device=DEVICE, dtype=torch.bfloat16) * 4
    y = torch.ops.sugar.triton_relu_forward(x, "leaky_relu", 0.01, "all")
    grad_out = torch.randn(n, generator=g, device=DEVICE, dtype=torch.bfloat16)
    grad_x = torch.ops.sugar.triton_relu_backward(grad_out, x, "leaky_relu", 0.2, "all")
    for lo in (0, 2**31 - 5000, n - 10000):
        sl = slice(lo, lo + 10000)
        assert_bitwise_equal(y[sl], torch.relu(x[sl]), f"forward at {lo}")
        ref = oracle_grad(grad_out[sl], x[sl], "leaky_relu", 0.2, "all")
        assert_grad_close(grad_x[sl], ref, grad_out[sl], msg=f"backward at {lo}")
    del x, y, grad_out, grad_x
    torch.cuda.empty_cache()


@pytest.mark.parametrize("name", ["2d-contiguous", "channels_last"])
def test_opcheck(name):
    x = dict(sample_inputs(DEVICE, torch.float32))[name]
    torch.library.opcheck(
        torch.ops.sugar.triton_relu_forward, (x.detach().requires_grad_(), "bsilu", 1.67, "all")
    )
    torch.library.opcheck(
        torch.ops.sugar.triton_relu_backward, (grad_output_for(x), x, "gelu", 0.0, "negative")
    )


@pytest.mark.parametrize(
    "shape,layout",
    [((8, 16, 24, 40), "channels_last"), ((sugar_relu.AUTOTUNE_MIN_ELEMENTS + 5,), "autotuned")],
    ids=["channels_last", "autotuned"],
)
def test_compile_fullgraph(shape, layout):
    """torch.compile sees through the triton_op: no graph break, same values as eager."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(11)
    x0 = (torch.randn(shape, generator=g) * 4).to(DEVICE)
    if layout == "channels_last":
        x0 = x0.contiguous(memory_format=torch.channels_last)
    w = torch.randn(shape, generator=g).to(DEVICE)

    def f(x, w):
        return triton_kernels.sugar_relu_triton(x, "bsilu", 1.67, "negative") * w

    explanation = torch._dynamo.explain(f)(x0.detach().requires_grad_(), w)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    x = x0.detach().requires_grad_()
    out = compiled(x, w)
    grad_out = torch.randn(shape, generator=g).to(DEVICE)
    out.backward(grad_out)
    assert_bitwise_equal(out, torch.relu(x0) * w, "compiled forward")
    grad_y = grad_out * w
    ref = oracle_grad(grad_y, x0, "bsilu", None, "negative")
    assert_grad_close(x.grad, ref, grad_y, msg="compiled backward")
