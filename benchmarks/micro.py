"""Microbenchmarks: SUGAR kernels vs torch.relu, GELU and the paper's plain-PyTorch formula.

    python -m benchmarks.micro --quick          # CPU: 3 sizes, float32, < 60 s on 2 cores
    python -m benchmarks.micro                  # full sweep on the default device
    python -m benchmarks.micro --device cuda --sizes 24:28 --dtypes bfloat16 --modes full

Providers (all run the same activation on the same input, in the same process, interleaved):

  sugar_<backend>             sk.sugar_relu(x) (bsilu, exact) on every backend that
                              sk.available_backends(device) lists (cpu/cuda/triton/reference)
  sugar_<backend>_b8_inplace  sk.sugar_relu(x, bits=8, inplace=True), only where a probe call
                              works (the input is a fresh clone per call, made outside the timer)
  torch_relu                  torch.relu
  torch_gelu                  torch.nn.functional.gelu (exact erf form)
  paper                       sk.paper_formula(x) (bsilu): s(x) - s(x).detach() + relu(x).detach()
  paper_compiled              torch.compile(sk.paper_formula) (static shapes)
  copy                        dst.copy_(x): the device's copy bandwidth, measured in every group

Modes: ``forward`` times y = f(x) with x.requires_grad (a training forward: it saves what
backward needs); ``backward`` builds the graph once and times
``torch.autograd.grad(y, x, g, retain_graph=True)``; ``full`` times forward + that backward.

Bytes each kernel must move (n elements, s = element size in bytes); effective GB/s = bytes /
median time, and ``%copy`` = that GB/s / the GB/s of ``copy`` measured in the same group:

  provider                      forward        backward                         full
  copy                          2ns (read x, write dst)
  torch_relu                    2ns (x -> y)   3ns (read grad_y, saved y;      5ns
                                               write grad_x)
  sugar exact, torch_gelu,      2ns (x -> y)   3ns (read grad_y, saved x;      5ns
  paper, paper_compiled                        write grad_x)
  sugar bits=8 in-place         2ns + n        2ns + n (read grad_y and the    4ns + 2n
                                (x -> y in     1-byte code; write grad_x)
                                place + code)

The paper formula computes the same function as sugar exact, so it is credited with the same
bytes (the useful work); the traffic it really generates is several times larger, which is
exactly what its lower GB/s shows.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import sugar_kernels as sk

from .common import (
    RESULTS,
    Case,
    Timer,
    append_csv,
    environment,
    fmt_num,
    gbps,
    interleaved,
    machine_load_note,
    read_csv,
    size_label,
    spread,
    text_table,
    verdict,
    verdict_from_quantiles,
)

MODES = ("forward", "backward", "full")
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
FULL_SIZES = {"cpu": "12:24", "cuda": "16:28"}  # powers of two
QUICK_SIZES = {"cpu": "16,20,22", "cuda": "20,24,26"}
SURROGATE = "bsilu"  # the paper's headline surrogate; the default of sk.sugar_relu too

CSV_FIELDS = [
    "run",
    "time_utc",
    "commit",
    "device",
    "device_name",
    "torch",
    "triton",
    "cuda",
    "threads",
    "host",
    "load",
    "quick",
    "provider",
    "mode",
    "dtype",
    "numel",
    "bytes",
    "reps",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "gbps",
    "copy_gbps",
    "pct_copy",
    "vs_relu",
    "note",
]


# --------------------------------------------------------------------------- providers


def bytes_moved(kind: str, mode: str, n: int, s: int) -> int:
    """Bytes a provider of ``kind`` must move for ``mode`` (see the module docstring)."""
    if kind == "copy":
        return 2 * n * s
    if kind == "code8":
        per_mode = {"forward": 2 * n * s + n, "backward": 2 * n * s + n}
    else:  # "exact" and "relu": one read and one write forward; grad_y + saved + grad_x back
        per_mode = {"forward": 2 * n * s, "backward": 3 * n * s}
    per_mode["full"] = per_mode["forward"] + per_mode["backward"]
    return per_mode[mode]


@dataclass
class Provider:
    name: str
    act: Callable[[torch.Tensor], torch.Tensor]
    kind: str  # "exact" | "relu" | "code8" | "copy"
    inplace: bool = False
    note: str = ""


def selected(name: str, patterns: list[str] | None) -> bool:
    """Provider filter: names or prefixes to keep; '-name' (or '-prefix') to drop."""
    if not patterns:
        return True
    keep = [p for p in patterns if not p.startswith("-")]
    drop = [p[1:] for p in patterns if p.startswith("-")]
    if any(name.startswith(d) for d in drop):
        return False
    return not keep or any(name.startswith(k) for k in keep)


def _probe(act: Callable, device: str, inplace: bool) -> str | None:
    """None if ``act`` runs forward and backward on a small tensor of ``device``, else why not."""
    try:
        x = torch.randn(257, device=device, requires_grad=True)
        h = x.clone() if inplace else x
        y = act(h)
        (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
        if not torch.equal(y.detach(), torch.relu(x.detach())):
            return "forward differs from torch.relu"
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def _sugar(backend: str, **kw) -> Callable:
    def act(x):
        return sk.sugar_relu(x, SURROGATE, backend=backend, **kw)

    return act


def make_providers(device: str, compile_mode: str, log=print) -> list[Provider]:
    """Every provider that runs on ``device``; skipped ones are logged with the reason."""
    providers: list[Provider] = []
    for backend in sk.available_backends(device):
        exact = _sugar(backend)
        why = _probe(exact, device, inplace=False)
        if why:
            log(f"skip sugar_{backend}: {why}")
        else:
            providers.append(Provider(f"sugar_{backend}", exact, "exact"))
        code8 = _sugar(backend, bits=8, inplace=True)
        why = _probe(code8, device, inplace=True)
        if why:
            log(f"skip sugar_{backend}_b8_inplace (not available yet): {why}")
        else:
            providers.append(Provider(f"sugar_{backend}_b8_inplace", code8, "code8", inplace=True))
    providers.append(Provider("torch_relu", torch.relu, "relu"))
    providers.append(Provider("torch_gelu", torch.nn.functional.gelu, "exact"))
    providers.append(Provider("paper", sk.paper_formula, "exact"))
    if compile_mode == "off":
        log("skip paper_compiled: torch.compile disabled (--compile off)")
    else:
        compiled = _compiled_paper(compile_mode)
        providers.append(
            Provider("paper_compiled", compiled, "exact", note=f"torch.compile {compile_mode}")
        )
    providers.append(Provider("copy", None, "copy"))
    return providers


def _compiled_paper(mode: str) -> Callable:
    import torch._dynamo

    # One compiled graph per (size, dtype) with static shapes: raise the recompile limit so the
    # sweep never silently falls back to eager.
    for name in (
        "cache_size_limit",
        "recompile_limit",
        "accumulated_cache_size_limit",
        "accumulated_recompile_limit",
    ):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 512))
    return torch.compile(sk.paper_formula, dynamic=(mode == "dynamic"))


def make_inputs(
    n: int, dtype: torch.dtype, device: str, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0,1) (a leaf that requires grad) and a grad_output g ~ N(0,1), made on ``device``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, generator=gen, device=device, dtype=torch.float32).to(dtype)
    g = torch.randn(n, generator=gen, device=device, dtype=torch.float32).to(dtype)
    return x.requires_grad_(), g


def make_case(p: Provider, mode: str, x: torch.Tensor, g: torch.Tensor) -> Case:
    """The timed callable (and its untimed setup) for provider ``p`` in ``mode``.

    Providers share ``x`` (a leaf) and ``g``; each builds its own graph from them.
    """
    if p.kind == "copy":
        src, dst = x.detach(), torch.empty_like(x, requires_grad=False)
        return Case(p.name, lambda: dst.copy_(src))
    act, grad = p.act, torch.autograd.grad
    if p.inplace:  # the op overwrites its input: time it on a fresh non-leaf clone of x

        def setup():
            return (x.clone(),)

        if mode == "forward":
            return Case(p.name, act, setup)
        if mode == "full":
            return Case(p.name, lambda h: grad(act(h), x, g), setup)
        y = act(x.clone())
        return Case(p.name, lambda: grad(y, x, g, retain_graph=True))
    if mode == "forward":
        return Case(p.name, lambda: act(x))
    if mode == "full":
        return Case(p.name, lambda: grad(act(x), x, g))
    y = act(x)
    return Case(p.name, lambda: grad(y, x, g, retain_graph=True))


# --------------------------------------------------------------------------- the sweep


@dataclass
class Settings:
    """Repetitions per case: target_s / per-call time, within [min_reps, max_reps], capped so
    one case takes at most max_case_s (then >= 3 reps); split over ``rounds`` interleaved rounds."""

    target_s: float
    min_reps: int
    max_reps: int
    rounds: int
    max_case_s: float


def settings_for(device: str, quick: bool) -> Settings:
    if device == "cuda":
        return Settings(target_s=0.15, min_reps=20, max_reps=200, rounds=5, max_case_s=2.0)
    if quick:
        return Settings(target_s=0.15, min_reps=7, max_reps=150, rounds=5, max_case_s=0.6)
    return Settings(target_s=0.5, min_reps=15, max_reps=400, rounds=5, max_case_s=5.0)


def run(
    device: str,
    sizes: list[int],
    dtypes: list[str],
    modes: list[str],
    provider_filter: list[str] | None,
    compile_mode: str,
    quick: bool,
    max_seconds: float | None = None,
    log=print,
    on_group=None,
) -> list[dict]:
    """Run the sweep; returns one dict per (provider, mode, dtype, size), CSV-ready.

    ``on_group(rows)`` is called with each group's rows as soon as they are measured (the CLI
    appends them to the CSV then, so an interrupted sweep keeps what it measured)."""
    start = time.perf_counter()
    env = environment(device)
    run_id = env["time_utc"]
    providers = make_providers(device, compile_mode, log=log)
    providers = [p for p in providers if p.name == "copy" or selected(p.name, provider_filter)]
    log(
        f"device: {env['device_name']} | torch {env['torch']} | triton {env['triton']} | "
        f"commit {env['commit']} | {env['time_utc']}"
    )
    log("providers: " + ", ".join(p.name for p in providers))
    warning = machine_load_note(float(env["load"])) if env["load"] else None
    if warning:
        log(warning)
    timer = Timer(device)
    cfg = settings_for(device, quick)
    rows: list[dict] = []
    groups = [(dt, n, m) for n in sizes for dt in dtypes for m in modes]
    inputs_key, inputs = None, None
    for i, (dtype_name, n, mode) in enumerate(groups):
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            log(
                f"stopped at the --max-seconds limit ({max_seconds:.0f} s): "
                f"{len(groups) - i} of {len(groups)} groups not measured"
            )
            break
        dtype = DTYPES[dtype_name]
        if inputs_key != (n, dtype_name):
            inputs_key, inputs = None, None  # free the previous ones first
            inputs_key, inputs = (n, dtype_name), make_inputs(n, dtype, device, seed=n)
        cases, build_errors = [], {}
        for p in providers:
            try:
                cases.append(make_case(p, mode, *inputs))
            except Exception as exc:
                build_errors[p.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        stats, errors = interleaved(
            timer,
            cases,
            target_s=cfg.target_s,
            min_reps=cfg.min_reps,
            max_reps=cfg.max_reps,
            rounds=cfg.rounds,
            max_case_s=cfg.max_case_s,
        )
        errors.update(build_errors)
        del cases
        for name, err in errors.items():
            log(f"  {name} {mode} {dtype_name} {size_label(n)}: failed ({err})")
        by_name = {p.name: p for p in providers}
        first_row = len(rows)
        copy_gbps = (
            gbps(bytes_moved("copy", mode, n, dtype.itemsize), stats["copy"].median_ms)
            if "copy" in stats
            else math.nan
        )
        relu_ms = stats["torch_relu"].median_ms if "torch_relu" in stats else math.nan
        for name, st in stats.items():
            p = by_name[name]
            nbytes = bytes_moved(p.kind, mode, n, dtype.itemsize)
            bw = gbps(nbytes, st.median_ms)
            rows.append(
                {
                    **env,
                    "run": run_id,
                    "quick": int(quick),
                    "provider": name,
                    "mode": mode,
                    "dtype": dtype_name,
                    "numel": n,
                    "bytes": nbytes,
                    "reps": st.reps,
                    "median_ms": f"{st.median_ms:.6g}",
                    "p20_ms": f"{st.p20_ms:.6g}",
                    "p80_ms": f"{st.p80_ms:.6g}",
                    "gbps": f"{bw:.4g}",
                    "copy_gbps": f"{copy_gbps:.4g}",
                    "pct_copy": f"{100 * bw / copy_gbps:.1f}",
                    "vs_relu": f"{st.median_ms / relu_ms:.3f}",
                    "note": p.note,
                    "samples": st.samples,  # per-call seconds, for verdicts (not in the CSV)
                }
            )
        if on_group is not None:
            on_group(rows[first_row:])
        done = time.perf_counter() - start
        log(f"[{i + 1}/{len(groups)}] {dtype_name} {size_label(n)} {mode} ({done:.0f} s)")
    return rows


# --------------------------------------------------------------------------- reporting


def _f(row: dict, key: str) -> float:
    try:
        return float(row[key])
    except (KeyError, TypeError, ValueError):
        return math.nan


TABLE_HEADERS = [
    "dtype",
    "size",
    "mode",
    "provider",
    "median ms",
    "p20 ms",
    "p80 ms",
    "GB/s",
    "%copy",
    "x relu",
]
TABLE_ALIGN = "llll" + "r" * 6


def table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        out.append(
            [
                r["dtype"],
                size_label(int(r["numel"])),
                r["mode"],
                r["provider"],
                fmt_num(_f(r, "median_ms")),
                fmt_num(_f(r, "p20_ms")),
                fmt_num(_f(r, "p80_ms")),
                fmt_num(_f(r, "gbps")),
                fmt_num(_f(r, "pct_copy"), 2) if r["provider"] != "copy" else "100",
                fmt_num(_f(r, "vs_relu")),
            ]
        )
    return out


def print_table(rows: list[dict]) -> None:
    print(text_table(TABLE_HEADERS, table_rows(rows), TABLE_ALIGN))


def _lookup(rows, provider, mode, dtype, n):
    for r in rows:
        if (
            r["provider"] == provider
            and r["mode"] == mode
            and r["dtype"] == dtype
            and int(r["numel"]) == n
        ):
            return r
    return None


def _timing(row: dict) -> tuple[float, float, float] | list[float]:
    """A row's per-call times (in-process rows) or its (p20, median, p80) (rows from a CSV)."""
    if row.get("samples"):
        return row["samples"]
    return (_f(row, "p20_ms") * 1e-3, _f(row, "median_ms") * 1e-3, _f(row, "p80_ms") * 1e-3)


