"""SUGAR in Triton, exact mode (bits=None): ReLU forward and surrogate-gradient backward,
registered with triton_op; also the surrogate math and the launch helpers the code-mode kernels
(``code_modes.py``) share.

The surrogate math lives in this module once: ``grad_factor``, one branch per surrogate, chosen
by a compile-time surrogate id (the catalogue position, ``SURROGATE_IDS``) and region flag. The
formulas are those of ``sugar_kernels/surrogates.py`` (``surrogate_derivative``) and
``csrc/sugar_math.h``:
|x| clamped to 1e4 (NaN passes through), sigmoid from one exp, mish without overflow, x <= 0 the
negative side. Arithmetic is float32 for half/bfloat16/float32 inputs and float64 for float64.

Two kernels, each beside its launcher (``<name>_kernel`` / ``<name>``), walk dense tensors as
flat storage like the C++ host code: dense inputs of any dim order (contiguous, channels_last,
transposed) keep their layout, others are made contiguous first.

The ops ``sugar::triton_relu_forward`` / ``sugar::triton_relu_backward`` have the same schemas as
``sugar::relu_forward`` / ``sugar::relu_backward``; their autograd (the formulas of the C++ ops) is
registered by ``sugar_kernels.python_autograd.register_autograd("triton_")`` on import.

Under ``TRITON_INTERPRET=1`` (CPU tensors, for CI without a GPU) the autotuner gets one config and
erfc, which the interpreter does not provide, is computed from erf (see ``_erfc``); the
interpreter cannot be traced by torch.compile (use a GPU for that). The compiled branches (libdevice
erfc, the autotune configs, every kernel variant a launcher can request) are compiled for sm_80 and
sm_90 without a GPU by tests/test_triton_compiled.py, from the launchers' own ``Launch`` values.
"""

import math
import struct
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import FakeTensor
from torch.library import triton_op, wrap_triton
from triton.language.extra import libdevice
from triton.runtime.interpreter import InterpretedFunction

from ..surrogates import REGIONS, SURROGATES


@triton.jit
def _interpret_probe():
    pass


# True when triton.jit builds interpreter functions (TRITON_INTERPRET=1 at import time).
INTERPRET = isinstance(_interpret_probe, InterpretedFunction)
# The same flag as a compile-time constant for the kernels (torch.compile copies tl.constexpr
# globals into its generated code).
_INTERPRET = tl.constexpr(INTERPRET)

# The kernels' compile-time surrogate id: the position in the catalogue (the C++ enum's value).
SURROGATE_IDS = {name: s.id for name, s in SURROGATES.items()}
# The names by id, for grad_factor's branches (a constexpr tuple: torch.compile copies it along).
_SURROGATE_NAMES = tl.constexpr(tuple(SURROGATE_IDS))
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# Float constants are tl.constexpr so that float64 kernels get them in float64 (a Python float
# meeting a float64 tensor is materialised in float64) and torch.compile copies them along.
_SELU_LAMBDA = tl.constexpr(1.0507009873554805)
_SELU_ALPHA = tl.constexpr(1.6732632423543772)
_INV_SQRT2 = tl.constexpr(0.70710678118654752440)
_INV_SQRT_2PI = tl.constexpr(0.39894228040143267794)
# s'(x) equals its limit at |x| = 1e4 far below float64 resolution; clamping turns +-inf into
# finite inputs (inf * 0 would give NaN). NaN passes through the clamp.
_DERIVATIVE_CLAMP = tl.constexpr(1.0e4)


