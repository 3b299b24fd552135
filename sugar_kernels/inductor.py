"""SUGAR under ``torch.compile``: Inductor sees the ops' pointwise meaning and fuses them.

An elementwise op costs memory traffic, and only the compiler can remove it by fusing the
activation into its neighbours (BatchNorm, residual adds, the next layer's prologue). So, for
Inductor only, every ``sugar::`` op is registered in Inductor's decomposition table with a
decomposition into stock aten ops that computes exactly what the kernel computes:

* ``relu_forward``: ``relu(x)``; ``relu_backward``: ``grad_y * g(x)`` in opmath (the closed-form
  s' of ``surrogates.surrogate_derivative``, the same formulas as ``csrc/sugar_math.h``);
* ``relu_forward_codes``: ``relu(x)`` and the packed codes,
  ``code = interval_codes[#{t : t < x}]`` with the count found by a branch-free binary search
  over the sorted thresholds (exact, so codes are bit-identical to the kernels'); packing as in
  ``codes.pack``;
* ``relu_backward_codes``: ``grad_y * levels[code]`` after unpacking.

Decomposition happens while AOTAutograd traces the joint graph, so its partitioner decides what
is saved for backward: code modes save the packed uint8 codes (the forward's smallest output),
exact mode at most what eager saves. ``torch.export``, ``aot_eager`` and FX graphs never use
Inductor's table, so they keep one ``sugar::`` node per op.

Compile modes (``sugar_kernels.set_compile_mode``, the context manager ``compile_mode``, or
``SUGAR_COMPILE_MODE`` in the environment):

* ``"auto"`` (default): exact-mode ops are fused on every device; code-mode ops are fused on GPUs
  and call the C++ kernel on the CPU, where ``benchmarks/compiled.py`` measured the kernel faster
  (Inductor's C++ code gathers the threshold table element by element: bits=8 train steps took
  1.3-3.9x compiled ReLU's, the kernel 1.0-1.2x);
* ``"fused"``: every op fused on every device;
* ``"opaque"``: every op calls its kernel (C++/CUDA/Triton), as in eager mode (debugging, or
  wherever a measurement shows the kernels win).

The compile caches' key (``torch.compiler.config.cache_key_tag``) always carries this build of
sugar-kernels (``sugar-build=<fingerprint>``: what the ops trace into, and so what a cached
graph computes, changes with the library, and torch's on-disk caches do not key on it) and a mode
other than the default (``sugar-compile=<mode>``), and
``sugar_relu`` reads the mode while Dynamo traces, so Dynamo guards on it: switching the mode
recompiles instead of reusing code made for another mode.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from pathlib import Path

import torch

from .surrogates import grad_factor

MODES = ("auto", "fused", "opaque")
_DEFAULT = "auto"
_TAG_PREFIX = "sugar-compile="
_BUILD_TAG_PREFIX = "sugar-build="
_state = {"mode": _DEFAULT}
# The ops whose decomposition may decline (code modes on the CPU in "auto"): Inductor then needs a
# registered fallback (a call to the kernel) beside the decomposition.
_MAY_DECLINE = ("relu_forward_codes", "relu_backward_codes")


def decomposes(codes: bool, device_type: str) -> bool:
    """Whether Inductor generates the code of a sugar op (exact or code mode) on a device."""
    mode = _state["mode"]
    if mode == "opaque":
        return False
    return mode == "fused" or not codes or device_type != "cpu"


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- the decompositions -----------------------------------------------------------------------
def relu_forward(x, surrogate, alpha, region):
    # Bit-identical to torch.relu and the kernels (x < 0 ? 0 : x): NaN and -0.0 pass through.
    return torch.where(x < 0, torch.zeros_like(x), x)


def relu_backward(grad_y, x, surrogate, alpha, region):
    op = _opmath(x.dtype)
    g = grad_factor(x.to(op), surrogate, alpha, region)
    return (grad_y.to(op) * g).to(x.dtype)


def _interval(flat: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """#{t : t < x} for sorted ``thresholds`` (int32), NaN -> 0: a branch-free binary search.

    Every step halves the candidate range with one table load and one compare, so the number of
    steps depends only on the table's (static) length, never on the data.
    """
    m = thresholds.numel()
    below = torch.zeros_like(flat, dtype=torch.int32)
    if m == 0:
        return below
    step = 1 << (m.bit_length() - 1)  # the largest power of two <= m
    while step:
        cand = below + step  # a candidate count; t[cand - 1] < x means at least cand are below x
        probe = thresholds[torch.clamp(cand - 1, 0, m - 1)]
        below = torch.where((cand <= m) & (probe < flat), cand, below)
        step >>= 1
    return below


def _encode(x, thresholds, interval_codes, bits):
    flat = x.reshape(-1).to(thresholds.dtype)
    codes = interval_codes[_interval(flat, thresholds)].to(torch.int32)
    per = 8 // bits
    pad = (-codes.numel()) % per
    if pad:
        codes = torch.nn.functional.pad(codes, (0, pad))
    shifts = torch.arange(0, 8, bits, dtype=torch.int32, device=x.device)
    return (codes.view(-1, per) << shifts).sum(dim=1).to(torch.uint8)


def relu_forward_codes(x, levels, thresholds, interval_codes, search, bits):
    if not decomposes(True, x.device.type):
        return NotImplemented
    return relu_forward(x, "", 0.0, ""), _encode(x, thresholds, interval_codes, bits)


def relu_backward_codes(grad_y, codes, levels, bits):
    if not decomposes(True, grad_y.device.type):
        return NotImplemented
    n = grad_y.numel()
    shifts = torch.arange(0, 8, bits, dtype=torch.int32, device=codes.device)
    unpacked = (codes.to(torch.int32).view(-1, 1) >> shifts) & ((1 << bits) - 1)
    level = levels[unpacked.reshape(-1)[:n]]
    grad = grad_y.contiguous().reshape(-1).to(levels.dtype) * level
    return grad.to(grad_y.dtype).view(grad_y.shape)


_DECOMPOSITIONS = {
    "relu_forward": relu_forward,
    "relu_backward": relu_backward,
    "relu_forward_codes": relu_forward_codes,
    "relu_backward_codes": relu_backward_codes,
}


def _ops_and_decompositions():
    """(OpOverload, decomposition, may decline) for the C++ ops and, when registered, the Triton
    ones."""
    from .backends import op_prefixes

    for name, fn in _DECOMPOSITIONS.items():
        for prefix in op_prefixes():
            packet = getattr(torch.ops.sugar, prefix + name, None)
            if packet is not None:
                yield packet.default, fn, name in _MAY_DECLINE


def _register_fallback(op) -> None:
    """A lowering that calls the op's kernel, for when its decomposition declines."""
    from torch._inductor import lowering

    if op not in lowering.lowerings:
        lowering.make_fallback(op, warn=False, override_decomp=True)


