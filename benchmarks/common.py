"""What every benchmark shares: the targets, the quiet-machine gate, verdicts, the one timing loop,
saved-memory accounting, the machine's stamp and output helpers.

Timing, the same for every provider: on the CPU ``perf_counter_ns`` around each call (or batch
of calls, for calls of microseconds) after warm-up, garbage collection off; on a GPU CUDA events
around each call with the L2 cache flushed before it (``triton.testing.do_bench``'s method, by
hand so that in-place providers get a ``setup`` outside the timed region). ``interleaved`` runs
the cases of a group in rounds, rotating their order, so drift of the machine hits all alike.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import importlib.metadata
import importlib.util
import math
import os
import platform
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
L2_FLUSH_BYTES = 256 * 1024 * 1024

# --------------------------------------------------------------------------- targets

# Every target a benchmark judges, in one place. Times: "ours <= limit x baseline". Bandwidth:
# "ours >= limit % of the copy". Memory: "ours <= limit x baseline" in bytes (or batch sizes).
TARGETS: dict[str, tuple[str, float]] = {
    "micro.cpu.gelu": ("CPU f32 2^22 fwd+bwd: sugar_cpu <= torch_gelu", 1.0),
    "micro.cpu.paper": ("CPU f32 2^22 fwd+bwd: sugar_cpu <= 0.5x paper", 0.5),
    "micro.cpu.relu": ("CPU f32 2^22 fwd+bwd (stretch): sugar_cpu <= 1.3x torch_relu", 1.3),
    "micro.gpu.relu": ("GPU fwd+bwd: sugar <= 1.1x torch_relu", 1.1),
    "micro.gpu.b8_relu": ("GPU fwd+bwd: sugar bits=8 in place <= torch_relu", 1.0),
    "micro.gpu.paper": ("GPU fwd+bwd: sugar <= 1/3 x paper", 1 / 3),
    "micro.gpu.paper_compiled": ("GPU fwd+bwd: sugar <= paper_compiled", 1.0),
    "triton_vs_cuda": ("Triton within 10% of CUDA", 1.1),
    "bandwidth.exact": ("exact forward/backward >= 90% of copy bandwidth", 90.0),
    "bandwidth.codes": ("code modes >= 85% of copy bandwidth", 85.0),
    "bandwidth.b8_relu": ("bits=8 in place fwd+bwd <= stock ReLU fwd+bwd", 1.0),
    "cpu.exact_backward": ("exact backward <= 1.1x torch's matching backward", 1.1),
    "cpu.code_forward": ("code forward <= 1.5x torch.relu", 1.5),
    "cpu.code_backward": ("code backward <= 1.2x threshold_backward", 1.2),
    "cpu.gelu": ("exact fwd+bwd <= torch GELU's", 1.0),
    "cpu.per_call": ("SugarReLU fwd+bwd <= 1.5x nn.ReLU", 1.5),
    "compiled.relu": ("compiled step <= 1.05x compiled ReLU", 1.05),
    "compiled.paper": ("compiled step <= compiled paper formula", 1.0),
    "compiled.saved": ("code modes: saved bytes <= 1.15x compiled ReLU's", 1.15),
    "memory.peak": ("bits=8 in place: peak train memory <= 1.10x ReLU(inplace)", 1.10),
    "memory.batch_relu": ("largest batch under the cap >= 0.95x ReLU's", 0.95),
    "memory.batch_gelu": ("largest batch under the cap > GELU's", 1.0),
}


# --------------------------------------------------------------------------- quiet-machine gate

# A timing taken while other processes use the CPUs says little (on 2 cores one busy neighbour
# doubled some medians). The gate measures what OTHER processes use: the machine's busy CPU time
# (/proc/stat) minus the CPU time of this process and its descendants (/proc/<pid>/stat), over
# the same window. Our own work never counts: not the benchmark, not Inductor's compile workers,
# not a build that finished before (a load average counts all three).
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def busy_threshold(cores: int | None = None) -> float:
    """Cores' worth of CPU that others may use before timings count as disturbed."""
    return max(0.25, (cores or os.cpu_count() or 1) / 16)


def _machine_busy_ticks() -> int:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields)
    return user + nice + system + irq + softirq + steal  # steal: another VM ran on our core


