"""The Triton kernels compiled for a CUDA GPU (skipped without one; CPU CI runs them through the
interpreter in tests/triton_interpret).

float32/bfloat16/float16/float64 against the float64 oracle, layouts, the autotuned path, more
than 2^31 elements, the full opcheck, torch.compile(fullgraph=True) through the triton_op, and
agreement with the CUDA extension when it is built. Kernel variants are compiled once per
(dtype, surrogate, region): the parametrisation below keeps that to ~50 compilations.

Code modes (bits=8/4/2/1, in-place): codes bit-identical to encode_reference and to the CUDA
extension's, gradients bit-identical to decode_reference, for every dtype (one kernel variant per
dtype x bits), the same checks through torch.compile(fullgraph=True).
"""

from __future__ import annotations

import pytest
import torch

import sugar_kernels as sk
from sugar_kernels import code_tables as C
from sugar_kernels import triton_kernels
from sugar_kernels.surrogates import resolve
from tests.helpers import (
    INT_VIEW,
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

from sugar_kernels.triton_kernels import exact  # noqa: E402

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
    n = exact.AUTOTUNE_MIN_ELEMENTS + 3
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
    [((8, 16, 24, 40), "channels_last"), ((exact.AUTOTUNE_MIN_ELEMENTS + 5,), "autotuned")],
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


# ---- code modes (bits = 8/4/2/1) ---------------------------------------------------------------
CODE_FORWARD, CODE_FORWARD_, CODE_BACKWARD = (
    torch.ops.sugar.triton_relu_forward_codes,
    torch.ops.sugar.triton_relu_forward_codes_,
    torch.ops.sugar.triton_relu_backward_codes,
)
# A smooth g in both regions, the longest search scan (nelu negative), a one-threshold table.
CODE_CONFIGS = [("bsilu", "all"), ("gelu", "negative"), ("nelu", "negative"), ("leaky_relu", "all")]


def code_tables(surrogate: str, region: str, bits: int, dtype: torch.dtype):
    """(levels, thresholds, interval_codes, search) on the GPU: the code ops' table arguments."""
    alpha = sk.SURROGATES[surrogate].alpha or 0.0
    device = torch.device(DEVICE)
    levels, thresholds, interval_codes = C.tables(surrogate, alpha, region, bits, device, dtype)
    search = C.search_table(surrogate, alpha, region, bits, device, dtype)
    return levels, thresholds, interval_codes, search


def code_input(dtype: torch.dtype, thresholds: torch.Tensor) -> torch.Tensor:
    """mixed_input (special values, ragged sizes, 1000003 values) plus every threshold rounded to
    dtype and its two neighbours in dtype (bit pattern +-1), where a wrong comparison shows."""
    t = thresholds.to(dtype).view(INT_VIEW[dtype])
    probes = torch.cat([t, t + 1, t - 1]).view(dtype)
    return torch.cat([mixed_input(dtype), probes])


def assert_codes_equal(actual: torch.Tensor, expected: torch.Tensor, msg: str = "") -> None:
    assert actual.dtype == torch.uint8 and actual.shape == expected.shape, msg
    if not torch.equal(actual, expected):
        bad = (actual != expected).nonzero().flatten()[:5]
        raise AssertionError(
            f"{msg}: {int((actual != expected).sum())} code bytes differ; first at bytes "
            f"{bad.tolist()}: {actual[bad].tolist()} != {expected[bad].tolist()}"
        )


def check_codes(x: torch.Tensor, table, bits: int, msg: str = "") -> None:
    """Functional op with autograd, bit for bit: codes vs encode_reference and the CUDA
    extension, y vs torch.relu, grad_x vs decode_reference and the extension's backward."""
    levels, thresholds, interval_codes, _ = table
    xr = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    y, codes = CODE_FORWARD(xr, *table, bits)
    ref_codes = C.encode_reference(x, thresholds, interval_codes, bits)
    assert_codes_equal(codes, ref_codes, f"{msg} vs encode_reference")
    assert_bitwise_equal(y, torch.relu(x), f"{msg} forward")
    grad_y = grad_output_for(y)
    y.backward(grad_y)
    ref_grad = C.decode_reference(grad_y, ref_codes, levels, bits)
    assert_bitwise_equal(xr.grad, ref_grad, f"{msg} grad vs decode_reference")
    if HAS_CUDA_EXTENSION:
        ext_y, ext_codes = torch.ops.sugar.relu_forward_codes(x, *table, bits)
        assert_codes_equal(codes, ext_codes, f"{msg} vs CUDA extension")
        assert y.stride() == ext_y.stride(), msg
        ext_grad = torch.ops.sugar.relu_backward_codes(grad_y, ext_codes, levels, bits)
        assert_bitwise_equal(xr.grad, ext_grad, f"{msg} grad vs CUDA extension")


@pytest.mark.parametrize("bits", C.BITS)
@pytest.mark.parametrize("config", CODE_CONFIGS, ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str
)
def test_codes_match_reference_and_cuda_extension(dtype, config, bits):
    table = code_tables(*config, bits, dtype)
    check_codes(code_input(dtype, table[1]), table, bits, f"{dtype} {config} {bits} bits")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "name", ["size-1", "size-7", "transposed", "sliced", "channels_last", "0-dim", "empty"]
)
def test_codes_layouts(name, dtype):
    x = dict(sample_inputs(DEVICE, dtype))[name]
    check_codes(x, code_tables("bsilu", "negative", 2, dtype), 2, name)


