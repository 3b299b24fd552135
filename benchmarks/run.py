"""``make bench``: every benchmark in one command, written up in ``results/REPORT.md``.

    python -m benchmarks.run                 # quick micro on CPU, full sweep on a GPU
    python -m benchmarks.run --full          # full micro sweep on CPU too (long, ~15+ min)
    python -m benchmarks.run --skip-train --skip-stress
    python -m benchmarks.run --readme-figures benchmarks/figures   # refresh the README's figures

Steps, each in this process or as its own CLI, each result kept even if a later step fails:

1. micro-benchmarks (``benchmarks.micro``; ``--quick`` on CPU, the full sweep on a GPU), in this
   process: rows appended to ``results/micro.csv``, plot ``results/micro_<device>.png``, targets
   with met / missed / inconclusive verdicts (``benchmarks.common.verdict``);
2. then every entry of ``cli_steps()``, each ``python -m <module>`` in a child process whose
   stdout (Markdown) becomes its report section: the saved-memory table, the quick training
   comparison and its dying-ReLU stress variant (JSON, plots, ``results.md`` in
   ``results/train/`` and ``results/stress/``). New benchmarks are added there.

Progress goes to the terminal as each step runs. The exit status is non-zero when a step failed;
the report says which and why.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import sugar_kernels as sk

from . import START_LOAD, START_LOAD_ENV, micro
from .common import (
    RESULTS,
    ROOT,
    environment,
    machine_load_note,
    markdown_table,
    size_label,
)

REPORT_SIZES = {"cpu": None, "cuda": [1 << 20, 1 << 24, 1 << 26, 1 << 28]}  # None: all measured


@dataclass
class CliStep:
    """One ``python -m <module> <args>`` step of ``make bench``; its stdout is its report section.

    ``key`` names it in ``--skip-<key>``, ``--<key>-timeout``, the timings and the failures;
    ``figures`` are globs (relative to the results folder) of PNGs to embed after the output;
    ``readme_figures`` maps a produced file (relative to results) to its name in the README's
    figure folder (``--readme-figures``)."""

    key: str
    title: str
    module: str
    args: list[str] = field(default_factory=list)
    timeout_s: float = 600.0
    figures: list[str] = field(default_factory=list)
    readme_figures: dict[str, str] = field(default_factory=dict)


def cli_steps(results: Path) -> list[CliStep]:
    """The steps after the micro-benchmarks, in the order they run. Add a benchmark here."""

    def train(key: str, title: str, extra: list[str]) -> CliStep:
        folder = results / key
        return CliStep(
            key,
            title,
            "benchmarks.train",
            ["--quick", *extra, "--json", str(results / f"{key}.json"), "--out", str(folder)],
            timeout_s=900.0,
            figures=[f"{key}/*.png"],
            readme_figures={
                f"{key}/accuracy.png": f"{key}_accuracy.png",
                f"{key}/dead_units.png": f"{key}_dead_units.png",
            },
        )

    return [
        CliStep("memory", "Saved activation memory", "benchmarks.memory", timeout_s=600.0),
        train("train", "Training comparison (quick)", []),
        train("stress", "Training comparison, dying-ReLU stress (quick)", ["--stress"]),
        CliStep(
            "compiled",
            "SUGAR under torch.compile",
            "benchmarks.compiled",
            ["--quick", "--results", str(results)],
            timeout_s=1800.0,
        ),
        CliStep(
            "cpu_ratios",
            "CPU kernels against torch's kernels for the same math",
            "benchmarks.cpu_ratios",
            ["--quick", "--results", str(results)],
            timeout_s=600.0,
        ),
        CliStep(
            "overhead",
            "Per-call cost on small tensors: SugarReLU against nn.ReLU",
            "benchmarks.overhead",
            ["--quick", "--results", str(results)],
            timeout_s=300.0,
        ),
    ]


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def run_cli(args: list[str], timeout_s: float, log_path: Path) -> tuple[int, str, float]:
    """Run ``python -m ...`` here; its stdout is echoed live and returned, stderr (progress bars)
    passes through. Returns (exit status, stdout, seconds); 124 on timeout."""
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if START_LOAD is not None:  # the run's start load, not the child's (benchmarks/__init__.py)
        env[START_LOAD_ENV] = repr(START_LOAD)
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env
    )
    timed_out = threading.Event()

    def kill():
        timed_out.set()
        proc.kill()

    watchdog = threading.Timer(timeout_s, kill)
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            lines.append(line)
        proc.wait()
    finally:
        watchdog.cancel()
    out = "".join(lines)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(out)
    rc = 124 if timed_out.is_set() else proc.returncode
    return rc, out, time.perf_counter() - t0


def _display_args(args: list[str], results: Path) -> list[str]:
    """Arguments as a reader would type them: paths relative to the repository."""
    out = []
    for a in args:
        try:
            out.append(Path(a).resolve().relative_to(ROOT).as_posix())
        except ValueError:
            out.append(a)
    return out


def copy_figures(results: Path, dest: Path, names: dict[str, str]) -> None:
    """Copy ``results/<src>`` to ``dest/<name>`` for each (src, name) that exists."""
    dest.mkdir(parents=True, exist_ok=True)
    for src, name in names.items():
        if (results / src).exists():
            shutil.copyfile(results / src, dest / name)
            print(f"README figure: {dest / name}")


def micro_section(rows: list[dict], notes: list[str], plot_path: Path | None, device: str) -> str:
    parts = ["## Micro-benchmarks", ""]
    if not rows:
        return "\n".join(parts + ["No rows were measured.", ""])
    first = rows[0]
    quick = first["quick"] == "1" or first["quick"] == 1
    parts += [
        f"`python -m benchmarks.micro{' --quick' if quick else ''}` on **{first['device_name']}**"
        f" (torch {first['torch']}, triton {first['triton']}, commit `{first['commit']}`, "
        f"{first['time_utc']}, load average {first.get('load', '?')} at the start).",
        "",
        "Method: every provider runs the same bsilu SUGAR-or-baseline activation on the same "
        "N(0,1) input, in one process, interleaved in rounds; median and p20/p80 of per-call "
        "times (CPU: `perf_counter` around each call after warm-up; GPU: CUDA events around "
        "each call, L2 flushed before each). *forward* is a training forward "
        "(`x.requires_grad`), *backward* is `torch.autograd.grad(y, x, g, retain_graph=True)` "
        "on a graph built once, *full* is both. GB/s = bytes the kernel must move (docstring of "
        "`benchmarks/micro.py`) / median time; %copy = that / GB/s of `dst.copy_(x)` measured "
        "in the same group; x relu = median / `torch.relu`'s median in the same group. "
        "Every row is also in `results/micro.csv`.",
        "",
    ]
    if notes:
        parts += ["Notes from the run:", ""] + [f"- {n}" for n in notes] + [""]
    targets = micro.check_targets(rows)
    if targets:
        parts += [
            "Targets of issue 5 measurable here. *measured*: ratio of medians (in brackets: "
            "p20/p80 to p80/p20). *verdict* (`benchmarks.common.verdict`): **met** / **missed** "
            "only when the p20-p80 bands of the two providers (the baseline's scaled by the "
            "target) do not overlap and the machine was quiet when the run started; otherwise "
            "**inconclusive**: rerun on a quiet machine rather than read a verdict into it.",
            "",
            markdown_table(["target", "measured", "verdict"], targets, "lrl"),
            "",
        ]
    sizes = REPORT_SIZES.get(device)
    shown = [r for r in rows if sizes is None or int(r["numel"]) in sizes]
    if sizes is not None:
        parts += [
            f"Sizes shown: {', '.join(size_label(s) for s in sizes)} (all sizes in the "
            "CSV and the plot).",
            "",
        ]
    parts += [markdown_table(micro.TABLE_HEADERS, micro.table_rows(shown), micro.TABLE_ALIGN), ""]
    if plot_path:
        parts += [f"![micro-benchmarks]({plot_path.name})", ""]
    return "\n".join(parts)


def _demote_headings(markdown: str) -> str:
    """Nest a tool's own Markdown headings under this report's section heading."""
    lines = markdown.splitlines()
    return "\n".join("#" + ln if ln.startswith("#") else ln for ln in lines)


def cli_section(
    title: str,
    command: str,
    rc: int | None,
    out: str,
    seconds: float,
    missing: str | None = None,
    extra: str = "",
) -> str:
    parts = [f"## {title}", ""]
    if missing:
        return "\n".join(parts + [missing, ""])
    parts += [f"`{command}` ({seconds:.0f} s)", ""]
    if rc != 0:
        what = "timed out" if rc == 124 else f"failed with exit status {rc}"
        tail = "\n".join(out.strip().splitlines()[-30:])
        parts += [f"**This step {what}.** Last lines of its output:", "", "```", tail, "```", ""]
        return "\n".join(parts)
    parts += [_demote_headings(out.strip()), ""]
    if extra:
        parts += [extra, ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--full", action="store_true", help="full micro sweep even on CPU")
    ap.add_argument("--threads", type=int, default=None, help="passed to benchmarks.micro")
    ap.add_argument("--skip-micro", action="store_true")
    for step in cli_steps(RESULTS):
        ap.add_argument(f"--skip-{step.key}", action="store_true")
        ap.add_argument(
            f"--{step.key}-timeout", type=float, default=None, help=f"({step.timeout_s:.0f} s)"
        )
    ap.add_argument("--results", default=str(RESULTS), help="output folder (default results/)")
    ap.add_argument(
        "--readme-figures",
        default=None,
        metavar="DIR",
        help="also copy the figures the README embeds into DIR (benchmarks/figures)",
    )
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")).type
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    failures: list[str] = []
    sections: list[str] = []
    timings: dict[str, float] = {}

    # 1. micro-benchmarks, in this process
    if not args.skip_micro:
        print("=== micro-benchmarks", flush=True)
        quick = device == "cpu" and not args.full
        plot_path = results / f"micro_{device}.png"
        notes: list[str] = []

        def log(msg: str) -> None:
            print(msg, flush=True)
            if not msg.startswith(("[", "providers:", "device:")):
                notes.append(msg)

        margv = ["--device", device, "--csv", str(results / "micro.csv"), "--plot", str(plot_path)]
        margv += ["--quick"] if quick else []
        margv += ["--threads", str(args.threads)] if args.threads else []
        t_micro = time.perf_counter()
        try:
            rows = micro.main(margv, log=log)
        except Exception as exc:  # keep going: the other steps still run and the report says so
            rows = []
            failures.append("micro")
            notes.append(f"micro-benchmarks failed: {type(exc).__name__}: {exc}")
        timings["micro"] = time.perf_counter() - t_micro
        sections.append(
            micro_section(rows, notes, plot_path if plot_path.exists() else None, device)
        )
        if args.readme_figures and rows:
            copy_figures(results, Path(args.readme_figures), {plot_path.name: plot_path.name})

    # 2. every other step, each as its own process
    for step in cli_steps(results):
        if getattr(args, f"skip_{step.key}"):
            continue
        print(f"\n=== {step.title}", flush=True)
        if not _module_exists(step.module):
            print(f"{step.module} does not exist: skipped")
            missing = f"`{step.module}` does not exist."
            sections.append(cli_section(step.title, "", None, "", 0, missing=missing))
            continue
        timeout = getattr(args, f"{step.key}_timeout") or step.timeout_s
        rc, out, secs = run_cli(
            ["-m", step.module, *step.args], timeout, results / f"{step.key}.md"
        )
        timings[step.key] = secs
        if rc != 0:
            failures.append(step.key)
        pngs = sorted(p for pattern in step.figures for p in results.glob(pattern))
        extra = "\n\n".join(f"![{p.stem}]({p.relative_to(results).as_posix()})" for p in pngs)
        display = " ".join(["python -m", step.module, *_display_args(step.args, results)])
        sections.append(cli_section(step.title, display, rc, out, secs, extra=extra))
        if args.readme_figures and rc == 0:
            copy_figures(results, Path(args.readme_figures), step.readme_figures)

    elapsed = time.perf_counter() - t_start
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    info = sk.build_info()
    built = ", ".join(k for k in ("cpu_compiled", "cuda_compiled") if info.get(k)) or "none"
    head = [
        "# sugar-kernels benchmark report",
        "",
        f"Generated by `python -m benchmarks.run` (`make bench`) at {env['time_utc']} in "
        f"{elapsed:.0f} s ({steps}).",
        "",
        markdown_table(
            ["", ""],
            [
                ["machine", env["device_name"]],
                ["device", device],
                ["torch", env["torch"] + (f" (CUDA {env['cuda']})" if env["cuda"] else "")],
                ["triton", env["triton"]],
                ["commit", f"`{env['commit']}`"],
                [
                    "compiled kernels",
                    f"{built}; backends on {device}: {', '.join(sk.available_backends(device))}",
                ],
                ["load average at start", f"{env['load']} on {os.cpu_count()} CPUs"],
            ],
            "ll",
        ),
        "",
    ]
    load_note = machine_load_note(float(env["load"])) if env["load"] else None
    if load_note:
        head += [f"**{load_note[0].upper()}{load_note[1:]}.**", ""]
    if failures:
        head += [f"**Failed steps: {', '.join(failures)}** (see their sections).", ""]
    report = results / "REPORT.md"
    report.write_text("\n".join(head + sections))
    print(
        f"\nbenchmarks took {elapsed:.0f} s ({steps}); report: {report}"
        + (f" (FAILED: {', '.join(failures)})" if failures else "")
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
