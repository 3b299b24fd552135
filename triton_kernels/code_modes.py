"""SUGAR's code modes in Triton: ReLU forward writing packed gradient codes, and the backward
that decodes them, registered with triton_op.

The packed format and the table semantics are those of ``sugar_kernels/code_tables.py`` (its module
docstring): ``code = interval_codes[#{t in thresholds : t < x}]``, compared in the opmath dtype
(float32 for half/bfloat16/float32 inputs, float64 for float64), NaN in interval 0; ``8 // bits``
codes per byte, element i of the logical (row-major) tensor in bits ``[(i % per) * bits, ...)`` of
byte ``i // per``, the last byte zero-padded. The count is found as in ``csrc/sugar_math.h``
(``interval_of``): the search table (``code_tables.search_table``: ``[scan, start_0, ...,
start_{B-1}]``) gives the first candidate of x's bucket, then ``scan`` comparisons with the
thresholds padded by +inf (here: comparisons past the last threshold are masked out, which also
keeps inf out of the kernels' globals, where torch.compile's code generation cannot write it).
That is the exact count, so codes are bit-identical to the C++/CUDA kernels and to
``encode_reference``, including for NaN, +-inf and -0.0.

Both kernels work on one block of bytes at a time: a ``[BLOCK_SIZE // per, per]`` tile of
elements, row b holding the ``per`` elements of byte b. Layout rules follow ``csrc/ops.cpp``:
codes follow the logical order, so a non-contiguous x is made contiguous first; the functional
op's y keeps torch.relu's layout (``empty_like(x)``), the in-place op writes relu(x) into x and
returns only the codes, and backward returns a contiguous grad.

The ops ``sugar::triton_relu_forward_codes`` / ``sugar::triton_relu_forward_codes_`` /
``sugar::triton_relu_backward_codes`` take the arguments of ``sugar::relu_forward_codes`` /
``sugar::relu_forward_codes_`` / ``sugar::relu_backward_codes`` (same schemas, ``bits`` a SymInt);
their autograd and the in-place mode's (``InplaceCodes``): ``sugar_kernels/python_autograd.py``.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from .exact import Launch, _check_tensor, _runs_kernels, autotune, make_launch, run

BITS = (1, 2, 4, 8)
# Table capacity, as csrc/sugar_limits.h kMaxIntervals (code_tables.MAX_INTERVALS). The
# Triton kernels gather from global memory and need no fixed capacity; the limit keeps the ops'
# argument checks identical to the C++ ones.
MAX_INTERVALS = 1024
SEARCH_BUCKETS = 4096  # csrc/sugar_math.h kSearchBuckets (sugar_kernels.code_tables.SEARCH_BUCKETS)


# ---------------------------------------------------------------------------------------------
# Forward: y = relu(x) (y may be x: in-place) and the packed codes of x
# ---------------------------------------------------------------------------------------------
@triton.jit
def _interval_of(x, thresholds_ptr, search_ptr, n_thresholds, BUCKETS: tl.constexpr):
    # #{t : t < x} as csrc/sugar_math.h interval_of: bucket of x (its scale from the first and
    # last threshold, as inverse_width), the first candidate of that bucket from the search
    # table, then `scan` comparisons; entries past the last threshold never count (the +inf
    # padding of the C++ table). The count is exact whatever the rounding of the bucket
    # (buckets are widened by one on each side, see sugar_kernels/code_tables.py search_table).
    # NaN and -inf land in bucket 0 and count 0.
    has = n_thresholds > 0
    lo = tl.load(thresholds_ptr, mask=has, other=0)
    span = tl.load(thresholds_ptr + n_thresholds - 1, mask=has, other=0) - lo
    inv_width = tl.where(span > 0, BUCKETS / tl.where(span > 0, span, 1), 0)
    u = (x - lo) * inv_width
    u = tl.where(u > 0, u, 0)  # NaN -> 0
    u = tl.where(u < BUCKETS - 1, u, BUCKETS - 1)
    first = tl.load(search_ptr + 1 + u.to(tl.int32))
    scan = tl.load(search_ptr)
    below = first
    # A while loop: triton 3.6's interpreter cannot take a loaded value as a range() bound.
    k = 0
    while k < scan:
        idx = first + k
        real = idx < n_thresholds
        t = tl.load(thresholds_ptr + idx, mask=real, other=0)
        below += ((t < x) & real).to(tl.int32)
        k += 1
    return below


# Bytes per element: reads x, writes y, writes bits/8 of a code byte (+ table gathers, cache
# resident): 8.125..9 for float32, 4.125..5 for half/bfloat16, 16.125..17 for float64.
@triton.jit
def _packed_block(n_elements, BITS: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """This program's code bytes (64-bit indices), each byte's lanes, and the [bytes, lanes]
    offsets of their elements with the mask of those that exist."""
    PER: tl.constexpr = 8 // BITS
    BLOCK_BYTES: tl.constexpr = BLOCK_SIZE // PER
    byte = tl.program_id(0).to(tl.int64) * BLOCK_BYTES + tl.arange(0, BLOCK_BYTES)
    lane = tl.arange(0, PER)
    offsets = byte[:, None] * PER + lane[None, :]
    return byte, lane, offsets, offsets < n_elements


@triton.jit
def relu_forward_codes_kernel(
    x_ptr,
    y_ptr,
    codes_ptr,
    thresholds_ptr,
    interval_codes_ptr,
    search_ptr,
    n_elements,
    n_bytes,
    n_thresholds,
    BITS: tl.constexpr,
    BUCKETS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    byte, lane, offsets, mask = _packed_block(n_elements, BITS, BLOCK_SIZE)
    x = tl.load(x_ptr + offsets, mask=mask, other=0)
    # Compare in opmath, like the tables: float64 stays, half/bfloat16 widen exactly to float32.
    if x.dtype == tl.float64:
        xo = x
    else:
        xo = x.to(tl.float32)
    below = _interval_of(xo, thresholds_ptr, search_ptr, n_thresholds, BUCKETS)
    code = tl.load(interval_codes_ptr + below, mask=mask, other=0).to(tl.int32)
    packed = tl.sum(code << (lane * BITS)[None, :], axis=1)  # disjoint bit fields: sum = or
    tl.store(codes_ptr + byte, packed.to(tl.uint8), mask=byte < n_bytes)
    # x < 0 ? 0 : x keeps -0.0 and NaN (with its payload), exactly like torch.relu.
    tl.store(y_ptr + offsets, tl.where(x < 0, 0, x), mask=mask)


relu_forward_codes_autotuned = autotune(relu_forward_codes_kernel, key=["n_elements", "BITS"])


def relu_forward_codes_launch(
    xc: torch.Tensor,
    y: torch.Tensor,
    codes: torch.Tensor,
    thresholds: torch.Tensor,
    interval_codes: torch.Tensor,
    search: torch.Tensor,
    bits: int,
) -> Launch:
    """y = relu(xc) and the codes of xc (contiguous; y may be xc: in place)."""
    n, n_bytes = xc.numel(), codes.numel()
    args = (xc, y, codes, thresholds, interval_codes, search, n, n_bytes, thresholds.numel())
    flags = {"BITS": bits, "BUCKETS": SEARCH_BUCKETS}
    kernels = relu_forward_codes_kernel, relu_forward_codes_autotuned
    return make_launch(*kernels, args, flags, n_bytes, 8 // bits)


# ---------------------------------------------------------------------------------------------
# Backward: grad_x = grad_y * levels[code], in opmath, rounded once to grad_y's dtype
# ---------------------------------------------------------------------------------------------
# Bytes per element: reads grad_y and bits/8 of a code byte, writes grad_x (+ level gathers,
# cache resident): 8.125..9 for float32, 4.125..5 for half/bfloat16, 16.125..17 for float64.
@triton.jit
def relu_backward_codes_kernel(
    grad_y_ptr,
    codes_ptr,
    levels_ptr,
    grad_x_ptr,
    n_elements,
    n_bytes,
    BITS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    byte, lane, offsets, mask = _packed_block(n_elements, BITS, BLOCK_SIZE)
    packed = tl.load(codes_ptr + byte, mask=byte < n_bytes, other=0).to(tl.int32)
    code = (packed[:, None] >> (lane * BITS)[None, :]) & ((1 << BITS) - 1)
    level = tl.load(levels_ptr + code)  # code < 2^bits = len(levels): always in bounds
    g = tl.load(grad_y_ptr + offsets, mask=mask)
    grad_x = g.to(level.dtype) * level
    tl.store(grad_x_ptr + offsets, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)


relu_backward_codes_autotuned = autotune(relu_backward_codes_kernel, key=["n_elements", "BITS"])


def relu_backward_codes_launch(
    gc: torch.Tensor, codes: torch.Tensor, levels: torch.Tensor, grad_x: torch.Tensor, bits: int
) -> Launch:
    """grad_x = gc * levels[code] (gc and grad_x contiguous)."""
    n, n_bytes = gc.numel(), codes.numel()
    args = (gc, codes, levels, grad_x, n, n_bytes)
    kernels = relu_backward_codes_kernel, relu_backward_codes_autotuned
    return make_launch(*kernels, args, {"BITS": bits}, n_bytes, 8 // bits)


def _start(launch: Launch) -> None:
    """run(launch) unless there is nothing to do (no elements, or fake tensors interpreted)."""
    xc = launch.args[0]
    if xc.numel() > 0 and _runs_kernels(xc):
        run(launch)


# ---------------------------------------------------------------------------------------------
# Argument checks (the messages of csrc/ops.cpp)
# ---------------------------------------------------------------------------------------------
def packed_size(numel: int, bits: int) -> int:
    per = 8 // bits
    return (numel + per - 1) // per


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_bits(bits, op: str) -> int:
    """bits as a Python constant (also when torch.compile made it symbolic), or ValueError."""
    if not isinstance(bits, bool):
        for valid in BITS:
            if bits == valid:
                return valid
    raise ValueError(f"{op}: bits must be 1, 2, 4 or 8, got {bits}")


# dtype names as c10::toString writes them, so that messages read like the C++ ops' ones.
_C10_NAMES = {
    torch.float32: "Float",
    torch.float64: "Double",
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
    torch.uint8: "Byte",
    torch.int8: "Char",
    torch.int16: "Short",
    torch.int32: "Int",
    torch.int64: "Long",
    torch.bool: "Bool",
}


def _c10_name(dtype: torch.dtype) -> str:
    return _C10_NAMES.get(dtype, str(dtype))


def _check_table(
    t: torch.Tensor, x: torch.Tensor, dtype: torch.dtype, op: str, what: str, x_name: str = "x"
) -> None:
    if t.dim() != 1 or not t.is_contiguous():
        raise RuntimeError(f"{op}: {what} must be a contiguous 1-d tensor")
    if t.dtype != dtype:
        raise TypeError(
            f"{op}: {what} must be {_c10_name(dtype)} for {_c10_name(x.dtype)} inputs, "
            f"got {_c10_name(t.dtype)}"
        )
    if t.device != x.device:
        raise RuntimeError(f"{op}: {what} is on {t.device} but {x_name} is on {x.device}")


def _check_levels(levels: torch.Tensor, bits: int, op: str) -> None:
    if levels.numel() != 1 << bits:
        raise RuntimeError(f"{op}: expected 2**bits = {1 << bits} levels, got {levels.numel()}")


def _check_code_args(
    x: torch.Tensor,
    levels: torch.Tensor,
    thresholds: torch.Tensor,
    interval_codes: torch.Tensor,
    search: torch.Tensor,
    bits,
    op: str,
) -> int:
    _check_tensor(x, op, "x")
    bits = _check_bits(bits, op)
    opmath = _opmath(x.dtype)
    _check_table(levels, x, opmath, op, "levels")
    _check_table(thresholds, x, opmath, op, "thresholds")
    _check_table(interval_codes, x, torch.uint8, op, "interval_codes")
    _check_levels(levels, bits, op)
    n_codes = interval_codes.numel()
    if n_codes != thresholds.numel() + 1 or n_codes > MAX_INTERVALS:
        raise RuntimeError(
            f"{op}: expected len(thresholds) + 1 <= {MAX_INTERVALS} interval codes, got "
            f"{n_codes} for {thresholds.numel()} thresholds"
        )
    _check_table(search, x, torch.int32, op, "search")
    if search.numel() != SEARCH_BUCKETS + 1:
        raise RuntimeError(
            f"{op}: expected a search table of {SEARCH_BUCKETS + 1} entries, got {search.numel()}"
        )
    return bits


def _new_codes(x: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.empty((packed_size(x.numel(), bits),), dtype=torch.uint8, device=x.device)


# ---------------------------------------------------------------------------------------------
# The custom ops (the arguments of sugar::relu_forward_codes / _ / relu_backward_codes)
# ---------------------------------------------------------------------------------------------
@triton_op("sugar::triton_relu_forward_codes", mutates_args=())
def triton_relu_forward_codes(
    x: torch.Tensor,
    levels: torch.Tensor,
    thresholds: torch.Tensor,
    interval_codes: torch.Tensor,
    search: torch.Tensor,
    bits: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    tables_and_bits = levels, thresholds, interval_codes, search, bits
    xc = x.contiguous()
    y = torch.empty_like(xc)
    codes = _forward_codes("sugar::triton_relu_forward_codes", x, xc, y, *tables_and_bits)
    if not x.is_contiguous():  # keep torch.relu's output layout
        y = torch.empty_like(x).copy_(y)
    return y, codes


@triton_op("sugar::triton_relu_forward_codes_", mutates_args=("x",))
def triton_relu_forward_codes_(
    x: torch.Tensor,
    levels: torch.Tensor,
    thresholds: torch.Tensor,
    interval_codes: torch.Tensor,
    search: torch.Tensor,
    bits: int,
) -> torch.Tensor:
    op = "sugar::triton_relu_forward_codes_"
    tables_and_bits = levels, thresholds, interval_codes, search, bits
    if x.is_contiguous():
        return _forward_codes(op, x, x, x, *tables_and_bits)
    xc = x.contiguous()
    codes = _forward_codes(op, x, xc, xc, *tables_and_bits)
    x.copy_(xc)
    return codes


def _forward_codes(op, x, xc, y, levels, thresholds, interval_codes, search, bits):
    """Checks the arguments (``x``: the op's input), then y = relu(xc) and the codes of xc."""
    bits = _check_code_args(x, levels, thresholds, interval_codes, search, bits, op)
    codes = _new_codes(x, bits)
    _start(relu_forward_codes_launch(xc, y, codes, thresholds, interval_codes, search, bits))
    return codes


@triton_op("sugar::triton_relu_backward_codes", mutates_args=())
def triton_relu_backward_codes(
    grad_y: torch.Tensor, codes: torch.Tensor, levels: torch.Tensor, bits: int
) -> torch.Tensor:
    op = "sugar::triton_relu_backward_codes"
    _check_tensor(grad_y, op, "grad_y")
    bits = _check_bits(bits, op)
    _check_table(levels, grad_y, _opmath(grad_y.dtype), op, "levels", "grad_y")
    _check_table(codes, grad_y, torch.uint8, op, "codes", "grad_y")
    _check_levels(levels, bits, op)
    if codes.numel() != packed_size(grad_y.numel(), bits):
        raise RuntimeError(
            f"{op}: codes hold {codes.numel()} bytes but grad_y has {grad_y.numel()} elements "
            f"at {bits} bits"
        )
    gc = grad_y.contiguous()
    grad_x = torch.empty_like(gc)
    _start(relu_backward_codes_launch(gc, codes, levels, grad_x, bits))
    return grad_x
