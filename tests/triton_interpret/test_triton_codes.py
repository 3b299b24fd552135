"""The Triton code-mode kernels (bits=8/4/2/1, in-place forward) on CPU tensors through the
Triton interpreter.

Codes must be bit-identical to ``encode_reference`` (and to the C++ op when it is built), input
gradients equal to ``decode_reference`` bit for bit: both compute the same table look-ups in the
same opmath dtype, so there is no tolerance anywhere in this file. Run with
``TRITON_INTERPRET=1 python -m pytest tests/triton_interpret``; bfloat16 and the compiled path
run in tests/test_triton_gpu.py.
"""

from __future__ import annotations

import os
import re

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "Triton interpreter tests need TRITON_INTERPRET=1 in the environment before Python starts "
        "(run: TRITON_INTERPRET=1 python -m pytest tests/triton_interpret)",
        allow_module_level=True,
    )

import sugar_kernels as sk  # noqa: E402
from sugar_kernels import code_tables as C  # noqa: E402
from sugar_kernels import triton_kernels  # noqa: E402
from sugar_kernels._ops import SCHEMAS  # noqa: E402
from sugar_kernels.python_autograd import InplaceCodes  # noqa: E402
from tests.helpers import assert_bitwise_equal, sample_inputs, special_values  # noqa: E402

if triton_kernels.IMPORT_ERROR is not None:
    pytest.skip(triton_kernels.IMPORT_ERROR, allow_module_level=True)

# The bucket of +-inf, huge or NaN inputs overflows or is NaN before its clamp (harmless, and
# silent in compiled kernels); numpy warns about it under the interpreter.
pytestmark = pytest.mark.filterwarnings(
    "ignore:(overflow|invalid value) encountered in multiply:RuntimeWarning"
)

from sugar_kernels.triton_kernels import code_modes as triton_codes  # noqa: E402
from sugar_kernels.triton_kernels import exact as triton_exact  # noqa: E402

FORWARD, FORWARD_, BACKWARD = (
    torch.ops.sugar.triton_relu_forward_codes,
    torch.ops.sugar.triton_relu_forward_codes_,
    torch.ops.sugar.triton_relu_backward_codes,
)
CPP = sk.build_info()["cpu_compiled"]
CPU = torch.device("cpu")
# (surrogate, region): a smooth g in both regions, the table with the longest search scan
# (nelu negative: 509 thresholds and scan 7 at 8 bits), a one-threshold table.
CONFIGS = [("bsilu", "all"), ("gelu", "negative"), ("nelu", "negative"), ("leaky_relu", "all")]
SAMPLES = dict(sample_inputs("cpu", torch.float32))


def tables(surrogate, region, bits, dtype):
    """(levels, thresholds, interval_codes, search): the code ops' table arguments."""
    alpha = sk.SURROGATES[surrogate].alpha or 0.0
    levels, thresholds, interval_codes = C.tables(surrogate, alpha, region, bits, CPU, dtype)
    search = C.search_table(surrogate, alpha, region, bits, CPU, dtype)
    return levels, thresholds, interval_codes, search


