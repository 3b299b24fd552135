"""Compact saved state: the ``bits=8|4|2|1`` code modes.

Instead of keeping x for backward, the forward kernel stores a ``bits``-bit code per element and
backward computes ``grad_y * levels[code]``. How codes are chosen:

* ``levels``: the K = 2**bits values that minimise E[(g(X) - level)^2] for X ~ N(0, 1)
  (Lloyd-Max on the distribution of g(X), in float64). With ``region="negative"`` one level is
  exactly 1.0 and every x > 0 gets it, so the positive side's gradient is exactly ``grad_y``.
* The code of x is that of the level nearest to g(x). Because g is a fixed function of x, this
  partitions the x axis into intervals; ``thresholds`` are their boundaries and
  ``interval_codes`` the code of each interval. Kernels only compare x with the thresholds
  (``code = interval_codes[#{t : t < x}]``, in the opmath dtype), so codes are bit-identical on
  every backend and the forward pass evaluates no transcendental function. NaN gets interval 0.
* Packing: ``8 // bits`` codes per byte, element i of the logical (row-major) tensor in bits
  ``[(i % per) * bits, (i % per + 1) * bits)`` of byte ``i // per``; the last byte is zero-padded.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .surrogates import SURROGATES, grad_factor, resolve

BITS = (1, 2, 4, 8)
MAX_INTERVALS = 1024  # the kernels' table capacity (csrc/sugar_limits.h kMaxIntervals)
_GRID_LIMIT = 20.0  # g(x) is at its limit beyond |x| = 20 to far below float64 resolution
_LLOYD_POINTS = 400_001
_PARTITION_POINTS = 400_001


@dataclass(frozen=True)
class Quantizer:
    """The code table of one (surrogate, alpha, region, bits)."""

    surrogate: str
    alpha: float
    region: str
    bits: int
    levels: tuple[float, ...]  # 2**bits values, sorted
    thresholds: tuple[float, ...]  # interval boundaries in x, sorted
    interval_codes: tuple[int, ...]  # len(thresholds) + 1 codes
    rel_l2_error: float  # sqrt(E[(g - q)^2] / E[g^2]) for X ~ N(0, 1)


def check_bits(bits) -> int:
    if not isinstance(bits, bool):
        for valid in BITS:
            if bits == valid:
                return valid  # a Python constant even if torch.compile made `bits` symbolic
    raise ValueError(f"bits must be None (exact) or one of {BITS}, got {bits!r}")


def _g(x: np.ndarray, surrogate: str, alpha: float, region: str) -> np.ndarray:
    with _real_tensors():  # quantizer() may first run inside a transform or a tracing mode
        return grad_factor(torch.from_numpy(x), surrogate, alpha, region).numpy()


def _lloyd_max(values, weights, k, fixed_one):
    """Weighted 1-D Lloyd-Max: k levels minimising sum w (v - level)^2; one level pinned to 1.0."""
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    distinct = np.unique(v)
    if len(distinct) <= k:  # a discrete g (e.g. leaky_relu): its values are the exact optimum
        return np.concatenate([distinct, np.full(k - len(distinct), distinct[-1])])
    cw = np.concatenate([[0.0], np.cumsum(w)])
    cwv = np.concatenate([[0.0], np.cumsum(w * v)])
    # start at the quantiles of the density^(1/3) (the high-rate optimum), then iterate
    dens = np.cbrt(w)
    cd = np.cumsum(dens)
    levels = np.interp((np.arange(k) + 0.5) / k * cd[-1], cd, v)
    for _ in range(3000):
        edges = np.concatenate([[0], np.searchsorted(v, (levels[1:] + levels[:-1]) / 2), [len(v)]])
        mass = cw[edges[1:]] - cw[edges[:-1]]
        total = cwv[edges[1:]] - cwv[edges[:-1]]
        new = np.where(mass > 0, total / np.where(mass > 0, mass, 1.0), levels)
        if fixed_one:
            new[np.argmin(np.abs(new - 1.0))] = 1.0
        new = np.sort(new)
        if np.max(np.abs(new - levels)) < 1e-12:
            break
        levels = new
    return new


def _nearest(g: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Index of the nearest level (ties to the lower one); levels sorted."""
    idx = np.searchsorted((levels[1:] + levels[:-1]) / 2, g, side="left")
    return idx.astype(np.int64)