def tree_ticks(root: int | None = None) -> int:
    """CPU ticks used by process ``root`` (default: this one) and all its live descendants,
    including the reaped children each of them has waited for (cutime, cstime)."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        rest = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
        pid = int(entry.name)
        children.setdefault(int(rest[1]), []).append(pid)
        ticks[pid] = sum(int(v) for v in rest[11:15])  # utime stime cutime cstime
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += children.get(pid, [])
    return total


WINDOW_S = 0.5  # shortest window the gate judges: /proc counts in ticks of 10 ms
_HISTORY: list[tuple[float, int, int]] = []  # (time, machine busy ticks, own tree's ticks)


def _snapshot() -> tuple[float, int, int] | None:
    try:
        snap = (time.perf_counter(), _machine_busy_ticks(), tree_ticks())
    except (OSError, ValueError):  # not Linux: nothing to measure
        return None
    _HISTORY.append(snap)
    return snap


class CpuWindow:
    """Measures the cores other processes kept busy from its creation to ``others()``."""

    def __init__(self):
        self.start = _snapshot()

    def others(self) -> float | None:
        """Average number of cores used by other processes over the window, widened backwards
        (to an earlier snapshot of this process) or waited out to at least WINDOW_S seconds."""
        end = _snapshot()
        if self.start is None or end is None:
            return None
        older = [s for s in _HISTORY if s[0] <= end[0] - WINDOW_S]
        start = min(self.start, older[-1]) if older else self.start
        if end[0] - start[0] < WINDOW_S:
            time.sleep(WINDOW_S - (end[0] - start[0]))
            end = _snapshot()
        busy, own = end[1] - start[1], end[2] - start[2]
        return max(0.0, busy - own) / CLOCK_TICKS / (end[0] - start[0])


def others_now(window_s: float = 0.5) -> float | None:
    """Cores other processes use, measured over ``window_s`` seconds while this one sleeps."""
    w = CpuWindow()
    time.sleep(window_s)
    return w.others()


def worst(readings) -> float | None:
    """The highest of several gate readings (None: none measured)."""
    return max((r for r in readings if r is not None), default=None)


def is_busy(others: float | None) -> bool:
    return others is not None and others > busy_threshold()


def busy_note(others: float | None, when: str = "while timing") -> str:
    """One line on the gate's reading, for every report."""
    if others is None:
        return "other processes' CPU use: unknown (no /proc); verdicts are not gated"
    state = "BUSY: every verdict is 'inconclusive'" if is_busy(others) else "quiet"
    return (
        f"other processes used {others:.2f} of {os.cpu_count()} cores {when} "
        f"(threshold {busy_threshold():.2f}): {state}"
    )


# --------------------------------------------------------------------------- verdicts


def spread(samples: Sequence[float]) -> tuple[float, float, float]:
    """(p20, median, p80) of ``samples``."""
    p20, p50, p80 = np.percentile(np.asarray(samples, dtype=float), [20, 50, 80])
    return float(p20), float(p50), float(p80)


def verdict_from_quantiles(ours, baseline, limit: float, *, others: float | None) -> str:
    """``verdict`` on (p20, median, p80) summaries (e.g. read back from a CSV)."""
    if is_busy(others) or any(not math.isfinite(v) or v <= 0 for v in (*ours, *baseline)):
        return "inconclusive"
    o20, _, o80 = ours
    b20, _, b80 = (limit * v for v in baseline)
    if o80 < b20:  # even ours' slow calls beat the target's fast ones
        return "met"
    if o20 > b80:
        return "missed"
    return "inconclusive"  # the bands overlap: the repetitions cannot separate the two


def verdict(ours: Sequence[float], baseline: Sequence[float], limit: float, *, others) -> str:
    """Judge "time(ours) <= limit x time(baseline)" from per-call times taken interleaved.

    "met" when ours' p80 is below the scaled baseline's p20, "missed" when ours' p20 is above its
    p80; "inconclusive" when the bands overlap (the spread is wider than the difference), when a
    list is empty or holds a non-positive or non-finite time, or when other processes kept the
    CPUs busy while the times were taken (``others``: cores, from ``CpuWindow``)."""
    if not len(ours) or not len(baseline):
        return "inconclusive"
    return verdict_from_quantiles(spread(ours), spread(baseline), limit, others=others)


# --------------------------------------------------------------------------- timing


@dataclass
class Stats:
    """Per-call times in seconds."""

    samples: list[float] = field(default_factory=list)

    @property
    def reps(self) -> int:
        return len(self.samples)

    def ms(self, q: float) -> float:
        return float(np.percentile(self.samples, q)) * 1e3 if self.samples else math.nan

    @property
    def median_ms(self) -> float:
        return self.ms(50)


@dataclass
class Case:
    """One thing to time: ``fn(*setup())``; ``setup`` (optional) runs outside the timed region."""

    name: str
    fn: Callable
    setup: Callable[[], tuple] | None = None