def threshold_probes(thresholds: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Every threshold rounded to dtype and its two neighbours in dtype: the values where a
    comparison done in the wrong dtype, or a <= for <, changes the code."""
    t = thresholds.to(dtype)
    inf = torch.full_like(t, float("inf"))
    return torch.cat([t, torch.nextafter(t, inf), torch.nextafter(t, -inf)])


def mixed_input(dtype: torch.dtype, thresholds: torch.Tensor, n_random: int = 4000):
    """Special values (NaN with payloads, +-inf, -0.0, extremes, subnormals), the threshold
    probes and N(0, 9) values with exact zeros, shuffled; a ragged length (not a multiple of 8)."""
    g = torch.Generator().manual_seed(n_random)
    rand = torch.randn(n_random, generator=g, dtype=torch.float64) * 3
    rand[torch.rand(n_random, generator=g) < 0.03] = 0.0
    x = torch.cat([special_values(dtype), threshold_probes(thresholds, dtype), rand.to(dtype)])
    x = x[torch.randperm(x.numel(), generator=g)]
    if x.numel() % 8 == 0:
        x = x[1:]
    return x


def grad_for(x: torch.Tensor, seed: int = 5) -> torch.Tensor:
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return g.to(x.dtype)


def assert_codes_equal(actual: torch.Tensor, expected: torch.Tensor, msg: str = "") -> None:
    assert actual.dtype == torch.uint8 and actual.shape == expected.shape, msg
    if not torch.equal(actual, expected):
        idx = (actual != expected).nonzero().flatten()[:5].tolist()
        raise AssertionError(
            f"{msg}: {int((actual != expected).sum())} code bytes differ; first at bytes {idx}: "
            f"{actual[idx].tolist()} != {expected[idx].tolist()}"
        )


def check_forward_backward(x: torch.Tensor, table, bits: int, msg: str = ""):
    """Functional op with autograd: y, codes and grad_x against the oracle (and the C++ op)."""
    levels, thresholds, interval_codes, _ = table
    xr = x.detach().clone().requires_grad_()
    y, codes = FORWARD(xr, *table, bits)
    ref_codes = C.encode_reference(x, thresholds, interval_codes, bits)
    assert_codes_equal(codes, ref_codes, f"{msg} codes vs encode_reference")
    assert_bitwise_equal(y, torch.relu(x), f"{msg} forward")
    assert y.stride() == torch.empty_like(x).stride(), msg  # the C++ op's output layout
    assert not codes.requires_grad
    grad_y = grad_for(x)
    y.backward(grad_y)
    ref_grad = C.decode_reference(grad_y, ref_codes, levels, bits)
    assert_bitwise_equal(xr.grad, ref_grad, f"{msg} grad vs decode_reference")
    if CPP:
        cpp_y, cpp_codes = torch.ops.sugar.relu_forward_codes(x, *table, bits)
        assert_codes_equal(codes, cpp_codes, f"{msg} codes vs C++")
        assert y.stride() == cpp_y.stride(), msg
        cpp_grad = torch.ops.sugar.relu_backward_codes(grad_y, cpp_codes, levels, bits)
        assert_bitwise_equal(xr.grad, cpp_grad, f"{msg} grad vs C++")


@pytest.mark.parametrize("bits", C.BITS)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_codes_and_grads_match_reference(dtype, config, bits):
    table = tables(*config, bits, dtype)
    x = mixed_input(dtype, table[1])
    check_forward_backward(x, table, bits, f"{config} {bits} bits")


@pytest.mark.parametrize("bits", C.BITS)
def test_float16(bits):
    """Half inputs compare in float32 (their opmath) and decode in float32, rounded once."""
    table = tables("bsilu", "all", bits, torch.float16)
    x = mixed_input(torch.float16, table[1], n_random=1000)
    check_forward_backward(x, table, bits, f"float16 {bits} bits")


@pytest.mark.parametrize("n", [1, 7, 1023, 5000])
@pytest.mark.parametrize("bits", C.BITS)
def test_sizes(bits, n):
    """Ragged sizes: partial last byte, partial last block (1024 elements per program)."""
    table = tables("mish", "negative", bits, torch.float32)
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 3
    check_forward_backward(x, table, bits, f"n={n}")


@pytest.mark.parametrize("n", [2048, 5000])
def test_autotuned_path(n, monkeypatch):
    """Large tensors go through triton.autotune (one 2048-element config under the interpreter);
    lower the size threshold so that path runs on small inputs."""
    monkeypatch.setattr(triton_exact, "AUTOTUNE_MIN_ELEMENTS", 1)
    for bits in (8, 1):
        table = tables("selu", "all", bits, torch.float32)
        x = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 3
        check_forward_backward(x, table, bits, f"autotuned n={n}")


def bucket_search_table(thresholds: torch.Tensor) -> torch.Tensor:
    """The search table of sugar_kernels.code_tables.search_table for arbitrary sorted thresholds
    (re-derived from its docstring: buckets over [t0, t_last], widened by one on each side)."""
    t = thresholds.double()
    b = C.SEARCH_BUCKETS
    if len(t) == 0 or not t[-1] > t[0]:
        return full_scan_table(thresholds)
    width = (t[-1] - t[0]) / b
    edges = t[0] + width * torch.arange(b + 3, dtype=torch.float64) - width
    starts = torch.searchsorted(t, edges[:b], side="left")
    ends = torch.searchsorted(t, edges[3:], side="right")
    scan = (ends - starts).max().reshape(1)
    return torch.cat([scan, starts]).to(torch.int32)


def full_scan_table(thresholds: torch.Tensor) -> torch.Tensor:
    """Every bucket starts at 0 and scans all thresholds: valid for any table, and slow."""
    table = torch.zeros(C.SEARCH_BUCKETS + 1, dtype=torch.int32)
    table[0] = thresholds.numel()
    return table


@pytest.mark.parametrize(
    "n_thresholds,search",
    [(n, bucket_search_table) for n in (0, 1, 2, 3, 16, 1023)]
    + [(n, full_scan_table) for n in (2, 3, 16, 200)],
    ids=lambda v: v.__name__ if callable(v) else str(v),
)
def test_synthetic_tables(n_thresholds, search):
    """Arbitrary tables (repeated thresholds, arbitrary codes, up to the 1024 intervals the ops
    accept) with any valid search table give the exact count: the C++ kernels' codes."""
    g = torch.Generator().manual_seed(n_thresholds)
    thresholds = (torch.randn(n_thresholds, generator=g) * 2).round(decimals=1).sort().values
    bits = 4
    interval_codes = torch.randint(0, 1 << bits, (n_thresholds + 1,), generator=g)
    levels = torch.randn(1 << bits, generator=g)
    table = (levels, thresholds, interval_codes.to(torch.uint8), search(thresholds))
    x = mixed_input(torch.float32, thresholds, n_random=500)
    check_forward_backward(x, table, bits, f"{n_thresholds} thresholds, {search.__name__}")


LAYOUTS = ["transposed", "sliced", "permuted-3d", "channels_last", "expanded", "0-dim", "empty"]


@pytest.mark.parametrize("name", LAYOUTS)
def test_layouts(name):
    """Codes follow the logical (row-major) order whatever the layout; y keeps torch.relu's."""
    check_forward_backward(SAMPLES[name], tables("bsilu", "negative", 2, torch.float32), 2, name)


@pytest.mark.parametrize("name", ["size-1023", "transposed", "sliced", "channels_last", "0-dim"])
@pytest.mark.parametrize("bits", [8, 1])
def test_inplace(bits, name):
    """relu(x) is written into x's storage (layout unchanged), the codes are those of x before."""
    x0 = SAMPLES[name]
    if name == "sliced":  # a view into a larger tensor: not dense, written back through copy_
        base = x0._base.clone()
        x = base[:, 1::2]
    else:
        x = x0.clone(memory_format=torch.preserve_format)
    assert x.stride() == x0.stride()
    table = tables("gelu", "all", bits, torch.float32)
    ptr, version = x.data_ptr(), x._version
    codes = FORWARD_(x, *table, bits)
    assert x.data_ptr() == ptr and x.stride() == x0.stride()
    assert x._version > version
    assert_bitwise_equal(x, torch.relu(x0), f"{name} in place")
    assert_codes_equal(codes, C.encode_reference(x0, table[1], table[2], bits), name)
    if name == "sliced":  # the elements between the slice's columns are untouched
        assert_bitwise_equal(base[:, 0::2], x0._base[:, 0::2], "untouched")
    if CPP:
        x_cpp = x0.clone(memory_format=torch.preserve_format)
        assert_codes_equal(codes, torch.ops.sugar.relu_forward_codes_(x_cpp, *table, bits), "C++")


@pytest.mark.parametrize("bits", [4, 2])
def test_inplace_autograd(bits):
    """Through InplaceCodes (what sugar_relu(..., inplace=True) uses) on a non-leaf view."""
    table = tables("elu", "all", bits, torch.float32)
    x0 = SAMPLES["channels_last"]
    a = x0.clone().requires_grad_()
    h = a * 1
    (y,) = InplaceCodes.apply(h, *table, bits, FORWARD_, BACKWARD)
    assert y.data_ptr() == h.data_ptr()
    assert_bitwise_equal(y, torch.relu(x0), "forward")
    grad_y = grad_for(x0)
    y.backward(grad_y)
    ref_codes = C.encode_reference(x0, table[1], table[2], bits)
    assert_bitwise_equal(a.grad, C.decode_reference(grad_y, ref_codes, table[0], bits), "grad")


def test_inplace_on_leaf_requiring_grad_raises():
    x = torch.randn(10, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        InplaceCodes.apply(x, *tables("bsilu", "all", 8, torch.float32), 8, FORWARD_, BACKWARD)


@pytest.mark.parametrize("name", ["transposed", "channels_last", "expanded"])
def test_backward_grad_layouts(name):
    """Any grad_y layout (a stride-0 grad from .sum().backward() too): contiguous grad_x."""
    levels, thresholds, interval_codes, _ = tables("silu", "all", 4, torch.float32)
    x = torch.randn(SAMPLES[name].shape, generator=torch.Generator().manual_seed(2))
    codes = C.encode_reference(x, thresholds, interval_codes, 4)
    grad_y = SAMPLES[name]
    grad_x = BACKWARD(grad_y, codes, levels, 4)
    assert grad_x.is_contiguous()
    assert_bitwise_equal(grad_x, C.decode_reference(grad_y, codes, levels, 4), name)


def test_double_backward():
    """grad_x = grad_y * levels[code] is linear in grad_y: its gradient w.r.t. grad_y is the same
    decode applied to the incoming gradient (as for the C++ op); x gets none."""
    table = tables("bsilu", "all", 4, torch.float64)
    x = torch.randn(1001, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x.requires_grad_()
    grad_y = grad_for(x).requires_grad_()
    y, codes = FORWARD(x, *table, 4)
    (grad_x,) = torch.autograd.grad(y, x, grad_y, create_graph=True)
    v = grad_for(x, seed=9)
    (gg,) = torch.autograd.grad(grad_x, grad_y, v)
    assert_bitwise_equal(gg, C.decode_reference(v, codes, table[0], 4), "grad of grad_y")


def test_saves_codes_and_levels_only():
    """The functional op keeps the packed codes and the levels for backward, not x."""
    table = tables("bsilu", "all", 2, torch.float32)
    x = torch.randn(1000, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, codes = FORWARD(x, *table, 2)
    assert len(saved) == 2
    assert saved[0].data_ptr() == codes.data_ptr() and saved[0].numel() == 250
    assert saved[1].data_ptr() == table[0].data_ptr()


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("bits", [8, 1])
def test_public_api_matches_reference_backend(bits, inplace):
    """sugar_relu(..., backend="triton") in a code mode: same y, same gradient as "reference"."""
    x0 = mixed_input(torch.float32, tables("bsilu", "negative", bits, torch.float32)[1], 1000)
    grads = []
    for backend in ("triton", "reference"):
        a = x0.clone().requires_grad_()
        y = sk.sugar_relu(
            a * 1, "bsilu", region="negative", bits=bits, inplace=inplace, backend=backend
        )
        assert_bitwise_equal(y, torch.relu(x0), backend)
        y.backward(grad_for(x0))
        grads.append(a.grad)
    assert_bitwise_equal(grads[0], grads[1], "triton vs reference backend")


def test_constants_match_sugar_kernels():
    assert triton_codes.MAX_INTERVALS == C.MAX_INTERVALS
    assert triton_codes.SEARCH_BUCKETS == C.SEARCH_BUCKETS


def test_errors():
    x = SAMPLES["size-7"]
    levels, thr, icodes, search = tables("bsilu", "all", 8, torch.float32)
    with pytest.raises(ValueError, match="bits must be 1, 2, 4 or 8, got 3"):
        FORWARD(x, levels, thr, icodes, search, 3)
    with pytest.raises(ValueError, match="bits must be"):
        BACKWARD(x, torch.zeros(7, dtype=torch.uint8), levels, 16)
    with pytest.raises(TypeError, match="levels must be Double for Double inputs, got Float"):
        FORWARD(x.double(), levels, thr.double(), icodes, search, 8)
    with pytest.raises(TypeError, match="thresholds must be Float for Float inputs, got Double"):
        FORWARD_(x.clone(), levels, thr.double(), icodes, search, 8)
    with pytest.raises(TypeError, match="interval_codes must be Byte"):
        FORWARD(x, levels, thr, icodes.long(), search, 8)
    with pytest.raises(TypeError, match="search must be Int for Float inputs, got Long"):
        FORWARD(x, levels, thr, icodes, search.long(), 8)
    with pytest.raises(RuntimeError, match="expected a search table of 4097 entries, got 4096"):
        FORWARD(x, levels, thr, icodes, search[:-1], 8)
    with pytest.raises(RuntimeError, match="thresholds must be a contiguous 1-d"):
        FORWARD(x, levels, thr.view(-1, 1), icodes, search, 8)
    with pytest.raises(RuntimeError, match="expected 2\\*\\*bits = 256 levels, got 4"):
        FORWARD(x, levels[:4], thr, icodes, search, 8)
    with pytest.raises(RuntimeError, match="interval codes"):
        FORWARD(x, levels, thr, icodes[:-1], search, 8)
    big_thr, big_codes = torch.arange(1024.0), torch.zeros(1025, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="<= 1024 interval codes"):
        FORWARD(x, levels, big_thr, big_codes, search, 8)
    with pytest.raises(TypeError, match="must be float32"):
        FORWARD(x.to(torch.int32), levels, thr, icodes, search, 8)
    with pytest.raises(RuntimeError, match="levels is on meta but x is on cpu"):
        FORWARD(x, levels.to("meta"), thr, icodes, search, 8)
    codes = FORWARD(x, levels, thr, icodes, search, 8)[1]
    with pytest.raises(RuntimeError, match="codes hold 7 bytes but grad_y has 11 elements"):
        BACKWARD(torch.ones(11), codes, levels, 8)
    with pytest.raises(TypeError, match="codes must be Byte"):
        BACKWARD(x, codes.to(torch.int8), levels, 8)
    with pytest.raises(TypeError, match="levels must be Float for Half inputs, got Double"):
        BACKWARD(x.half(), codes, levels.double(), 8)


def test_meta_tensors():
    """Shape propagation: meta inputs, no kernel launch; the fake kernels' shapes and layouts."""
    x = torch.empty(4, 5, device="meta").t()
    table = [t.to("meta") for t in tables("bsilu", "all", 2, torch.float32)]
    y, codes = FORWARD(x, *table, 2)
    assert y.is_meta and y.shape == x.shape and y.stride() == x.stride()
    assert codes.is_meta and codes.shape == (5,) and codes.dtype == torch.uint8
    assert FORWARD_(x, *table, 2).shape == (5,)
    g = BACKWARD(x, codes, table[0], 2)
    assert g.is_meta and g.shape == x.shape and g.is_contiguous()


# test_aot_dispatch_dynamic needs the kernels traced by wrap_triton, which the interpreter does
# not support; tests/test_triton_gpu.py runs all four.
OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor")


@pytest.mark.parametrize("name", ["2d-contiguous", "channels_last", "empty"])
@pytest.mark.parametrize("bits", [8, 1])
def test_opcheck(bits, name):
    x = SAMPLES[name]
    table = tables("bsilu", "all", bits, torch.float32)
    xr = x.clone().requires_grad_()
    torch.library.opcheck(FORWARD, (xr, *table, bits), test_utils=OPCHECK_UTILS)
    torch.library.opcheck(FORWARD_, (x.clone(), *table, bits), test_utils=OPCHECK_UTILS)
    codes = C.encode_reference(x, table[1], table[2], bits)
    gy = grad_for(x).requires_grad_()
    torch.library.opcheck(BACKWARD, (gy, codes, table[0], bits), test_utils=OPCHECK_UTILS)


@pytest.mark.parametrize("bits", [None, 8])
def test_func_grad_and_per_sample_grads(bits):
    """torch.func over the Triton ops (python_autograd.py): equal to eager autograd."""
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(5))
    weight = torch.randn(40, generator=torch.Generator().manual_seed(6))

    def loss(v):
        return (sk.sugar_relu(v * 1, "bsilu", bits=bits, backend="triton") * weight).sum()

    xg = x.clone().requires_grad_()
    loss(xg).backward()
    assert_bitwise_equal(torch.func.grad(loss)(x), xg.grad, "torch.func.grad")
    assert_bitwise_equal(torch.func.vmap(torch.func.grad(loss))(x), xg.grad, "vmap(grad)")


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_triton_op_schemas_are_the_compiled_ops(name):
    """Every Triton op takes exactly the arguments of its sugar:: op (torch 2.11's triton_op
    infers the schema from the annotations, so this keeps the two in step; an int argument is
    inferred as SymInt)."""
    triton_op = getattr(torch.ops.sugar, "triton_" + name, None)
    if name == "grad_factor_derivative":  # one composite op serves every backend
        assert triton_op is None
        return

    def normal(schema: str) -> str:  # alias sets are named a or a0 depending on who wrote them
        return re.sub(r"\(\w+!\)", "(!)", schema.replace("SymInt", "int"))

    want = f"sugar::triton_{name}{SCHEMAS[name]}"
    assert normal(str(triton_op.default._schema)) == normal(want)