@pytest.mark.parametrize("bits", [8, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_codes_autotuned_path(dtype, bits):
    """Tensors of at least AUTOTUNE_MIN_ELEMENTS go through triton.autotune."""
    n = exact.AUTOTUNE_MIN_ELEMENTS + 3
    g = torch.Generator().manual_seed(6)
    x = (torch.randn(n, generator=g, dtype=torch.float64) * 3).to(dtype).to(DEVICE)
    check_codes(x, code_tables("selu", "all", bits, dtype), bits, "autotuned")


@pytest.mark.parametrize("name", ["size-1023", "transposed", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_codes_inplace(dtype, name):
    """relu(x) written into x (same storage and layout), codes of x before: the extension's."""
    x0 = dict(sample_inputs(DEVICE, dtype))[name]
    table = code_tables("gelu", "all", 4, dtype)
    x = x0.clone(memory_format=torch.preserve_format)
    ptr = x.data_ptr()
    codes = CODE_FORWARD_(x, *table, 4)
    assert x.data_ptr() == ptr and x.stride() == x0.stride()
    assert_bitwise_equal(x, torch.relu(x0), "in place")
    assert_codes_equal(codes, C.encode_reference(x0, table[1], table[2], 4), name)
    if HAS_CUDA_EXTENSION:
        x_ext = x0.clone(memory_format=torch.preserve_format)
        assert_codes_equal(codes, torch.ops.sugar.relu_forward_codes_(x_ext, *table, 4), "ext")


def test_codes_more_than_2_31_elements():
    """64-bit offsets: codes and gradients past element (and byte) 2^31 (bfloat16, 8 bits)."""
    n = 2**31 + 4096 + 7
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip(f"needs ~24 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    g = torch.Generator(device=DEVICE).manual_seed(8)
    x = torch.randn(n, generator=g, device=DEVICE, dtype=torch.bfloat16) * 3
    levels, thresholds, interval_codes, search = code_tables("bsilu", "all", 8, torch.bfloat16)
    y, codes = CODE_FORWARD(x, levels, thresholds, interval_codes, search, 8)
    grad_y = torch.randn(n, generator=g, device=DEVICE, dtype=torch.bfloat16)
    grad_x = CODE_BACKWARD(grad_y, codes, levels, 8)
    for lo in (0, 2**31 - 5000, n - 10000):
        sl = slice(lo, lo + 10000)  # 8 bits: byte i is element i
        ref = C.encode_reference(x[sl], thresholds, interval_codes, 8)
        assert_codes_equal(codes[sl], ref, f"codes at {lo}")
        assert_bitwise_equal(y[sl], torch.relu(x[sl]), f"forward at {lo}")
        ref_grad = C.decode_reference(grad_y[sl], ref, levels, 8)
        assert_bitwise_equal(grad_x[sl], ref_grad, f"backward at {lo}")
    del x, y, codes, grad_y, grad_x
    torch.cuda.empty_cache()


@pytest.mark.parametrize("name", ["2d-contiguous", "channels_last"])
@pytest.mark.parametrize("bits", [8, 2])
def test_codes_opcheck(bits, name):
    x = dict(sample_inputs(DEVICE, torch.float32))[name]
    table = code_tables("bsilu", "all", bits, torch.float32)
    torch.library.opcheck(CODE_FORWARD, (x.clone().requires_grad_(), *table, bits))
    torch.library.opcheck(CODE_FORWARD_, (x.clone(), *table, bits))
    codes = C.encode_reference(x, table[1], table[2], bits)
    torch.library.opcheck(
        CODE_BACKWARD, (grad_output_for(x).requires_grad_(), codes, table[0], bits)
    )


@pytest.mark.parametrize(
    "shape,bits,inplace",
    [
        ((8, 16, 24, 40), 8, False),
        ((8, 16, 24, 40), 2, True),
        ((exact.AUTOTUNE_MIN_ELEMENTS + 5,), 4, False),
        ((exact.AUTOTUNE_MIN_ELEMENTS + 5,), 1, True),
    ],
    ids=["channels_last-8", "channels_last-2-inplace", "autotuned-4", "autotuned-1-inplace"],
)
def test_compile_fullgraph_codes(shape, bits, inplace):
    """sugar_relu(..., bits, inplace, backend="triton") under torch.compile: no graph break, and
    the same values, codes-derived gradients included, as eager (bit for bit)."""
    g = torch.Generator().manual_seed(12)
    x0 = (torch.randn(shape, generator=g) * 3).to(DEVICE)
    if len(shape) == 4:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    w = torch.randn(shape, generator=g).to(DEVICE)
    grad_out = torch.randn(shape, generator=g).to(DEVICE)

    def f(x, w):
        h = x * w  # a non-leaf, so in-place is allowed
        return (
            sk.sugar_relu(
                h, "bsilu", region="negative", bits=bits, inplace=inplace, backend="triton"
            )
            * w
        )

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(f)(x0.detach().requires_grad_(), w)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    results = []
    for fn in (torch.compile(f, fullgraph=True), f):
        x = x0.detach().requires_grad_()
        out = fn(x, w)
        out.backward(grad_out)
        results.append((out.detach(), x.grad))
    (out_c, grad_c), (out_e, grad_e) = results
    assert_bitwise_equal(out_c, out_e, "compiled forward")
    assert_bitwise_equal(grad_c, grad_e, "compiled backward")