def target_verdict(ours: dict, baseline: dict, target_ratio: float) -> str:
    """``benchmarks.common.verdict`` for "ours <= target_ratio x baseline" on two rows of one
    group, with the load recorded when the run started."""
    a, b = _timing(ours), _timing(baseline)
    load = _f(ours, "load")
    load = None if math.isnan(load) else load
    if isinstance(a, tuple) or isinstance(b, tuple):
        a = a if isinstance(a, tuple) else spread(a)
        b = b if isinstance(b, tuple) else spread(b)
        return verdict_from_quantiles(a, b, target_ratio, load=load)
    return verdict(a, b, target_ratio, load=load)


def check_targets(rows: list[dict]) -> list[tuple[str, str, str]]:
    """The targets of issue 5 that these rows can decide: (target, measured, verdict).

    Every verdict is met / missed / inconclusive (``benchmarks.common.verdict``): inconclusive
    when the machine was loaded or the p20-p80 bands of the two providers overlap. "measured" is
    the ratio of medians with the ratio of the bands' ends (p20/p80 .. p80/p20) beside it."""
    out: list[tuple[str, str, str]] = []
    if not rows:
        return out
    device = rows[0]["device"]

    def add(target, prov, base, mode, dtype, n, limit):
        a, b = _lookup(rows, prov, mode, dtype, n), _lookup(rows, base, mode, dtype, n)
        if a is None or b is None:
            return
        if base == "copy":  # ">= limit% of copy bandwidth" as a time ratio against the copy
            ratio_limit = _f(a, "bytes") / (_f(b, "bytes") * limit / 100)
            measured = f"{_f(a, 'pct_copy'):.0f}%"
        else:
            ratio_limit = limit
            lo = _f(a, "p20_ms") / _f(b, "p80_ms")
            hi = _f(a, "p80_ms") / _f(b, "p20_ms")
            measured = f"{_f(a, 'median_ms') / _f(b, 'median_ms'):.2f}x ({lo:.2f}-{hi:.2f})"
        out.append((target, measured, target_verdict(a, b, ratio_limit)))

    if device == "cpu":
        n, tag = 1 << 22, "CPU f32 2^22 fwd+bwd"
        add(f"{tag}: sugar_cpu <= torch_gelu", "sugar_cpu", "torch_gelu", "full", "float32", n, 1)
        add(f"{tag}: sugar_cpu <= 0.5x paper", "sugar_cpu", "paper", "full", "float32", n, 0.5)
        add(
            f"{tag} (stretch): sugar_cpu <= 1.3x torch_relu",
            "sugar_cpu",
            "torch_relu",
            "full",
            "float32",
            n,
            1.3,
        )
        return out
    big = sorted({int(r["numel"]) for r in rows if int(r["numel"]) >= 1 << 26})
    dtypes = sorted({r["dtype"] for r in rows})
    for n in big:
        for dt in dtypes:
            tag = f"GPU {dt} {size_label(n)}"
            for be in ("cuda", "triton"):
                name = f"sugar_{be}"
                for mode in ("forward", "backward"):
                    add(f"{tag} {mode}: {name} >= 90% of copy", name, "copy", mode, dt, n, 90)
                full = [
                    (f"{name} <= 1.1x torch_relu", name, "torch_relu", 1.1),
                    (f"{name}_b8_inplace <= torch_relu", f"{name}_b8_inplace", "torch_relu", 1),
                    (f"{name} <= 1/3 x paper", name, "paper", 1 / 3),
                    (f"{name} <= paper_compiled", name, "paper_compiled", 1.0),
                ]
                for what, prov, base, limit in full:
                    add(f"{tag} fwd+bwd: {what}", prov, base, "full", dt, n, limit)
            for mode in MODES:
                add(
                    f"{tag} {mode}: sugar_triton within 10% of sugar_cuda",
                    "sugar_triton",
                    "sugar_cuda",
                    mode,
                    dt,
                    n,
                    1.1,
                )
    return out