# ---------------------------------------------------------------------------------------------
# Launch configurations. Tensors of at least AUTOTUNE_MIN_ELEMENTS go through the autotuner
# (block size x warps, keyed on the element count, and the surrogate for backward). Smaller ones,
# where launch latency dominates and a benchmark could not tell configs apart, launch the kernel
# with SMALL_BLOCK_SIZE directly: one compilation per kernel variant instead of one per config.
# float64 kernels keep 8 elements per thread and at most 256 threads (255 registers each): at 16
# elements per thread backward mish spills (24..68 bytes with region="negative"), at 32 ptxas runs
# out of registers for bsilu, gelu, silu, mish and the code forward (220..1044 bytes of spills),
# at 512 threads (16 warps) the 128 registers per thread left spill too; checked for sm_80 and
# sm_90 by tests/test_triton_compiled.py. The other dtypes keep at most 16 elements per thread
# (8192-element blocks on 16 warps): at 32, triton 3.6 spills backward mish (4 bytes on sm_90).
# The interpreter gets a single autotune config (nothing to benchmark, and CI time stays low).
# ---------------------------------------------------------------------------------------------
AUTOTUNE_CONFIGS = [
    triton.Config({"BLOCK_SIZE": block}, num_warps=warps)
    for block, warps in ((1024, 4), (2048, 4), (4096, 8), (8192, 16))
]
AUTOTUNE_CONFIGS_64 = [
    triton.Config({"BLOCK_SIZE": block}, num_warps=warps) for block, warps in ((1024, 4), (2048, 8))
]
INTERPRET_CONFIGS = [triton.Config({"BLOCK_SIZE": 2048}, num_warps=4)]
CONFIGS = INTERPRET_CONFIGS if INTERPRET else AUTOTUNE_CONFIGS
CONFIGS_64 = INTERPRET_CONFIGS if INTERPRET else AUTOTUNE_CONFIGS_64
SMALL_BLOCK_SIZE = 1024  # launched with Triton's default num_warps=4 (= AUTOTUNE_CONFIGS[0])
AUTOTUNE_MIN_ELEMENTS = 1 << 20


def autotune(kernel, key: list[str]) -> tuple:
    """kernel behind triton.autotune keyed on ``key``: (with CONFIGS, with CONFIGS_64), to be
    indexed with ``dtype == torch.float64``."""
    return tuple(triton.autotune(configs=c, key=key)(kernel) for c in (CONFIGS, CONFIGS_64))


# ---------------------------------------------------------------------------------------------
# Launches. Each launcher builds a Launch (``<kernel>_launch``: the kernel, its run-time arguments
# and compile-time flags, the autotuner or the small block) and ``run`` starts it; everything a
# launch can compile is in the Launch and ``launch_configs``, which tests/test_triton_compiled.py
# compiles for real GPU targets from the same ``<kernel>_launch`` functions.
# ---------------------------------------------------------------------------------------------
class Launch(NamedTuple):
    kernel: object  # the @triton.jit kernel
    autotuned: object  # the same kernel behind triton.autotune (when ``autotune``)
    args: tuple  # run-time arguments, in the kernel's order
    flags: dict  # compile-time arguments, all but BLOCK_SIZE
    autotune: bool  # True: through ``autotuned``; False: with BLOCK_SIZE = SMALL_BLOCK_SIZE
    units: int  # the grid is cdiv(units, BLOCK_SIZE // per) programs
    per: int


def make_launch(kernel, autotuned, args: tuple, flags: dict, units: int, per: int = 1) -> Launch:
    """The launch of ``kernel`` (``autotuned``: ``autotune(kernel, ...)``) over ``units``; the
    first argument, a tensor, picks the float64 configs by its dtype and autotuning by its size."""
    first = args[0]
    big = first.numel() >= AUTOTUNE_MIN_ELEMENTS
    return Launch(kernel, autotuned[first.dtype == torch.float64], args, flags, big, units, per)


def _traceable(kernel):
    """The kernel as torch.compile can trace it. Interpreted kernels (TRITON_INTERPRET=1) cannot
    be traced at all, and torch 2.11's wrap_triton rejects them: launch them as they are."""
    return kernel if INTERPRET else wrap_triton(kernel)


def run(launch: Launch) -> None:
    """Start the launch (under torch.compile: trace it, through wrap_triton) on the device of its
    tensors. Triton launches on the current CUDA device, which need not be theirs (tensors on
    cuda:1 while cuda:0 is current: "cannot be accessed from Triton", or an illegal access)."""
    device = launch.args[0].device
    if device.type == "cuda" and device.index != torch.cuda.current_device():
        with torch.cuda.device(device):
            _run(launch)
    else:
        _run(launch)