@dataclass
class Timings:
    stats: dict[str, Stats]
    errors: dict[str, str]  # case name -> why it could not run
    others: float | None  # cores other processes used while these were timed


class Timer:
    """Times calls on one device (see the module docstring for the method)."""

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self._flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=self.device)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time(self, case: Case, reps: int, batch: int = 1) -> list[float]:
        """Seconds per call of ``reps`` samples, each the mean of ``batch`` calls."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            if self.cuda:
                return self._gpu(case, reps, batch)
            return [self._one(case, batch) for _ in range(reps)]
        finally:
            if enabled:
                gc.enable()

    @staticmethod
    def _one(case: Case, batch: int) -> float:
        args = case.setup() if case.setup is not None else ()
        t0 = time.perf_counter_ns()
        for _ in range(batch):
            result = case.fn(*args)
        t1 = time.perf_counter_ns()
        del result, args
        return (t1 - t0) * 1e-9 / batch

    def _gpu(self, case: Case, reps: int, batch: int) -> list[float]:
        events = [[torch.cuda.Event(enable_timing=True) for _ in range(2)] for _ in range(reps)]
        for start, end in events:
            args = case.setup() if case.setup is not None else ()
            self._flush.zero_()
            start.record()
            for _ in range(batch):
                result = case.fn(*args)
            end.record()
            del result, args
        torch.cuda.synchronize(self.device)
        return [s.elapsed_time(e) * 1e-3 / batch for s, e in events]


def interleaved(
    timer: Timer,
    cases: Sequence[Case],
    *,
    target_s: float = 0.2,
    min_reps: int = 7,
    max_reps: int = 200,
    rounds: int | None = 5,
    max_case_s: float = math.inf,
    batch: int = 1,
    warmup: int = 3,
) -> Timings:
    """Time ``cases`` side by side: the one timing loop of every benchmark.

    Each case is warmed up, its per-call time estimated, and given ``clamp(target_s / estimate,
    min_reps, max_reps)`` samples (fewer, but at least 3, if that would take longer than
    ``max_case_s``), split evenly over ``rounds`` rounds (None: one sample per round, so the cases
    alternate sample by sample); within a round every case runs its share, the order of the
    cases rotated from round to round. A case that raises during warm-up
    is reported in ``errors`` and left out. The gate's reading covers the whole call."""
    window = CpuWindow()
    errors: dict[str, str] = {}
    reps: dict[str, int] = {}
    for case in cases:
        try:
            est = timer.time(case, warmup, batch)
            timer.sync()
        except Exception as exc:  # a provider that cannot run this dtype/size: report, go on
            errors[case.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            continue
        per_sample = max(float(np.median(est)) * batch, 1e-7)
        n = int(min(max_reps, max(min_reps, round(target_s / per_sample))))
        too_long = n * per_sample > max_case_s
        reps[case.name] = max(3, int(max_case_s / per_sample)) if too_long else n
    live = [c for c in cases if c.name in reps]
    stats = {c.name: Stats() for c in live}
    rounds = max(1, rounds or max(reps.values(), default=1))
    for r in range(rounds):
        shift = r % len(live) if live else 0
        for case in live[shift:] + live[:shift]:
            share = math.ceil(reps[case.name] / rounds)
            stats[case.name].samples += timer.time(case, share, batch)
    timer.sync()
    return Timings(stats, errors, window.others())


# --------------------------------------------------------------------------- saved memory


def saved_bytes(forward: Callable[[], torch.Tensor], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes autograd keeps for backward once ``forward()`` has built its graph: the storages of
    the saved tensors still held by the graph when ``forward`` returns, each counted once (in-place
    ops share one), storages of ``exclude`` (parameters) not counted.

    The pack hook hands autograd a detached alias of each saved tensor and keeps a weak reference
    to it, so tensors saved by a node that is freed during the forward (``relu(x).detach()``
    frees relu's node) are not counted. Returning the tensor itself would make a cycle
    output -> grad_fn -> saved output that no garbage collector sees, leaking every graph."""
    skip = {p.untyped_storage().data_ptr() for p in exclude}
    entries: list[tuple[tuple[str, int], int, weakref.ref]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        alias = t.detach()
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
            return alias
        if st.data_ptr() not in skip:
            entries.append(((str(t.device), st.data_ptr()), st.nbytes(), weakref.ref(alias)))
        return alias

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    alive = {key: nbytes for key, nbytes, ref in entries if ref() is not None}
    del out
    return sum(alive.values())


def swap_relu(model: torch.nn.Module, factory: Callable) -> torch.nn.Module:
    """Replace every nn.ReLU of ``model`` with ``factory()``, in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.ReLU):
                setattr(parent, name, factory())
    return model


def peak_mib(step: Callable[[], object], device: str) -> float | None:
    """CUDA's peak allocation during one ``step()`` above what was allocated before it, in MiB;
    None on the CPU."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# --------------------------------------------------------------------------- the machine


def git_commit() -> str:
    """Short commit of the working tree, '+dirty' when it has changes; 'unknown' without git."""

    def git(*args):
        run = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return run.stdout.strip() if run.returncode == 0 else "unknown"

    dirty = git("status", "--porcelain", "--untracked-files=no") not in ("", "unknown")
    return os.environ.get("SUGAR_COMMIT") or git("rev-parse", "--short", "HEAD") + "+dirty" * dirty


def device_name(device: str | torch.device) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")]
    name = names[0] if names else platform.processor() or platform.machine()
    return f"{name} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def environment(device: str | torch.device) -> dict[str, str]:
    """The stamp of every CSV row and report."""
    triton = importlib.util.find_spec("triton")
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "time_utc": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "triton": importlib.metadata.version("triton") if triton else "none",
        "cuda": str(torch.version.cuda) if torch.device(device).type == "cuda" else "",
    }


def stamp_line(env: dict[str, str]) -> str:
    cuda = f", CUDA {env['cuda']}" if env["cuda"] else ""
    return (
        f"{env['device_name']}; torch {env['torch']}, triton {env['triton']}{cuda}; "
        f"commit `{env['commit']}`; {env['time_utc']}"
    )


def header(module: str, argv, env: dict[str, str], others: float | None) -> list[str]:
    """The first lines of a report: the command, the machine, the gate's reading."""
    return [f"`{command_line(module, argv)}` on {stamp_line(env)}.", "", busy_note(others), ""]


def code_args(surrogate: str, bits: int, device, dtype, alpha=None, region="all") -> tuple:
    """The table arguments of the code ops (``torch.ops.sugar.relu_*codes*``) after ``x``."""
    from sugar_kernels import code_tables as codes

    key = (surrogate, alpha, region, bits, torch.device(device), dtype)
    return (*codes.tables(*key), codes.search_table(*key), bits)


# --------------------------------------------------------------------------- command line, output


def parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The arguments every benchmark takes: ``--dry-run`` and ``--results``."""
    ap = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU, tiny sizes, seconds: checks that everything runs; its numbers mean nothing",
    )
    ap.add_argument("--results", type=Path, default=RESULTS, help="output folder (results/)")
    return ap


def pick_device(requested: str | None, dry_run: bool) -> str:
    if dry_run:
        return "cpu"
    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is available")
    return device


def log(msg: str) -> None:
    """Progress goes to stderr: stdout carries only a benchmark's report."""
    print(msg, file=sys.stderr, flush=True)


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that reproduces a run, as reports print it."""
    return " ".join(["python -m", module, *(sys.argv[1:] if argv is None else argv)])


def write_report(results: Path, name: str, text: str) -> None:
    """Print a benchmark's Markdown report and keep it as ``<results>/<name>.md``."""
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.md").write_text(text + "\n")
    print(text)


def write_csv(path: Path, rows: list[dict], fields: Sequence[str] | None = None) -> None:
    """Write ``rows`` to ``path`` (a new file each run; results/ holds the latest run)."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields or rows[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence], align: str = "") -> str:
    """A GitHub-flavoured Markdown table; ``align`` is a string of 'l'/'r' per column."""
    align = align or "l" + "r" * (len(headers) - 1)
    lines = ["| " + " | ".join(str(h) for h in headers) + " |"]
    lines.append("| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value) -> str:
    """Floats to 3 significant digits, '-' for None and NaN; the rest as str()."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if not isinstance(value, float) or value == 0:
        return str(value)
    return f"{value:.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"


def size_label(n: int) -> str:
    """2^k for powers of two, else the number."""
    return f"2^{n.bit_length() - 1}" if n > 0 and n & (n - 1) == 0 else str(n)


def parse_sizes(text: str) -> list[int]:
    """'16,20,22' (exponents), '12:24' (an exponent range; '28:16' runs largest first), or
    counts above 64 ('1000003'); measured in the order given."""
    out: list[int] = []
    for part in filter(None, text.replace(" ", "").split(",")):
        if ":" in part:
            lo, hi = (int(v) for v in part.split(":"))
            step = 1 if lo <= hi else -1
            out += [1 << k for k in range(lo, hi + step, step)]
        else:
            v = int(part)
            out.append(1 << v if v <= 64 else v)
    return out
