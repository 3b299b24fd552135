"""CPU kernels against torch's own kernels for the same math (issue 12 targets).

``python -m benchmarks.cpu_ratios [--quick]`` times, per row, our compiled op and torch's kernel
for the same work, interleaved in one process (each repetition runs both, in alternating order),
and reports min / median / p20-p80 of each, the ratio ours / torch's and a verdict against the
row's target:

* ``met``: even the pessimistic ratio (our p80 / torch's p20) is within the target;
* ``missed``: even the optimistic ratio (our p20 / torch's p80) is above it;
* ``inconclusive``: the spreads straddle the target, or the machine was busy (1-minute load
  average above the core count) while the row ran.

Targets (CPU, this machine class):

* exact backward <= 1.1x torch's matching backward (``silu_backward`` for bsilu and silu,
  ``gelu_backward``, ``elu_backward`` for elu and selu, ``leaky_relu_backward``), 1 and 2 threads,
  2^20..2^24 elements, float32 and bfloat16;
* code-mode forward (bits 8/4/2/1, in place and not) <= 1.5x ``torch.relu`` (``relu_`` for in
  place); code-mode backward <= 1.2x ``threshold_backward`` (ReLU's backward);
* exact forward + backward below torch GELU's (``gelu`` + ``gelu_backward``) at 2^16..2^24 with 2
  threads.

All rows call the ops directly (``torch.ops.sugar.*`` and ``torch.ops.aten.*``): this compares
kernels, not the Python/autograd overhead of a call. Writes ``results/cpu_ratios.csv`` and
``results/cpu_ratios.md`` and prints the markdown table.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

import sugar_kernels as sk
from sugar_kernels import codes
from sugar_kernels.surrogates import resolve

from . import START_LOAD
from .common import verdict

RESULTS = Path(__file__).resolve().parent.parent / "results"

# surrogate -> (torch's kernel name, its backward for the same derivative)
SELU_SCALE, SELU_ALPHA = 1.0507009873554805, 1.6732632423543772
MATCHING_BACKWARD: dict[str, tuple[str, Callable]] = {
    "bsilu": ("aten.silu_backward", lambda g, x: torch.ops.aten.silu_backward(g, x)),
    "silu": ("aten.silu_backward", lambda g, x: torch.ops.aten.silu_backward(g, x)),
    "gelu": ("aten.gelu_backward", lambda g, x: torch.ops.aten.gelu_backward(g, x)),
    "elu": (
        "aten.elu_backward",
        lambda g, x: torch.ops.aten.elu_backward(g, 1.0, 1.0, 1.0, False, x),
    ),
    "selu": (
        "aten.elu_backward",
        lambda g, x: torch.ops.aten.elu_backward(g, SELU_ALPHA, SELU_SCALE, 1.0, False, x),
    ),
    "leaky_relu": (
        "aten.leaky_relu_backward",
        lambda g, x: torch.ops.aten.leaky_relu_backward(g, x, 0.01, False),
    ),
}


@dataclass
class Row:
    target: str  # which issue target the row checks
    what: str  # our op and its configuration
    reference: str  # torch's kernel
    dtype: str
    threads: int
    numel: int
    limit: float  # the target: ours / torch's <= limit (strictly below for "below")
    ours: list[float]  # seconds per repetition
    theirs: list[float]
    load: float  # 1-minute load average after the row

    def stats(self, times: list[float]) -> tuple[float, float, float, float]:
        q = statistics.quantiles(times, n=5, method="inclusive")  # p20, p40, p60, p80
        return min(times), statistics.median(times), q[0], q[3]

    def verdict(self) -> str:
        """``benchmarks.common.verdict``: the p20-p80 bands, the load when the run started."""
        return verdict(self.ours, self.theirs, self.limit)

    def record(self) -> dict:
        o_min, o_med, o20, o80 = self.stats(self.ours)
        t_min, t_med, t20, t80 = self.stats(self.theirs)
        return {
            "target": self.target,
            "ours": self.what,
            "torch": self.reference,
            "dtype": self.dtype,
            "threads": self.threads,
            "numel": self.numel,
            "ours_min_ms": o_min * 1e3,
            "ours_median_ms": o_med * 1e3,
            "ours_p20_ms": o20 * 1e3,
            "ours_p80_ms": o80 * 1e3,
            "torch_min_ms": t_min * 1e3,
            "torch_median_ms": t_med * 1e3,
            "torch_p20_ms": t20 * 1e3,
            "torch_p80_ms": t80 * 1e3,
            "ratio_min": o_min / t_min,
            "ratio_median": o_med / t_med,
            "ratio_p20_p80": f"{o20 / t80:.2f}-{o80 / t20:.2f}",
            "limit": self.limit,
            "verdict": self.verdict(),
            "load_avg": round(self.load, 2),
        }


def interleaved(ours: Callable, theirs: Callable, reps: int, setup: Callable | None = None):
    """Times both callables `reps` times each, alternating which runs first."""
    ours(), theirs()  # warm-up: allocator, page faults, code paths
    a, b = [], []
    for rep in range(reps):
        pair = ((ours, a), (theirs, b)) if rep % 2 == 0 else ((theirs, b), (ours, a))
        for fn, out in pair:
            if setup is not None:
                setup()
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return a, b


def reps_for(numel: int, quick: bool) -> int:
    base = 8 if quick else 25
    return max(5, base * (1 << 22) // max(numel, 1 << 20)) if numel < (1 << 22) else base


def inputs(numel: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(numel, generator=g).to(dtype)
    grad = torch.randn(numel, generator=g).to(dtype)
    return x, grad


def _sugar_fwd_bwd(x, grad):
    torch.ops.sugar.relu_forward(x, "bsilu", 1.67, "all")
    torch.ops.sugar.relu_backward(grad, x, "bsilu", 1.67, "all")


def _gelu_fwd_bwd(x, grad):
    torch.ops.aten.gelu(x)
    torch.ops.aten.gelu_backward(grad, x)


def exact_backward_rows(sizes, dtypes, threads, quick) -> list[Row]:
    rows = []
    for n in sizes:
        for dtype in dtypes:
            x, grad = inputs(n, dtype)
            for name, (ref_name, ref) in MATCHING_BACKWARD.items():
                _, alpha, _ = resolve(name, None, "all")
                ours, theirs = interleaved(
                    partial(torch.ops.sugar.relu_backward, grad, x, name, alpha, "all"),
                    partial(ref, grad, x),
                    reps_for(n, quick),
                )
                dt = str(dtype).replace("torch.", "")
                rows.append(
                    Row("exact backward <= 1.1x", f"relu_backward {name}", ref_name, dt, threads,
                        n, 1.1, ours, theirs, os.getloadavg()[0])
                )  # fmt: skip
    return rows


def code_rows(sizes, bits_list, threads, quick, surrogate="bsilu") -> list[Row]:
    rows = []
    for n in sizes:
        x, grad = inputs(n, torch.float32)
        y = torch.relu(x)
        work = torch.empty_like(x)
        for bits in bits_list:
            tables = codes.tables(surrogate, None, "all", bits, x.device, x.dtype)
            search = codes.search_table(surrogate, None, "all", bits, x.device, x.dtype)
            args = (*tables, search, bits)
            label = f"{surrogate} bits={bits}"
            reps = reps_for(n, quick)

            def row(target, what, ref, limit, timed, label=label, n=n):
                rows.append(Row(target, f"{what} {label}", ref, "float32", threads, n, limit,
                                *timed, os.getloadavg()[0]))  # fmt: skip

            timed = interleaved(
                partial(torch.ops.sugar.relu_forward_codes, x, *args), partial(torch.relu, x), reps
            )
            row("code forward <= 1.5x", "relu_forward_codes", "aten.relu", 1.5, timed)
            timed = interleaved(
                partial(torch.ops.sugar.relu_forward_codes_, work, *args),
                partial(torch.relu_, work),
                reps,
                setup=partial(work.copy_, x),  # fresh input for every in-place call
            )
            row("code forward <= 1.5x", "relu_forward_codes_ (in place)", "aten.relu_", 1.5, timed)
            _, packed = torch.ops.sugar.relu_forward_codes(x, *args)
            timed = interleaved(
                partial(torch.ops.sugar.relu_backward_codes, grad, packed, tables[0], bits),
                partial(torch.ops.aten.threshold_backward, grad, y, 0),
                reps,
            )
            row("code backward <= 1.2x", "relu_backward_codes", "aten.threshold_backward", 1.2,
                timed)  # fmt: skip
    return rows


def gelu_rows(sizes, threads, quick) -> list[Row]:
    rows = []
    for n in sizes:
        x, grad = inputs(n, torch.float32)
        ours, theirs = interleaved(
            partial(_sugar_fwd_bwd, x, grad), partial(_gelu_fwd_bwd, x, grad), reps_for(n, quick)
        )
        rows.append(
            Row("exact fwd+bwd < GELU's", "relu_forward + relu_backward bsilu",
                "aten.gelu + gelu_backward", "float32", threads, n, 1.0, ours, theirs,
                os.getloadavg()[0])
        )  # fmt: skip
    return rows


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header() -> str:
    info = sk.build_info()
    return (
        f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; torch {torch.__version__} "
        f"(kernels: {torch.backends.cpu.get_cpu_capability()}); sugar-kernels CPU build: "
        f"{info.get('cpu_capability', '?')} (runs {info.get('cpu_dispatch', '?')}); load average "
        f"at start {START_LOAD:.2f}"
    )


COLUMNS = [
    ("target", "target"),
    ("ours", "ours"),
    ("torch", "torch's kernel"),
    ("dtype", "dtype"),
    ("threads", "threads"),
    ("numel", "elements"),
    ("ours_min_ms", "ours min ms"),
    ("torch_min_ms", "torch min ms"),
    ("ratio_min", "ratio (min)"),
    ("ratio_median", "ratio (median)"),
    ("ratio_p20_p80", "ratio p20-p80 range"),
    ("verdict", "verdict"),
]


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if value < 10 else f"{value:.1f}"
    if isinstance(value, int) and value >= 1024 and value & (value - 1) == 0:
        return f"2^{value.bit_length() - 1}"
    return str(value)


def markdown(records: list[dict], head: str) -> str:
    lines = [head, "", "| " + " | ".join(title for _, title in COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    for r in records:
        lines.append("| " + " | ".join(fmt(r[key]) for key, _ in COLUMNS) + " |")
    counts = {v: sum(r["verdict"] == v for r in records) for v in ("met", "missed", "inconclusive")}
    lines += ["", ", ".join(f"{k}: {v}" for k, v in counts.items()) + f" (of {len(records)} rows)"]
    lines.append(
        "Ratio ranges are ours p20 / torch p80 .. ours p80 / torch p20; verdicts by "
        "benchmarks.common.verdict: 'met' needs the whole range below the target, 'missed' the "
        "whole range above it, and a machine loaded when the run started makes every row "
        "inconclusive."
    )
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repetitions (< 2 min)")
    ap.add_argument("--results", default=str(RESULTS), help="output folder (default results/)")
    args = ap.parse_args(argv)
    if not sk.build_info()["cpu_compiled"]:
        raise SystemExit("the compiled CPU kernels are missing: run `make install`")

    head = header()
    print(head, flush=True)
    big = [1 << 20, 1 << 22] if args.quick else [1 << 20, 1 << 22, 1 << 24]
    gelu_sizes = (
        [1 << 16, 1 << 20, 1 << 22] if args.quick else [1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24]
    )
    code_sizes = [1 << 22] if args.quick else [1 << 20, 1 << 22, 1 << 24]
    before = torch.get_num_threads()
    rows: list[Row] = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            rows += exact_backward_rows(big, (torch.float32, torch.bfloat16), threads, args.quick)
            rows += code_rows(code_sizes, (8, 4, 2, 1), threads, args.quick)
            print(f"threads={threads}: {len(rows)} rows so far", flush=True)
        torch.set_num_threads(2)
        rows += gelu_rows(gelu_sizes, 2, args.quick)
    finally:
        torch.set_num_threads(before)

    records = [r.record() for r in rows]
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "cpu_ratios.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    text = markdown(records, head)
    (out / "cpu_ratios.md").write_text(text)
    print(text)
    return records


if __name__ == "__main__":
    main()
