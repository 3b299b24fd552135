"""`make bench`: every benchmark, one child process each, written up in results/REPORT.md.

    python -m benchmarks.run                  # quick sizes on CPU (~10 min on 2 cores)
    python -m benchmarks.run --dry-run        # every step in seconds: checks that all run
    python -m benchmarks.run --only micro,memory
    python -m benchmarks.run --full           # full sweeps (long)

Steps: micro (benchmarks.micro), memory (saved bytes, code-mode errors), train and stress (quick
training comparisons, JSON and plots in results/train/ and results/stress/), compiled (train
steps under torch.compile), cpu_ratios (our CPU kernels against torch's, and the per-call cost
of SugarReLU), pytest (the pytest-benchmark suite, benchmarks/test_bench_cpu.py, saved for
``pytest --benchmark-compare``). Each step's stdout (Markdown) is its report section; a step that
fails or times out is reported and the others still run. Exit status 1 if any step failed.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .common import (
    ROOT,
    busy_note,
    command_line,
    environment,
    others_now,
    parser,
    stamp_line,
)

PYTEST_STORAGE = "pytest-benchmark"  # under the results folder: the history compare reads


def steps(results: Path, dry_run: bool, full: bool) -> list[tuple[str, str, list[str], float]]:
    """(key, title, arguments of `python`, timeout in seconds), in the order they run."""
    dry = ["--dry-run"] if dry_run else []
    size, out = dry or ([] if full else ["--quick"]), ["--results", str(results)]

    def bench(module: str, *args: str) -> list[str]:
        return ["-m", f"benchmarks.{module}", *args, *out]

    def train(key: str, *extra: str) -> list[str]:
        folder = ["--out", str(results / key), "--json", str(results / f"{key}.json")]
        return ["-m", "benchmarks.train", *(dry or ["--quick"]), *extra, *folder]

    pytest = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks/test_bench_cpu.py"]
    if dry_run:
        pytest += ["--benchmark-disable"]
    else:
        pytest += ["--benchmark-only", "--benchmark-columns=min,median,iqr,rounds"]
        pytest += [f"--benchmark-json={results / 'pytest-benchmark.json'}", "--benchmark-autosave"]
        pytest += [f"--benchmark-storage={results / PYTEST_STORAGE}"]
    return [
        ("micro", "Micro-benchmarks", bench("micro", *size), 900),
        ("memory", "Activation memory", bench("memory", *dry), 600),
        ("train", "Training comparison (quick)", train("train"), 900),
        ("stress", "Training comparison, dying-ReLU stress", train("stress", "--stress"), 900),
        ("compiled", "Under torch.compile", bench("compiled", *size), 1800),
        (
            "cpu_ratios",
            "CPU: our kernels and modules against torch's",
            bench("cpu_ratios", *size),
            900,
        ),
        ("pytest", "pytest-benchmark suite", pytest, 600),
    ]


def run_child(args: list[str], timeout_s: float) -> tuple[int, str]:
    """Run ``python ARGS`` from the repository root, echoing its stdout live; (status, stdout),
    status 124 when it timed out."""
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    timed_out = threading.Event()
    watchdog = threading.Timer(timeout_s, lambda: (timed_out.set(), proc.kill()))
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            lines.append(line)
        proc.wait()
    finally:
        watchdog.cancel()
    return (124 if timed_out.is_set() else proc.returncode), "".join(lines)


def section(title: str, command: str, rc: int, out: str, seconds: float) -> str:
    parts = [f"## {title}", "", f"`{command}` ({seconds:.0f} s)", ""]
    if rc != 0:
        what = "timed out" if rc == 124 else f"failed with exit status {rc}"
        tail = "\n".join(out.strip().splitlines()[-30:])
        return "\n".join(parts + [f"**This step {what}.** Its last lines:", "", "```", tail, "```"])
    if command.startswith("python -m pytest"):
        return "\n".join(parts + ["```", out.strip(), "```"])
    demoted = ["#" + ln if ln.startswith("#") else ln for ln in out.strip().splitlines()]
    return "\n".join(parts + demoted)


def main(argv=None, launch: Callable[[list[str], float], tuple[int, str]] = run_child) -> int:
    ap = parser("benchmarks.run", __doc__)
    ap.add_argument("--full", action="store_true", help="full sweeps instead of --quick")
    ap.add_argument("--only", default=None, help="comma list of steps to run")
    ap.add_argument("--skip", default="", help="comma list of steps to leave out")
    args = ap.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    start, before = time.perf_counter(), others_now(1.0)
    print(busy_note(before, "in the second before the run"), flush=True)
    failures, sections, timings = [], [], []
    for key, title, child, timeout_s in steps(args.results, args.dry_run, args.full):
        if (args.only and key not in args.only.split(",")) or key in args.skip.split(","):
            continue
        print(f"\n=== {title}", flush=True)
        t0 = time.perf_counter()
        rc, out = launch(child, timeout_s)
        seconds = time.perf_counter() - t0
        timings.append(f"{key} {seconds:.0f} s")
        failures += [key] if rc != 0 else []
        shown = [a.replace(str(ROOT) + "/", "") for a in child]
        sections.append(section(title, " ".join(["python", *shown]), rc, out, seconds))
    elapsed = time.perf_counter() - start
    stamp = stamp_line(environment("cpu"))
    head = ["# sugar-kernels benchmark report", ""]
    head += [f"`{command_line('benchmarks.run', argv)}` (`make bench`) on {stamp}: {elapsed:.0f} s"]
    head += [f"({', '.join(timings)}).", "", busy_note(before, "in the second before the run")]
    head += ["(each step measures again while it times).", ""]
    if failures:
        head += [f"**Failed steps: {', '.join(failures)}** (see their sections).", ""]
    report = args.results / "REPORT.md"
    report.write_text("\n".join(head) + "\n" + "\n\n".join(sections) + "\n")
    failed = f" (FAILED: {', '.join(failures)})" if failures else ""
    print(f"\nbenchmarks took {elapsed:.0f} s; report: {report}{failed}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