@functools.cache
def quantizer(
    surrogate: str = "bsilu", alpha: float | None = None, region: str = "all", bits: int = 8
) -> Quantizer:
    """The (cached) code table for one configuration; see the module docstring."""
    surrogate, alpha, region = resolve(surrogate, alpha, region)
    bits = check_bits(bits)
    k = 1 << bits
    negative = region == "negative"

    # Lloyd-Max on the distribution of g(X), X ~ N(0,1), discretised on a fine grid.
    hi = 0.0 if negative else _GRID_LIMIT
    x = np.linspace(-_GRID_LIMIT, hi, _LLOYD_POINTS)
    w = np.exp(-0.5 * x * x) * (x[1] - x[0]) / math.sqrt(2 * math.pi)
    g = _g(x, surrogate, alpha, region)
    if negative:  # x > 0 is a point mass of 1/2 at g = 1
        g, w = np.append(g, 1.0), np.append(w, 0.5)
    levels = _lloyd_max(g, w, k, negative)
    one_code = int(np.flatnonzero(levels == 1.0)[0]) if negative else -1

    def code_of(xs: np.ndarray) -> np.ndarray:
        return _nearest(_g(xs, surrogate, alpha, region), levels)

    # The x-partition: where the nearest level changes on a fine grid, refined by bisection.
    xs = np.linspace(-_GRID_LIMIT, hi, _PARTITION_POINTS)
    codes = code_of(xs)
    change = np.flatnonzero(codes[1:] != codes[:-1])
    lo, up = xs[change], xs[change + 1]
    left = codes[change]
    for _ in range(48):  # the grid step is 1e-4: 48 halvings reach float64 resolution
        mid = 0.5 * (lo + up)
        same = code_of(mid) == left
        lo, up = np.where(same, mid, lo), np.where(same, up, mid)
    thresholds = list(lo)
    interval_codes = [int(codes[0])] + [int(c) for c in codes[change + 1]]
    if negative and interval_codes[-1] != one_code:
        thresholds.append(0.0)
        interval_codes.append(one_code)
    if len(interval_codes) > MAX_INTERVALS:
        raise ValueError(f"{surrogate}/{region}/{bits} bits needs {len(interval_codes)} intervals")

    q_of_g = levels[_nearest(g, levels)]
    if negative:
        q_of_g[-1] = 1.0
    err = math.sqrt(np.sum(w * (g - q_of_g) ** 2) / np.sum(w * g * g))
    return Quantizer(
        surrogate,
        alpha,
        region,
        bits,
        tuple(float(v) for v in levels),
        tuple(float(t) for t in thresholds),
        tuple(interval_codes),
        err,
    )


def levels(
    surrogate: str = "bsilu", alpha: float | None = None, region: str = "all", bits: int = 8
) -> torch.Tensor:
    """The 2**bits gradient levels (float64) that codes index, for inspection."""
    return torch.tensor(quantizer(surrogate, alpha, region, bits).levels, dtype=torch.float64)


def opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


_TABLES: dict[tuple, tuple[torch.Tensor, ...] | torch.Tensor] = {}


class CodeTables(NamedTuple):
    """A code mode's tables, in the code ops' argument order: ``op(x, *tables, bits)``."""

    levels: torch.Tensor  # gradient level of each code (opmath dtype)
    thresholds: torch.Tensor  # sorted interval boundaries (opmath dtype)
    interval_codes: torch.Tensor  # code of each interval (uint8)
    search: torch.Tensor  # int32 [scan, start_0, ..., start_{B-1}]: see search_table

    @property
    def scan(self) -> torch.Tensor:
        """How many thresholds a lookup compares after its bucket's start (0-d int32)."""
        return self.search[0]

    @property
    def bucket_starts(self) -> torch.Tensor:
        """First candidate threshold of each of the SEARCH_BUCKETS buckets (int32)."""
        return self.search[1:]