# ---- the mode switch --------------------------------------------------------------------------
def _apply(mode: str) -> None:
    from torch._inductor import decomposition as inductor_decomp

    table = inductor_decomp.decompositions
    for op, fn, may_decline in _ops_and_decompositions():
        if mode == "opaque":
            table.pop(op, None)
            continue
        if may_decline:
            _register_fallback(op)
        table[op] = fn
    # Inductor memoises the table it selects; drop the memo so the change is seen.
    fast = getattr(inductor_decomp, "fast_random_decomps", None)
    if fast is not None and hasattr(fast, "cache_clear"):
        fast.cache_clear()
    cfg = torch.compiler.config
    tags = [
        t
        for t in cfg.cache_key_tag.split(";")
        if t and not t.startswith((_TAG_PREFIX, _BUILD_TAG_PREFIX))
    ]
    tags.append(_BUILD_TAG_PREFIX + _build_fingerprint())
    if mode != _DEFAULT:
        tags.append(_TAG_PREFIX + mode)
    cfg.cache_key_tag = ";".join(tags)
    _state["mode"] = mode


@functools.cache
def _build_fingerprint() -> str:
    """Changes whenever a file of the installed package (Python sources, the compiled extension,
    the Triton kernels) changes: a hash of their names, sizes and modification times."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for root in (package, package / "triton_kernels"):
        for path in sorted(root.resolve().glob("*")):
            if path.suffix in (".py", ".so", ".pyd"):
                stat = path.stat()
                digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def set_compile_mode(mode: str) -> None:
    """How sugar ops run inside ``torch.compile``d graphs (Inductor), for compilations from now on.

    ``"auto"`` (default): Inductor generates and fuses exact-mode ops everywhere and code-mode ops
    on GPUs (code modes on the CPU call the C++ kernel, measured faster there). ``"fused"``: every
    op fused. ``"opaque"``: every op calls its kernel, as in eager mode. Functions compiled earlier
    are recompiled on their next call (Dynamo guards on the mode).
    """
    if mode not in MODES:
        raise ValueError(f"unknown compile mode {mode!r}; valid modes: {', '.join(MODES)}")
    _apply(mode)


def get_compile_mode() -> str:
    return _state["mode"]


def traced_for_fusion(codes: bool, device_type: str) -> bool:
    """True while torch.compile (not torch.export) traces a call that Inductor will fuse.

    Evaluated by Dynamo during tracing, which makes the compiled code guard on the mode.
    """
    if not torch.compiler.is_compiling() or is_exporting():
        return False
    return decomposes(codes, device_type)


def is_exporting() -> bool:
    """True while torch.export traces, False under torch.compile and in eager mode.

    Some torch releases (2.11) fold ``torch.compiler.is_exporting()`` to True whenever Dynamo
    traces, export or not; the flag that torch.export sets is right on every release, and Dynamo
    reads a module attribute at trace time (guarding on it).
    """
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    if flag is None:
        check = getattr(torch.compiler, "is_exporting", None)
        return bool(check and check())
    return bool(flag)


@contextlib.contextmanager
def compile_mode(mode: str):
    """Context manager form of :func:`set_compile_mode`; restores the previous mode on exit."""
    previous = get_compile_mode()
    set_compile_mode(mode)
    try:
        yield
    finally:
        set_compile_mode(previous)


def install() -> None:
    """Called once when the ops are registered: the mode from ``SUGAR_COMPILE_MODE`` (default
    auto)."""
    mode = os.environ.get("SUGAR_COMPILE_MODE", _DEFAULT) or _DEFAULT
    if mode not in MODES:
        raise ValueError(
            f"SUGAR_COMPILE_MODE={mode!r} is not a compile mode; valid modes: {', '.join(MODES)}"
        )
    _apply(mode)