def print_targets(rows: list[dict]) -> None:
    targets = check_targets(rows)
    if targets:
        print()
        print(text_table(["target (issue 5)", "measured", "verdict"], targets, "lrl"))
        load = _f(rows[0], "load")
        note = machine_load_note(load) if not math.isnan(load) else None
        print(note or "verdicts: met/missed where the p20-p80 bands separate, else inconclusive")


def plot(rows: list[dict], path: str | Path) -> Path | None:
    """Effective GB/s against size, one panel per (dtype, mode), one series per provider: a marker
    at each measured size (the median) with a bar from p80 to p20 (the spread over repetitions);
    lines join the markers only for sweeps of 5+ sizes."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    if not dtypes or not modes:
        return None
    sizes = sorted({int(r["numel"]) for r in rows})
    fig, axes = plt.subplots(
        len(dtypes),
        len(modes),
        figsize=(5 * len(modes), 3.8 * len(dtypes)),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    for i, dt in enumerate(dtypes):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            for k, prov in enumerate(providers):
                sel = sorted(
                    (int(r["numel"]), r)
                    for r in rows
                    if r["provider"] == prov and r["mode"] == mode and r["dtype"] == dt
                )
                if not sel:
                    continue
                xs = [n * (1 + 0.04 * (k - len(providers) / 2)) for n, _ in sel]  # dodge
                mid = [_f(r, "gbps") for _, r in sel]
                lo = [gbps(_f(r, "bytes"), _f(r, "p80_ms")) for _, r in sel]
                hi = [gbps(_f(r, "bytes"), _f(r, "p20_ms")) for _, r in sel]
                copy = prov == "copy"
                ax.errorbar(
                    xs,
                    mid,
                    yerr=[[m - a for m, a in zip(mid, lo)], [b - m for m, b in zip(mid, hi)]],
                    fmt="s" if copy else "o",
                    markersize=4,
                    capsize=2,
                    linestyle=("--" if copy else "-") if len(sizes) >= 5 else "none",
                    linewidth=1,
                    color="black" if copy else None,
                    label=prov,
                )
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, [size_label(s) for s in sizes])
            ax.set_yscale("log")
            ax.set_title(f"{mode}, {dt}")
            ax.grid(True, alpha=0.3)
            if j == 0:
                ax.set_ylabel("effective GB/s (median; bar: p20-p80)")
            if i == len(dtypes) - 1:
                ax.set_xlabel("elements per tensor")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), fontsize=8)
    first = rows[0]
    reps = sorted(int(r["reps"]) for r in rows)
    fig.suptitle(
        f"SUGAR (bsilu) micro-benchmarks: {first['device_name']}, torch {first['torch']}, "
        f"commit {first['commit']}\n{first['time_utc']}, load average {first.get('load', '?')} "
        f"at start, {reps[0]}-{reps[-1]} interleaved calls per point",
        fontsize=9,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latest_run(csv_path: str | Path) -> list[dict]:
    rows = read_csv(csv_path)
    if not rows:
        return []
    last = rows[-1]["run"]
    return [r for r in rows if r["run"] == last]


def summarize(rows: list[dict], n: int | None = None) -> None:
    """A short table for one size (default: the largest measured): one line per provider, one
    column per (dtype, mode) with the median time and the % of copy bandwidth; then the targets."""
    if not rows:
        print("no micro-benchmark rows")
        return
    n = n or max(int(r["numel"]) for r in rows)
    sel = [r for r in rows if int(r["numel"]) == n]
    cols = list(dict.fromkeys((r["dtype"], r["mode"]) for r in sel))
    providers = list(dict.fromkeys(r["provider"] for r in sel))
    first = rows[0]
    print(
        f"micro-benchmarks at {size_label(n)} elements: {first['device_name']}, torch "
        f"{first['torch']}, triton {first['triton']}, commit {first['commit']}, {first['time_utc']}"
    )
    print("cells: median ms (% of copy bandwidth)")
    table = []
    for prov in providers:
        line = [prov]
        for dt, mode in cols:
            r = _lookup(sel, prov, mode, dt, n)
            line.append(
                "-" if r is None else f"{fmt_num(_f(r, 'median_ms'))} ({_f(r, 'pct_copy'):.0f}%)"
            )
        table.append(line)
    print(text_table(["provider"] + [f"{m} {d}" for d, m in cols], table))
    print_targets(rows)


# --------------------------------------------------------------------------- CLI


def parse_sizes(text: str) -> list[int]:
    """'16,20,22' (exponents), '12:24' or '12-24' (exponent ranges; '28:16' runs them largest
    first), '2^20', or plain counts; measured in the order given."""
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        for sep in (":", "-"):
            if sep in part:
                lo, hi = (int(v) for v in part.split(sep))
                step = 1 if lo <= hi else -1
                out += [1 << k for k in range(lo, hi + step, step)]
                break
        else:
            if part.startswith("2^"):
                out.append(1 << int(part[2:]))
            else:
                v = int(part)
                out.append(1 << v if v <= 40 else v)
    return out


def _csv_list(text: str, valid=None) -> list[str]:
    items = [t for t in text.replace(" ", "").split(",") if t]
    if valid is not None:
        bad = [t for t in items if t not in valid]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(valid)}")
    return items


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.micro",
        description="SUGAR micro-benchmarks (see the module docstring for the byte model).",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a few sizes, float32, short repetitions (< 60 s on a 2-core CPU)",
    )
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument(
        "--sizes",
        default=None,
        help="exponents/ranges/counts, e.g. '16,20,22', '12:24', '2^20', '1000003'",
    )
    ap.add_argument(
        "--dtypes",
        default=None,
        type=lambda t: _csv_list(t, DTYPES),
        help="comma list (default float32,bfloat16; --quick: float32)",
    )
    ap.add_argument(
        "--modes",
        default=",".join(MODES),
        type=lambda t: _csv_list(t, MODES),
        help="comma list of forward,backward,full",
    )
    ap.add_argument(
        "--providers",
        default=None,
        type=_csv_list,
        help="comma list of provider names or prefixes to keep (e.g. "
        "'sugar,torch_relu'), '-name' to drop one (--providers=-paper); copy "
        "is always measured",
    )
    ap.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "static", "dynamic", "off"],
        help="torch.compile of the paper formula (auto: off on CPU with --quick, "
        "static shapes otherwise)",
    )
    ap.add_argument(
        "--csv", default=str(RESULTS / "micro.csv"), help="CSV to append rows to ('' for none)"
    )
    ap.add_argument(
        "--plot", default=None, help="PNG path (default results/micro_<device>.png; '' for none)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own choice, as users get it); "
        "--threads 1 gives steadier numbers on a busy machine",
    )
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop starting new groups after this many seconds (partial results)",
    )
    ap.add_argument(
        "--summarize",
        metavar="CSV",
        default=None,
        help="print a short table of the latest run in CSV and exit",
    )
    return ap


def main(argv: list[str] | None = None, log=print) -> list[dict]:
    """Run the CLI; returns the measured rows. ``log`` receives every note and skip message."""
    args = build_parser().parse_args(argv)
    if args.summarize:
        summarize(latest_run(args.summarize))
        return []
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device).type
    if args.threads:
        torch.set_num_threads(args.threads)
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU is available")
    sizes = parse_sizes(args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)[device])
    dtypes = args.dtypes or (["float32"] if args.quick else ["float32", "bfloat16"])
    compile_mode = args.compile
    if compile_mode == "auto":
        if device == "cpu" and args.quick:
            compile_mode = "off"
            log(
                "note: torch.compile of the paper formula is skipped in --quick on CPU "
                "(compiling takes ~25 s per size on 2 cores); run without --quick, or pass "
                "--compile static, to include it"
            )
        else:
            compile_mode = "static"
    providers = args.providers
    if providers is None and args.quick:
        providers = ["-sugar_reference"]
        log(
            "note: sugar_reference (the float64 oracle, not a kernel meant to be fast) is "
            "skipped in --quick; run without --quick or pass --providers to time it"
        )
    t0 = time.perf_counter()
    written: list = []

    def save(group_rows):
        if args.csv and group_rows:
            written.append(append_csv(args.csv, group_rows, CSV_FIELDS))

    rows = run(
        device,
        sizes,
        dtypes,
        args.modes,
        providers,
        compile_mode,
        args.quick,
        max_seconds=args.max_seconds,
        log=log,
        on_group=save,
    )
    elapsed = time.perf_counter() - t0
    print()
    print_table(rows)
    print_targets(rows)
    if written:
        print(f"\nappended {len(rows)} rows to {written[-1]}")
    plot_path = args.plot if args.plot is not None else str(RESULTS / f"micro_{device}.png")
    if plot_path and rows:
        out = plot(rows, plot_path)
        if out:
            print(f"plot: {out}")
    print(f"micro-benchmarks took {elapsed:.1f} s")
    return rows


if __name__ == "__main__":
    main()
