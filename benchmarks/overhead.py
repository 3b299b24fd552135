"""Per-call cost of a training step through the module: SugarReLU against nn.ReLU (issue 12).

``python -m benchmarks.overhead [--quick]`` times forward + backward of ``SugarReLU`` and of
``nn.ReLU`` on small CPU tensors (2^10..2^16 elements, 1 and 2 threads), where a call's fixed
cost (Python, dispatcher, autograd) is a large part of its time. Each sample is the mean of a
batch of calls; samples of the two modules alternate (order swapped every sample) in one
process. Rows: exact mode (default B-SiLU surrogate), bits=8, bits=1 (NeLU, negative region) and
bits=8 in place against ``nn.ReLU(inplace=True)`` (both on a fresh non-leaf ``x * 1``, whose
multiplication both sides pay). Target: SugarReLU <= 1.5x nn.ReLU; verdicts by
``benchmarks.common.verdict``. Writes ``results/overhead.csv`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import sugar_kernels as sk

from . import START_LOAD
from .common import cpu_name, git_commit, machine_load_note, markdown_table, utc_now, verdict

RESULTS = Path(__file__).resolve().parent.parent / "results"
TARGET = 1.5
SIZES = (1 << 10, 1 << 12, 1 << 14, 1 << 16)
# name -> (our module, the baseline module, whether the input is a fresh non-leaf)
CONFIGS = {
    "exact bsilu": (lambda: sk.SugarReLU("bsilu"), lambda: nn.ReLU(), False),
    "bits=8 bsilu": (lambda: sk.SugarReLU("bsilu", bits=8), lambda: nn.ReLU(), False),
    "bits=1 nelu negative": (
        lambda: sk.SugarReLU("nelu", bits=1, region="negative"),
        lambda: nn.ReLU(),
        False,
    ),
    "bits=8 bsilu in place": (
        lambda: sk.SugarReLU("bsilu", bits=8, inplace=True),
        lambda: nn.ReLU(inplace=True),
        True,
    ),
}


def step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, fresh: bool):
    def run():
        module(x * 1 if fresh else x).backward(grad)

    return run


def sample(fn, batch: int) -> float:
    start = time.perf_counter()
    for _ in range(batch):
        fn()
    return (time.perf_counter() - start) / batch


def measure(ours, theirs, samples: int, batch: int) -> tuple[list[float], list[float]]:
    for fn in (ours, theirs):  # warm-up: allocator, tables, code paths
        sample(fn, batch)
    a, b = [], []
    gc.disable()  # a collection inside one sample would be charged to whichever module ran
    try:
        for i in range(samples):
            pairs = ((ours, a), (theirs, b)) if i % 2 == 0 else ((theirs, b), (ours, a))
            for fn, out in pairs:
                out.append(sample(fn, batch))
    finally:
        gc.enable()
    return a, b


def rows(threads_list, sizes, samples: int) -> list[dict]:
    out = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for n in sizes:
            x = torch.randn(n, requires_grad=True)
            grad = torch.randn(n)
            batch = max(4, (1 << 16) // n * 4)
            for name, (make_ours, make_theirs, fresh) in CONFIGS.items():
                ours, theirs = measure(
                    step(make_ours(), x, grad, fresh),
                    step(make_theirs(), x, grad, fresh),
                    samples,
                    batch,
                )
                q_o = statistics.quantiles(ours, n=5, method="inclusive")
                q_t = statistics.quantiles(theirs, n=5, method="inclusive")
                out.append(
                    {
                        "config": name,
                        "threads": threads,
                        "numel": n,
                        "ours_min_us": min(ours) * 1e6,
                        "ours_median_us": statistics.median(ours) * 1e6,
                        "relu_min_us": min(theirs) * 1e6,
                        "relu_median_us": statistics.median(theirs) * 1e6,
                        "ratio_min": min(ours) / min(theirs),
                        "ratio_median": statistics.median(ours) / statistics.median(theirs),
                        "ratio_p20_p80": f"{q_o[0] / q_t[3]:.2f}-{q_o[3] / q_t[0]:.2f}",
                        "verdict": verdict(ours, theirs, TARGET),
                    }
                )
                print(f"  {name}, {threads} thread(s), 2^{n.bit_length() - 1}", file=sys.stderr)
    return out


def markdown(records: list[dict]) -> str:
    headers = [
        "SugarReLU config",
        "threads",
        "elements",
        "ours min / median us",
        "nn.ReLU min / median us",
        "ratio (min)",
        "ratio (median)",
        "ratio p20-p80 range",
        "verdict (<= 1.5x)",
    ]
    rows = [
        [
            r["config"],
            r["threads"],
            f"2^{r['numel'].bit_length() - 1}",
            f"{r['ours_min_us']:.1f} / {r['ours_median_us']:.1f}",
            f"{r['relu_min_us']:.1f} / {r['relu_median_us']:.1f}",
            f"{r['ratio_min']:.2f}",
            f"{r['ratio_median']:.2f}",
            r["ratio_p20_p80"],
            r["verdict"],
        ]
        for r in records
    ]
    lines = [markdown_table(headers, rows, align="l" * len(headers))]
    counts = {v: sum(r["verdict"] == v for r in records) for v in ("met", "missed", "inconclusive")}
    lines += [
        "",
        f"met: {counts['met']}, missed: {counts['missed']}, inconclusive: "
        f"{counts['inconclusive']} (of {len(records)} rows). {machine_load_note() or ''}",
    ]
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples (~30 s)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    records = rows((1, 2), SIZES, samples=21 if args.quick else 61)
    args.results.mkdir(parents=True, exist_ok=True)
    with open(args.results / "overhead.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; torch {torch.__version__}; commit "
        f"{git_commit()}; {utc_now()}; load average at start {START_LOAD:.2f}\n"
    )
    print(markdown(records))
    return records


if __name__ == "__main__":
    main()