def kernel_tables(
    surrogate: str, alpha: float, region: str, bits: int, device: torch.device, dtype: torch.dtype
) -> CodeTables:
    """The ``CodeTables`` of a configuration as the code ops take them, on ``device``.

    Cached per configuration, each configuration in its own attribute of ``_SLOTS``. Under
    torch.compile/export, ``_table_slot`` runs once at trace time (building the tables if needed)
    and the tensors enter the graph as inputs read from that attribute, so every configuration
    has its own source and a graph may use any number of them.
    """
    return getattr(_SLOTS, _table_slot(surrogate, alpha, region, bits, device, dtype))


class _TableSlots:
    """One attribute per configuration: (levels, thresholds, interval_codes, search)."""


_SLOTS = _TableSlots()
_SLOT_NAMES: dict[tuple, str] = {}
# Threads (nn.DataParallel's replicas, a serving thread pool) may meet new configurations at
# once: without the lock two of them could take the same slot name, one configuration's codes
# then silently using the other's tables.
_SLOT_LOCK = threading.Lock()


@torch.compiler.assume_constant_result
def _table_slot(surrogate, alpha, region, bits, device, dtype) -> str:
    key = (surrogate, alpha, region, bits, device, dtype)
    name = _SLOT_NAMES.get(key)
    if name is None:
        with _SLOT_LOCK:
            name = _SLOT_NAMES.get(key)
            if name is None:
                name = f"config_{len(_SLOT_NAMES)}"
                setattr(_SLOTS, name, CodeTables(*tables(*key), search_table(*key)))
                _SLOT_NAMES[key] = name
    return name


