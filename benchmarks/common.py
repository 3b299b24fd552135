"""Timing and bookkeeping shared by the benchmarks.

Timing method (the same for every provider, so numbers are comparable side by side):

* CPU: ``time.perf_counter_ns`` around each single call, after warm-up calls; garbage collection
  is off while timing; anything a call needs prepared (a fresh input for an in-place op) is made
  by ``setup`` outside the timed region.
* GPU: one pair of CUDA events around each single call, recorded on the current stream, with the
  L2 cache flushed (a 256 MB buffer zeroed) before every call, outside the events; all events are
  read after one synchronisation. This is what ``triton.testing.do_bench`` does, done here by hand
  because in-place providers need a per-call ``setup`` and because providers are interleaved.
* ``interleaved`` runs every case of a group in rounds (case order rotated each round), so slow
  drift of the machine (other jobs, clocks, temperature) hits every provider alike.

Summary statistics are the median and the 20th/80th percentiles of the per-call times.
"""

from __future__ import annotations

import csv
import datetime as _dt
import gc
import math
import os
import platform
import subprocess
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import START_LOAD

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
L2_FLUSH_BYTES = 256 * 1024 * 1024


# --------------------------------------------------------------------------- statistics


@dataclass
class Stats:
    """Per-call times in seconds and their summary."""

    samples: list[float] = field(default_factory=list)

    @property
    def reps(self) -> int:
        return len(self.samples)

    def quantile_ms(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.samples), q)) * 1e3 if self.samples else math.nan

    @property
    def median_ms(self) -> float:
        return self.quantile_ms(50)

    @property
    def p20_ms(self) -> float:
        return self.quantile_ms(20)

    @property
    def p80_ms(self) -> float:
        return self.quantile_ms(80)


def gbps(nbytes: float, ms: float) -> float:
    """Effective bandwidth in GB/s (10^9 bytes per second)."""
    return nbytes / (ms * 1e-3) / 1e9 if ms and ms > 0 else math.nan


# --------------------------------------------------------------------------- timers

Setup = Callable[[], tuple] | None


class Timer:
    """Times single calls on one device (see the module docstring for the method)."""

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._flush = None
        if self.cuda:
            self._flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=self.device)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable, setup: Setup = None, reps: int = 1) -> list[float]:
        """Seconds taken by each of ``reps`` calls ``fn(*setup())``."""
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return (
                self._time_cuda(fn, setup, reps) if self.cuda else self._time_cpu(fn, setup, reps)
            )
        finally:
            if gc_was_enabled:
                gc.enable()

    @staticmethod
    def _time_cpu(fn, setup, reps):
        out = []
        clock = time.perf_counter_ns
        for _ in range(reps):
            args = setup() if setup is not None else ()
            t0 = clock()
            result = fn(*args)
            t1 = clock()
            del result, args
            out.append((t1 - t0) * 1e-9)
        return out

    def _time_cuda(self, fn, setup, reps):
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            args = setup() if setup is not None else ()
            self._flush.zero_()
            starts[i].record()
            result = fn(*args)
            ends[i].record()
            del result, args
        torch.cuda.synchronize(self.device)
        return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]


@dataclass
class Case:
    """One thing to time: ``fn(*setup())``; ``setup`` (optional) runs outside the timed region."""

    name: str
    fn: Callable
    setup: Setup = None