def _run(launch: Launch) -> None:
    kernel, autotuned, args, flags, autotune, units, per = launch
    if autotune:
        grid = lambda meta: (triton.cdiv(units, meta["BLOCK_SIZE"] // per),)  # noqa: E731
        _traceable(autotuned)[grid](*args, **flags)
    else:
        grid = (triton.cdiv(units, SMALL_BLOCK_SIZE // per),)
        _traceable(kernel)[grid](*args, **flags, BLOCK_SIZE=SMALL_BLOCK_SIZE)


def launch_configs(launch: Launch) -> list[dict]:
    """The keyword arguments that ``run`` adds to ``launch.flags``, one dict per kernel it can
    compile: every autotune config (``Config.all_kwargs()``, as triton.autotune passes them), or
    the small block with Triton's default options."""
    if launch.autotune:
        return [config.all_kwargs() for config in launch.autotuned.configs]
    return [{"BLOCK_SIZE": SMALL_BLOCK_SIZE}]


# ---------------------------------------------------------------------------------------------
# The surrogate math: x is in opmath (float32 or float64), already clamped to [-1e4, 1e4].
# ---------------------------------------------------------------------------------------------
# (Comments, not docstrings, inside jit functions: torch.compile pastes their source into a
# string literal of its generated code.)
@triton.jit
def _sigmoid_pair(x):
    # (sigma(x), sigma(-x), e) with e = exp(-|x|), from one exp, without cancellation.
    e = tl.exp(0 - tl.abs(x))
    inv = 1 / (1 + e)
    pos = x >= 0
    return tl.where(pos, inv, e * inv), tl.where(pos, e * inv, inv), e


@triton.jit
def _erfc(x):
    if _INTERPRET:
        # The interpreter has no erfc. 1 - erf(x) is off by ~1 ulp(1) (6e-8 in float32) in
        # absolute terms, so for x < ~-3 the gelu derivative (~ x pdf there, tiny) loses its
        # relative accuracy; the absolute part of the test bound (1e-6 |grad_out|) covers that.
        # Compiled kernels use libdevice erfc, accurate over the whole range.
        return 1 - tl.erf(x)
    else:
        return libdevice.erfc(x)  # CUDA libdevice erfcf / erfc, as in csrc/


@triton.jit
def grad_factor(x, alpha, SURROGATE: tl.constexpr, NEGATIVE_ONLY: tl.constexpr):
    # g(x): the derivative of surrogate number SURROGATE; 1 for x > 0 when NEGATIVE_ONLY.
    xc = tl.where(x < -_DERIVATIVE_CLAMP, -_DERIVATIVE_CLAMP, x)
    xc = tl.where(xc > _DERIVATIVE_CLAMP, _DERIVATIVE_CLAMP, xc)  # NaN passes through
    name: tl.constexpr = _SURROGATE_NAMES[SURROGATE]
    if name == "bsilu":
        sig, sig_c, _ = _sigmoid_pair(xc)
        d = sig + (xc + alpha) * sig * sig_c
    elif name == "nelu":
        den = 1 + xc * xc
        d = tl.where(xc > 0, 1, 2 * alpha * xc / (den * den))
    elif name == "elu":
        d = tl.where(xc > 0, 1, alpha * tl.exp(xc))
    elif name == "selu":
        d = _SELU_LAMBDA * tl.where(xc > 0, 1, _SELU_ALPHA * tl.exp(xc))
    elif name == "gelu":
        cdf = 0.5 * _erfc((0 - xc) * _INV_SQRT2)
        pdf = tl.exp(-0.5 * xc * xc) * _INV_SQRT_2PI
        d = cdf + xc * pdf
    elif name == "silu":
        sig, sig_c, _ = _sigmoid_pair(xc)
        d = sig * (1 + xc * sig_c)
    elif name == "mish":
        # tanh(softplus(x)) = n / (n + 2) with n = e^x (e^x + 2), rewritten with e = exp(-|x|) so
        # that nothing overflows and 1 - tanh is computed without cancellation.
        sig, _, e = _sigmoid_pair(xc)
        pos = xc >= 0
        n = e * (e + 2)
        den = tl.where(pos, 1 + 2 * e + 2 * e * e, n + 2)
        tanh_sp = tl.where(pos, 1 + 2 * e, n) / den
        one_minus = tl.where(pos, 2 * e * e, 2) / den
        d = tanh_sp + xc * sig * one_minus * (1 + tanh_sp)
    elif name == "leaky_relu":
        d = tl.where(xc > 0, 1, alpha)
    else:
        tl.static_assert(False, "grad_factor has no branch for this surrogate")
    if NEGATIVE_ONLY:
        d = tl.where(x > 0, 1, d)
    return d


# ---------------------------------------------------------------------------------------------
# Forward: y = relu(x), bit-identical to torch.relu
# ---------------------------------------------------------------------------------------------
# Loads and stores of one block, whole (FULL: unmasked) or the tail (masked). The exact kernels run
# their block body with FULL=True when the block lies inside the tensor and FULL=False for the last
# one: the element count then never limits vectorisation (Triton vectorises a masked access only
# when the count is a multiple of 16, one of its run-time specialisations), so with 16-byte-aligned
# pointers every element access of a full block is 128-bit whatever the size. (The code kernels
# stay masked: with the two copies ptxas spilled 4..8 bytes in some of their variants.)
@triton.jit
def _load(ptr, offsets, n, FULL: tl.constexpr):
    if FULL:
        return tl.load(ptr + offsets)
    else:
        return tl.load(ptr + offsets, mask=offsets < n, other=0)


@triton.jit
def _store(ptr, offsets, value, n, FULL: tl.constexpr):
    if FULL:
        tl.store(ptr + offsets, value)
    else:
        tl.store(ptr + offsets, value, mask=offsets < n)


# Bytes per element: reads x, writes y (2 * element_size: 8 for float32, 4 for half/bfloat16).
@triton.jit
def _relu_forward_block(x_ptr, y_ptr, offsets, n_elements, FULL: tl.constexpr):
    x = _load(x_ptr, offsets, n_elements, FULL)
    # x < 0 ? 0 : x keeps -0.0 and NaN (with its payload), exactly like torch.relu.
    _store(y_ptr, offsets, tl.where(x < 0, 0, x), n_elements, FULL)


@triton.jit
def relu_forward_kernel(x_ptr, y_ptr, n_elements, BLOCK_SIZE: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK_SIZE  # 64-bit: > 2^31 elements
    offsets = start + tl.arange(0, BLOCK_SIZE)
    if start + BLOCK_SIZE <= n_elements:
        _relu_forward_block(x_ptr, y_ptr, offsets, n_elements, True)
    else:
        _relu_forward_block(x_ptr, y_ptr, offsets, n_elements, False)


relu_forward_autotuned = autotune(relu_forward_kernel, key=["n_elements"])


def relu_forward_launch(x: torch.Tensor, y: torch.Tensor) -> Launch:
    """y = relu(x) over x's flat dense storage (y: the same layout; y may be x)."""
    n = x.numel()
    return make_launch(relu_forward_kernel, relu_forward_autotuned, (x, y, n), {}, n)


def relu_forward(x: torch.Tensor) -> torch.Tensor:
    """Launch relu_forward_kernel on x (walked as flat dense storage); y has x's layout."""
    xd = _dense(x)
    y = torch.empty_like(xd)
    if xd.numel() > 0 and _runs_kernels(xd):
        run(relu_forward_launch(xd, y))
    return y


# ---------------------------------------------------------------------------------------------
# Backward: grad_x = grad_y * g(x), in opmath, rounded once to x's dtype
# ---------------------------------------------------------------------------------------------
# Bytes per element: reads grad_y and x, writes grad_x (3 * element_size: 12 for float32, 6 for
# half/bfloat16, 24 for float64).
@triton.jit
def _relu_backward_block(
    grad_y_ptr,
    x_ptr,
    grad_x_ptr,
    offsets,
    n_elements,
    alpha_hi,
    alpha_lo,
    SURROGATE: tl.constexpr,
    NEGATIVE_ONLY: tl.constexpr,
    FULL: tl.constexpr,
):
    x = _load(x_ptr, offsets, n_elements, FULL)
    g = _load(grad_y_ptr, offsets, n_elements, FULL)
    if x.dtype == tl.float64:
        # alpha = alpha_hi + alpha_lo (two float32 values, see _alpha_parts): exact to ~2^-48.
        alpha = tl.cast(alpha_hi, tl.float64) + tl.cast(alpha_lo, tl.float64)
    else:
        # float32 opmath; alpha_hi is alpha rounded to float32, as in csrc (float(alpha)).
        x = x.to(tl.float32)
        g = g.to(tl.float32)
        alpha = tl.cast(alpha_hi, tl.float32)
    grad_x = g * grad_factor(x, alpha, SURROGATE, NEGATIVE_ONLY)
    _store(grad_x_ptr, offsets, grad_x.to(grad_x_ptr.dtype.element_ty), n_elements, FULL)


@triton.jit
def relu_backward_kernel(
    grad_y_ptr,
    x_ptr,
    grad_x_ptr,
    n_elements,
    alpha_hi,
    alpha_lo,
    SURROGATE: tl.constexpr,
    NEGATIVE_ONLY: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    start = tl.program_id(0).to(tl.int64) * BLOCK_SIZE  # 64-bit: > 2^31 elements
    offsets = start + tl.arange(0, BLOCK_SIZE)
    if start + BLOCK_SIZE <= n_elements:
        _relu_backward_block(grad_y_ptr, x_ptr, grad_x_ptr, offsets, n_elements, alpha_hi,
                             alpha_lo, SURROGATE, NEGATIVE_ONLY, True)  # fmt: skip
    else:
        _relu_backward_block(grad_y_ptr, x_ptr, grad_x_ptr, offsets, n_elements, alpha_hi,
                             alpha_lo, SURROGATE, NEGATIVE_ONLY, False)  # fmt: skip


relu_backward_autotuned = autotune(relu_backward_kernel, key=["n_elements", "SURROGATE"])


def relu_backward_launch(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    grad_x: torch.Tensor,
    surrogate_id: int,
    negative_only: bool,
    alpha: float,
) -> Launch:
    """grad_x = grad_y * g(x) over flat dense storage (all three with the same strides)."""
    n = x.numel()
    args = (grad_y, x, grad_x, n, *_alpha_parts(alpha))
    flags = {"SURROGATE": surrogate_id, "NEGATIVE_ONLY": negative_only}
    return make_launch(relu_backward_kernel, relu_backward_autotuned, args, flags, n)


def relu_backward(
    grad_y: torch.Tensor, x: torch.Tensor, surrogate: str, alpha: float, region: str
) -> torch.Tensor:
    """Launch relu_backward_kernel; grad_x has the layout of dense x (grad_y is copied into it
    when its strides differ, e.g. an expanded gradient from ``.sum().backward()``)."""
    surrogate_id, negative_only = _parse_params(surrogate, alpha, region)
    xd = _dense(x)
    gd = _laid_out_like(grad_y, xd)
    grad_x = torch.empty_like(xd)
    if xd.numel() > 0 and _runs_kernels(xd):
        run(relu_backward_launch(gd, xd, grad_x, surrogate_id, negative_only, alpha))
    return grad_x


# ---------------------------------------------------------------------------------------------
# Host helpers
# ---------------------------------------------------------------------------------------------
def _runs_kernels(t: torch.Tensor) -> bool:
    """False for fake and meta tensors under the interpreter: there wrap_triton hands back the raw
    kernel (it cannot trace interpreted ones), so shape propagation through this function (the
    op's fake kernel) must not launch it. Compiled kernels are traced by wrap_triton instead."""
    return not (INTERPRET and (isinstance(t, FakeTensor) or t.is_meta))


def _is_dense(t: torch.Tensor) -> bool:
    """True if t's elements fill one block of memory without overlap, in any dim order
    (at::Tensor::is_non_overlapping_and_dense, which Python does not expose)."""
    if t.numel() <= 1:
        return True
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _dense(t: torch.Tensor) -> torch.Tensor:
    """t if its elements fill one block of memory (any dim order), else a contiguous copy."""
    return t if _is_dense(t) else t.contiguous()


def _laid_out_like(t: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
    """t with exactly the strides of the dense tensor ``layout`` (same element order)."""
    if t.stride() == layout.stride() and _is_dense(t):
        return t
    out = torch.empty_like(layout)
    out.copy_(t)
    return out


def _alpha_parts(alpha: float) -> tuple[float, float]:
    """alpha as float32 hi + lo parts: Triton passes Python floats to kernels as float32 (or as
    float64 under torch.compile), so a float64 kernel rebuilds alpha from two exact parts."""
    hi = _to_float32(alpha)
    return hi, _to_float32(alpha - hi)


_FLOAT32_OVERFLOW = 2.0**128 * (1 - 2.0**-25)  # the smallest value rounding to float32 inf


def _to_float32(v: float) -> float:
    """v rounded to the nearest float32 (pure Python: also runs while tracing with fake tensors)."""
    return struct.unpack("f", struct.pack("f", v))[0]


def _parse_params(surrogate: str, alpha: float, region: str) -> tuple[int, bool]:
    if surrogate not in SURROGATE_IDS:
        raise ValueError(
            f"sugar: unknown surrogate {surrogate!r}; valid surrogates: {', '.join(SURROGATE_IDS)}"
        )
    if not math.isfinite(alpha):
        raise ValueError(f"sugar: alpha must be finite, got {alpha}")
    if not abs(alpha) < _FLOAT32_OVERFLOW:  # alpha travels as float32 parts (_alpha_parts)
        raise ValueError(f"sugar: the Triton kernels need |alpha| < 2^128, got {alpha}")
    if region not in REGIONS:
        raise ValueError(f"sugar: unknown region {region!r}; valid regions: {', '.join(REGIONS)}")
    return SURROGATE_IDS[surrogate], region == "negative"


def _check_tensor(t: torch.Tensor, op: str, what: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {what} must be float32, float64, float16 or bfloat16, got {t.dtype}"
        )
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and INTERPRET:
        return
    if t.device.type == "meta":  # shape propagation only; no kernel runs
        return
    raise RuntimeError(
        f"{op}: Triton cannot run {what} on device '{t.device}' here: Triton kernels need a CUDA "
        "device, or CPU tensors with TRITON_INTERPRET=1 set before triton_kernels is imported"
    )


# ---------------------------------------------------------------------------------------------
# The custom ops (same schemas as sugar::relu_forward / sugar::relu_backward)
# ---------------------------------------------------------------------------------------------
@triton_op("sugar::triton_relu_forward", mutates_args=())
def triton_relu_forward(x: torch.Tensor, surrogate: str, alpha: float, region: str) -> torch.Tensor:
    _check_tensor(x, "sugar::triton_relu_forward", "x")
    _parse_params(surrogate, alpha, region)  # errors surface at forward time, as in csrc/
    return relu_forward(x)


@triton_op("sugar::triton_relu_backward", mutates_args=())
def triton_relu_backward(
    grad_y: torch.Tensor, x: torch.Tensor, surrogate: str, alpha: float, region: str
) -> torch.Tensor:
    op = "sugar::triton_relu_backward"
    _check_tensor(x, op, "x")
    if grad_y.shape != x.shape:
        raise RuntimeError(
            f"{op}: grad_y has shape {tuple(grad_y.shape)} but x has shape {tuple(x.shape)}"
        )
    if grad_y.dtype != x.dtype:
        raise TypeError(f"{op}: grad_y is {grad_y.dtype} but x is {x.dtype}")
    if grad_y.device != x.device:
        raise RuntimeError(f"{op}: grad_y is on {grad_y.device} but x is on {x.device}")
    return relu_backward(grad_y, x, surrogate, alpha, region)


def sugar_relu_triton(x: torch.Tensor, surrogate: str, alpha: float, region: str) -> torch.Tensor:
    """relu(x) forward, grad_y * g(x) backward, through the Triton ops (arguments validated by
    the caller, alpha already filled in)."""
    return torch.ops.sugar.triton_relu_forward(x, surrogate, float(alpha), region)