def tables(
    surrogate: str, alpha: float, region: str, bits: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(levels, thresholds, interval_codes) as the kernels take them: opmath dtype, on ``device``.

    Cached per configuration (eager mode; under torch.compile use ``kernel_tables``).
    """
    key = (surrogate, alpha, region, bits, device, dtype)
    if key not in _TABLES:
        with _real_tensors():
            _TABLES[key] = _build_tables(surrogate, alpha, region, bits, device, dtype)
    return _TABLES[key]


@contextlib.contextmanager
def _real_tensors():
    """Build cached tables as ordinary real tensors even while tracing (torch.export's
    FakeTensorMode), inside a torch.func transform (whose wrappers have no storage for
    ``.numpy()``), in inference mode (an inference tensor cannot be saved for backward) or under a
    default device (``torch.set_default_device``, ``with torch.device(...)``: the quantizer's
    intermediates must stay on the CPU): a fake, wrapped or inference tensor in the cache would
    break every later call that trains. No grad-mode switch: the tables come from Python numbers
    (nothing requires grad), and torch.export would record each switch as an empty
    ``wrap_with_set_grad_enabled`` subgraph in the exported program."""
    from torch.utils._python_dispatch import _disable_current_modes

    with contextlib.ExitStack() as stack:
        if torch.is_inference_mode_enabled():
            stack.enter_context(torch.inference_mode(False))
        stack.enter_context(_disable_current_modes())  # dispatch modes (fake, proxy)
        stack.enter_context(torch._C.DisableTorchFunction())  # function modes (default device)
        stack.enter_context(torch._C._DisableFuncTorch())
        yield


def _build_tables(surrogate, alpha, region, bits, device, dtype):
    q = quantizer(surrogate, alpha if SURROGATES[surrogate].has_alpha else None, region, bits)
    op = opmath(dtype)
    return (
        torch.tensor(q.levels, dtype=op, device=device),
        torch.tensor(q.thresholds, dtype=op, device=device),
        torch.tensor(q.interval_codes, dtype=torch.uint8, device=device),
    )


SEARCH_BUCKETS = 4096  # csrc/sugar_math.h kSearchBuckets


def search_table(
    surrogate: str, alpha: float, region: str, bits: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """int32 ``[scan, start_0, ..., start_{B-1}]`` that lets the C++/CUDA kernels find
    ``#{t : t < x}`` with one table load and ``scan`` independent comparisons instead of a
    binary search: the kernel maps x to bucket ``j = clamp((x - t[0]) * B / (t[-1] - t[0]),
    0, B - 1)`` (opmath), starts at ``start_j`` and adds ``t[start_j + k] < x`` for k < scan.
    Buckets are widened by one on each side, so rounding in the kernel's bucket computation can
    never make the count wrong: the result is exactly the same count as a binary search.
    """
    key = ("search", surrogate, alpha, region, bits, device, dtype)
    if key not in _TABLES:
        with _real_tensors():
            _TABLES[key] = _build_search(surrogate, alpha, region, bits, device, dtype)
    return _TABLES[key]


def _build_search(surrogate, alpha, region, bits, device, dtype):
    q = quantizer(surrogate, alpha if SURROGATES[surrogate].has_alpha else None, region, bits)
    t = torch.tensor(q.thresholds, dtype=opmath(dtype)).double().numpy()  # as the kernels see them
    b = SEARCH_BUCKETS
    starts = np.zeros(b, dtype=np.int64)
    scan = len(t)
    if len(t) and t[-1] > t[0]:
        width = (t[-1] - t[0]) / b
        edges = t[0] + width * np.arange(b + 3, dtype=np.float64) - width  # left edge of j-1
        starts = np.searchsorted(t, edges[:b], side="left")  # #{t < left edge of bucket j-1}
        ends = np.searchsorted(t, edges[3:], side="right")  # #{t <= right edge of bucket j+1}
        scan = int((ends - starts).max())
    return torch.tensor([scan, *starts.tolist()], dtype=torch.int32, device=device)


def packed_size(numel: int, bits: int) -> int:
    per = 8 // bits
    return (numel + per - 1) // per


# ---------------------------------------------------------------------------------------------
# Reference implementation of the same quantisation (pure PyTorch): the oracle for the kernels.
# ---------------------------------------------------------------------------------------------
def encode_reference(
    x: torch.Tensor, thresholds: torch.Tensor, interval_codes: torch.Tensor, bits: int
) -> torch.Tensor:
    """Packed codes of x (any layout), exactly as the kernels compute them."""
    # contiguous: reshape(-1) of a strided 1-d view (x[::2]) is still strided, and bucketize
    # warns about (and copies) a non-contiguous input
    flat = x.detach().reshape(-1).to(thresholds.dtype).contiguous()
    interval = torch.bucketize(flat, thresholds.contiguous(), right=False)  # #{t : t < x}
    interval = torch.where(torch.isnan(flat), 0, interval)
    return pack(interval_codes.to(flat.device)[interval], bits)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    per = 8 // bits
    n = codes.numel()
    padded = torch.zeros(packed_size(n, bits) * per, dtype=torch.int32, device=codes.device)
    padded[:n] = codes.reshape(-1).to(torch.int32)
    shifts = torch.arange(per, device=codes.device, dtype=torch.int32) * bits
    return (padded.view(-1, per) << shifts).sum(dim=1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    per = 8 // bits
    shifts = torch.arange(per, device=packed.device, dtype=torch.int32) * bits
    codes = (packed.to(torch.int32).view(-1, 1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:numel].to(torch.int64)


def decode_reference(
    grad_y: torch.Tensor, packed: torch.Tensor, levels_t: torch.Tensor, bits: int
) -> torch.Tensor:
    """grad_y * levels[code], computed in the levels' (opmath) dtype."""
    codes = unpack(packed, bits, grad_y.numel()).view(grad_y.shape)
    return (grad_y.to(levels_t.dtype) * levels_t[codes]).to(grad_y.dtype)