def interleaved(
    timer: Timer,
    cases: Sequence[Case],
    *,
    target_s: float,
    min_reps: int,
    max_reps: int,
    rounds: int,
    max_case_s: float = math.inf,
    warmup: int = 3,
) -> tuple[dict[str, Stats], dict[str, str]]:
    """Time ``cases`` side by side; returns ({name: Stats}, {name: error for cases that failed}).

    Each case is warmed up, its per-call time estimated, and given
    ``clamp(target_s / estimate, min_reps, max_reps)`` repetitions (fewer, but at least 3, if that
    would take longer than ``max_case_s``), split evenly over ``rounds`` rounds; within a round
    every case runs its share, and the order of cases is rotated from round to round.
    """
    errors: dict[str, str] = {}
    reps: dict[str, int] = {}
    for case in cases:
        try:
            est = timer.time(case.fn, case.setup, warmup)
            timer.sync()
        except Exception as exc:  # a provider that cannot run this dtype/size: report, go on
            errors[case.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            continue
        per_call = max(float(np.median(est)), 1e-7)
        n = int(min(max_reps, max(min_reps, round(target_s / per_call))))
        if n * per_call > max_case_s:
            n = max(3, int(max_case_s / per_call))
        reps[case.name] = n
    live = [c for c in cases if c.name in reps]
    stats = {c.name: Stats() for c in live}
    rounds = max(1, rounds)
    for r in range(rounds):
        shift = r % len(live) if live else 0
        for case in live[shift:] + live[:shift]:
            share = math.ceil(reps[case.name] / rounds)
            stats[case.name].samples.extend(timer.time(case.fn, case.setup, share))
    timer.sync()
    return stats, errors


# --------------------------------------------------------------------------- saved memory


def saved_bytes(forward: Callable[[], torch.Tensor], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes autograd keeps for backward once ``forward()`` has built its graph: the storages of
    the saved tensors still held by the graph when ``forward`` returns, each counted once (in-place
    ops share one), storages of ``exclude`` (parameters) not counted.

    The pack hook hands autograd a *detached alias* of each saved tensor and keeps only a weak
    reference to it. Tensors saved by a node that is freed during the forward (``relu(x).detach()``
    frees relu's node and its saved output) are therefore not counted, as they do not stay in
    memory. The hook must not return the tensor itself: for a tensor saved by the op that produced
    it (relu's output, sigmoid's), that makes a cycle output -> grad_fn -> saved output that no
    garbage collector sees, so the whole graph leaks (0.4-1.4 GB per call on the models of
    ``benchmarks.memory``) and freed tensors are counted as kept."""
    skip = {p.untyped_storage().data_ptr() for p in exclude}
    entries: list[tuple[tuple[str, int], int, weakref.ref]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        alias = t.detach()
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # e.g. tensor subclasses without storage
            return alias
        if st.data_ptr() not in skip:
            entries.append(((str(t.device), st.data_ptr()), st.nbytes(), weakref.ref(alias)))
        return alias

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    alive = {key: nbytes for key, nbytes, ref in entries if ref() is not None}
    del out
    return sum(alive.values())


# --------------------------------------------------------------------------- environment


def git_commit() -> str:
    """Short commit of the working tree, '+dirty' when it has changes; 'unknown' without git."""
    if os.environ.get("SUGAR_COMMIT"):
        return os.environ["SUGAR_COMMIT"]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception:
        return "none"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def environment(device: str | torch.device) -> dict[str, str]:
    """The stamp every CSV row carries."""
    device = torch.device(device)
    return {
        "time_utc": utc_now(),
        "commit": git_commit(),
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version(),
        "cuda": str(torch.version.cuda) if device.type == "cuda" else "",
        "threads": str(torch.get_num_threads()),
        "host": platform.node(),
        "load": f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "",
    }


# --------------------------------------------------------------------------- verdicts

# START_LOAD (imported above): the load average when the benchmarks package was first imported,
# before torch (benchmarks/__init__.py): the load *other* processes put on the machine (a load
# read after torch's import or the benchmark itself would count this process's own work).
VERDICTS = ("met", "missed", "inconclusive")


def loaded(load: float | None = None, cores: int | None = None) -> bool:
    """Whether other processes kept the CPUs busy: 1-min load average above a quarter of the
    cores, and above 0.75 (2 cores: 0.75; 16 cores: 4). A benchmark uses every core, so on a small
    machine even one busy core distorts it (at load 1.6 on 2 cores torch GELU took 6.0 ms per
    fwd+bwd of 2^22 floats where quiet runs gave 3.8 ms, while SUGAR stayed at 4.5 ms).
    ``load`` defaults to ``START_LOAD``, ``cores`` to ``os.cpu_count()``."""
    load = START_LOAD if load is None else load
    cores = cores or os.cpu_count() or 1
    return load is not None and load > max(0.75, 0.25 * cores)


def machine_load_note(load: float | None = None, cores: int | None = None) -> str | None:
    """A one-line note when the machine was loaded (see ``loaded``), else None. Print it with the
    results: every verdict of such a run is "inconclusive"."""
    load = START_LOAD if load is None else load
    cores = cores or os.cpu_count() or 1
    if not loaded(load, cores):
        return None
    return (
        f"machine loaded: load average {load:.1f} on {cores} CPUs when the run started; other "
        "processes compete for the CPUs (a multi-threaded op can wait a whole scheduler slice, "
        "~10 ms, for a busy core), so every timing verdict is 'inconclusive': rerun on a quiet "
        "machine"
    )


def spread(samples: Sequence[float]) -> tuple[float, float, float]:
    """(p20, median, p80) of ``samples``."""
    p20, p50, p80 = np.percentile(np.asarray(samples, dtype=float), [20, 50, 80])
    return float(p20), float(p50), float(p80)


def verdict_from_quantiles(
    ours: tuple[float, float, float],
    baseline: tuple[float, float, float],
    target_ratio: float,
    *,
    load: float | None = None,
) -> str:
    """``verdict`` on (p20, median, p80) summaries (e.g. read back from a CSV)."""
    if loaded(load) or any(not math.isfinite(v) or v <= 0 for v in (*ours, *baseline)):
        return "inconclusive"
    o20, _, o80 = ours
    b20, _, b80 = (target_ratio * v for v in baseline)
    if o80 < b20:  # even ours' slow calls beat the target's fast ones
        return "met"
    if o20 > b80:
        return "missed"
    return "inconclusive"  # the spreads overlap: the repetitions cannot separate the two


def verdict(
    ours: Sequence[float],
    baseline: Sequence[float],
    target_ratio: float,
    *,
    load: float | None = None,
) -> str:
    """Decide the target "time(ours) <= target_ratio * time(baseline)": met / missed /
    inconclusive.

    ``ours`` and ``baseline`` are per-call times (any unit, the same for both) of the two
    providers, measured interleaved in one process (``interleaved``). Let [p20, p80] be each
    list's 20th-80th percentile band, the baseline's scaled by ``target_ratio``:

    * "met" when ours' p80 is below the scaled baseline's p20 (the bands are separated, ours
      faster);
    * "missed" when ours' p20 is above the scaled baseline's p80;
    * "inconclusive" when the bands overlap (the spread between repetitions is wider than the
      difference), when a list is empty or holds a non-positive/non-finite time, or when the
      machine was loaded (``loaded(load)``; ``load`` defaults to the load average when this
      module was imported): a loaded run never says "met" (nor "missed").

    Use it for every timing target a benchmark prints, and print ``machine_load_note()`` beside.
    """
    if not len(ours) or not len(baseline):
        return "inconclusive"
    return verdict_from_quantiles(spread(ours), spread(baseline), target_ratio, load=load)


# --------------------------------------------------------------------------- CSV


def append_csv(path: str | Path, rows: list[dict], fields: Sequence[str]) -> Path:
    """Append ``rows`` to the CSV at ``path`` (header written when new).

    If the file exists with a different header (an older schema), rows go to a sibling file
    ``<stem>.v2<suffix>`` instead of mixing schemas; the path actually written is returned.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(fields)
    if path.exists() and path.stat().st_size > 0:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != fields:
            alt = path.with_name(f"{path.stem}.v2{path.suffix}")
            print(f"note: {path} has another column layout; appending to {alt} instead")
            if alt != path:
                return append_csv(alt, rows, fields)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: str | Path) -> list[dict]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- formatting


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence], align: str = "") -> str:
    """A GitHub-flavoured Markdown table; ``align`` is a string of 'l'/'r' per column."""
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Sequence[Sequence], align: str = "") -> str:
    """A fixed-width plain-text table for the terminal."""
    align = align or "l" + "r" * (len(headers) - 1)
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(row):
        return "  ".join(
            c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align)
        ).rstrip()

    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def fmt_num(value: float, digits: int = 3) -> str:
    """Compact number: 3 significant digits, '-' for NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if value == 0:
        return "0"
    mag = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - mag)
    return f"{value:.{decimals}f}"


def size_label(n: int) -> str:
    """2^k for powers of two, else the number."""
    if n > 0 and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    return str(n)
