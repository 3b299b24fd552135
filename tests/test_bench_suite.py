"""The benchmark programs run before any GPU session needs them: the GPU suite script parses, names
only modules and files that exist, and every Python module it or ``make bench`` runs answers
``--help`` and finishes a ``--dry-run`` (CPU, tiny sizes) with the suite's own arguments.

The dry runs share this process (one torch import, not one per module): that keeps the file
under a minute on a 2-core machine."""

from __future__ import annotations

import importlib
import importlib.util
import io
import os
import shlex
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

from benchmarks import run

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"


def suite_commands(tmp_path: Path, steps: str = "") -> list[list[str]]:
    """The commands the suite would run, from its dry run (which runs nothing)."""
    env = dict(os.environ, OUT=str(tmp_path), SUITE_DRY_RUN="1", SUITE_STEPS=steps)
    if not steps:
        del env["SUITE_STEPS"]
    done = subprocess.run(["bash", str(SUITE)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "summary.md").read_text().count("| dry run |") == len(
        [ln for ln in done.stdout.splitlines() if ln.startswith("=== ") and "limit" in ln]
    )
    return [
        shlex.split(line.split("): ", 1)[1])
        for line in done.stdout.splitlines()
        if line.startswith("=== ") and "): " in line
    ]


def module_calls(commands: list[list[str]]) -> list[tuple[str, list[str]]]:
    """(module, arguments) of every ``python -m benchmarks.X ...`` among ``commands``."""
    out = []
    for cmd in commands:
        if "-m" in cmd and cmd[cmd.index("-m") + 1].startswith("benchmarks."):
            i = cmd.index("-m")
            out.append((cmd[i + 1], cmd[i + 2 :]))
    return out


def run_module(module: str, args: list[str]) -> tuple[int, str]:
    """``python -m module args`` in this process: (exit status, stdout)."""
    main = importlib.import_module(module).main
    threads = torch.get_num_threads()
    limits = (torch._dynamo.config.recompile_limit,
              torch._dynamo.config.accumulated_recompile_limit)  # fmt: skip
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            rc = main(args)
    except SystemExit as exc:
        rc = exc.code
    finally:  # what the benchmarks set for themselves
        torch.set_num_threads(threads)
        torch._dynamo.config.recompile_limit = limits[0]
        torch._dynamo.config.accumulated_recompile_limit = limits[1]
        torch._dynamo.reset()
    return rc or 0, out.getvalue()


def with_results(args: list[str], folder: Path) -> list[str]:
    args = list(args)
    if "--results" in args:
        args[args.index("--results") + 1] = str(folder)
    return args


def test_suite_script_parses_and_names_what_exists(tmp_path):
    assert subprocess.run(["bash", "-n", str(SUITE)]).returncode == 0
    commands = suite_commands(tmp_path)
    modules = {m for m, _ in module_calls(commands)}
    assert {"benchmarks.gpu_check", "benchmarks.compiled", "benchmarks.gpu_bandwidth"} <= modules
    assert {"benchmarks.memory", "benchmarks.micro"} <= modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module
    for cmd in commands:  # every path a command names (the tests folder, ...) exists
        for arg in cmd:
            if arg in ("tests", ".") or arg.startswith(("tests/", "benchmarks/")):
                assert (ROOT / arg).exists(), arg
    # SUITE_STEPS picks steps by letter
    chosen = [" ".join(c) for c in suite_commands(tmp_path / "cd", "c d")]
    assert len(chosen) == 3 and all("compute-sanitizer" in c for c in chosen[:2])
    assert "benchmarks.compiled" in chosen[2]


def test_every_module_answers_help():
    modules = {m for _, _, args, _ in run.steps(Path("r"), False, False) for m in args[1:2]}
    modules |= {"benchmarks.gpu_check", "benchmarks.gpu_bandwidth", "benchmarks.run"}
    for module in sorted(modules - {"pytest"}):
        rc, out = run_module(module, ["--help"])
        assert rc == 0 and "usage: " in out and "--dry-run" in out, (module, out[-500:])


def test_suite_modules_dry_run_with_the_suites_arguments(tmp_path):
    calls = module_calls(suite_commands(tmp_path / "suite"))
    seen = set()
    for i, (module, args) in enumerate(calls):
        if (module, tuple(args)) in seen:
            continue
        seen.add((module, tuple(args)))
        folder = tmp_path / f"{i}"
        rc, out = run_module(module, with_results(args, folder) + ["--dry-run"])
        assert rc == 0, (module, args, out[-3000:])
    written = {p.name for p in tmp_path.rglob("*.md")}
    assert {"compiled.md", "bandwidth.md", "memory.md", "micro.md"} <= written


def test_make_bench_dry_run(tmp_path):
    """``python -m benchmarks.run --dry-run``, each step in this process but the pytest one."""

    def launch(args: list[str], timeout_s: float) -> tuple[int, str]:
        module = args[1]
        if module == "pytest":
            done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True,
                                  text=True, timeout=timeout_s)  # fmt: skip
            return done.returncode, done.stdout
        return run_module(module, args[2:])

    with redirect_stdout(io.StringIO()):
        rc = run.main(["--dry-run", "--results", str(tmp_path)], launch=launch)
    report = (tmp_path / "REPORT.md").read_text()
    assert rc == 0, report[-5000:]
    for key, title, _, _ in run.steps(tmp_path, True, False):
        assert f"## {title}" in report, key
    assert "Failed steps" not in report and "passed" in report


@pytest.mark.parametrize("bad", [["--no-such-option"], ["--dry-run", "--results"]])
def test_bad_arguments_fail_loudly(bad):
    rc, _ = run_module("benchmarks.micro", bad)
    assert rc == 2
