"""Micro-benchmarks: SUGAR against torch.relu, GELU and the paper's plain-PyTorch formula.

    python -m benchmarks.micro --quick          # CPU: 3 sizes, float32, < 1 min on 2 cores
    python -m benchmarks.micro --device cuda --sizes 28:16 --max-seconds 120

Providers, all running the bsilu activation (or its baseline) on the same N(0,1) input:
sugar_<backend> (sk.sugar_relu, exact) and sugar_<backend>_b8_inplace (bits=8, inplace=True, on
a fresh clone made outside the timer) for the compiled backends (cpu, cuda, triton); torch_relu;
torch_gelu (erf form); paper (sk.paper_formula: s(x) - s(x).detach() + relu(x).detach());
paper_compiled (torch.compile of it); copy (dst.copy_(x): the copy bandwidth, in every group).

Modes: forward (x.requires_grad: a training forward), backward (graph built once, then
torch.autograd.grad(y, x, g, retain_graph=True)), full (both). Bytes a provider must move, n
elements of s bytes: copy and every forward 2sn; backward 3sn (grad_y, saved x or y, grad_x);
bits=8 in place sn more each way (the one-byte code). The paper formula is credited with the
bytes of the function it computes, so its low GB/s shows the traffic it really makes.
GB/s = bytes / median time; %copy = that / the copy's GB/s in the same group.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import sugar_kernels as sk

from .common import (
    TARGETS,
    Case,
    Timer,
    environment,
    fmt,
    header,
    interleaved,
    log,
    markdown_table,
    parse_sizes,
    parser,
    pick_device,
    size_label,
    verdict,
    worst,
    write_csv,
    write_report,
)

MODES = ("forward", "backward", "full")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SIZES = {"cpu": "12:24", "cpu-quick": "16,20,22", "cuda": "16:28", "cuda-quick": "20,24,26"}
SURROGATE = "bsilu"
# repetitions per case: target_s of samples within [min_reps, max_reps], at most max_case_s
SETTINGS = {
    "cuda": dict(target_s=0.15, min_reps=20, max_reps=200, rounds=5, max_case_s=2.0),
    "cpu": dict(target_s=0.5, min_reps=15, max_reps=400, rounds=5, max_case_s=5.0),
    "cpu-quick": dict(target_s=0.15, min_reps=7, max_reps=150, rounds=5, max_case_s=0.6),
    "dry-run": dict(target_s=0.001, min_reps=3, max_reps=3, rounds=1, warmup=1),
}
FIELDS = ["provider", "mode", "dtype", "numel", "bytes", "reps", "median_ms", "p20_ms", "p80_ms"]
FIELDS += ["gbps", "pct_copy", "vs_relu", "others_cores"]


def bytes_moved(kind: str, mode: str, n: int, s: int) -> int:
    """Bytes a provider of ``kind`` must move in ``mode`` (see the module docstring)."""
    fwd = 2 * n * s + (n if kind == "code8" else 0)
    bwd = fwd if kind == "code8" else 3 * n * s
    return fwd if kind == "copy" else {"forward": fwd, "backward": bwd, "full": fwd + bwd}[mode]


@dataclass
class Provider:
    name: str
    act: Callable | None
    kind: str  # "exact" | "relu" | "code8" | "copy"
    inplace: bool = False


def make_providers(device: str, compile_mode="off", compiler="inductor") -> list[Provider]:
    """Every provider that runs on ``device`` (``compiler``: the backend of paper_compiled)."""
    out = []
    for backend in sk.available_backends(device):
        if backend == "reference":  # the float64 oracle, not meant to be fast
            continue
        sugar = functools.partial(sk.sugar_relu, surrogate=SURROGATE, backend=backend)
        out.append(Provider(f"sugar_{backend}", sugar, "exact"))
        code8 = functools.partial(sugar, bits=8, inplace=True)
        out.append(Provider(f"sugar_{backend}_b8_inplace", code8, "code8", inplace=True))
    out += [
        Provider("torch_relu", torch.relu, "relu"),
        Provider("torch_gelu", F.gelu, "exact"),
        Provider("paper", sk.paper_formula, "exact"),
    ]
    if compile_mode != "off":
        # one graph per (size, dtype) with static shapes: never fall back to eager mid-sweep
        torch._dynamo.config.recompile_limit = 512
        dynamic = compile_mode == "dynamic"
        compiled = torch.compile(sk.paper_formula, dynamic=dynamic, backend=compiler)
        out.append(Provider("paper_compiled", compiled, "exact"))
    return out + [Provider("copy", None, "copy")]


def make_inputs(n: int, dtype: torch.dtype, device: str, seed: int = 0):
    """x ~ N(0,1) (a leaf that requires grad) and a grad_output g ~ N(0,1)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, generator=gen, device=device).to(dtype)
    g = torch.randn(n, generator=gen, device=device).to(dtype)
    return x.requires_grad_(), g


def make_case(p: Provider, mode: str, x: torch.Tensor, g: torch.Tensor) -> Case:
    """The timed call of provider ``p`` in ``mode``; providers share x (a leaf) and g."""
    if p.kind == "copy":
        src, dst = x.detach(), torch.empty_like(x, requires_grad=False)
        return Case(p.name, lambda: dst.copy_(src))
    act, grad = p.act, torch.autograd.grad
    if mode == "backward":
        y = act(x.clone() if p.inplace else x)
        return Case(p.name, lambda: grad(y, x, g, retain_graph=True))
    setup = (lambda: (x.clone(),)) if p.inplace else (lambda: (x,))  # in place: a fresh input
    if mode == "forward":
        return Case(p.name, act, setup)
    return Case(p.name, lambda h: grad(act(h), x, g), setup)


def run(device, sizes, dtypes, modes, providers, settings, max_seconds=None, on_group=None):
    """The sweep: one row per (provider, mode, dtype, size); ``on_group(rows)`` after each group
    (the CLI rewrites the CSV then, so an interrupted sweep keeps what it measured)."""
    start, timer, rows = time.perf_counter(), Timer(device), []
    groups = [(n, dt, m) for n in sizes for dt in dtypes for m in modes]
    for i, (n, dtype_name, mode) in enumerate(groups):
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            print(f"stopped at --max-seconds {max_seconds:.0f}: {len(groups) - i} groups left")
            break
        dtype = DTYPES[dtype_name]
        x, g = make_inputs(n, dtype, device, seed=n)
        cases, errors = [], {}
        for p in providers:
            try:
                cases.append(make_case(p, mode, x, g))
            except Exception as exc:
                errors[p.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        t = interleaved(timer, cases, **settings)
        for name, err in {**errors, **t.errors}.items():
            print(f"  {name} {mode} {dtype_name} {size_label(n)}: failed ({err})")
        kinds = {p.name: p.kind for p in providers}
        copy_ms = t.stats["copy"].median_ms if "copy" in t.stats else math.nan
        copy_gbps = bytes_moved("copy", mode, n, dtype.itemsize) / copy_ms / 1e6
        relu_ms = t.stats["torch_relu"].median_ms if "torch_relu" in t.stats else math.nan
        for name, st in t.stats.items():
            nbytes = bytes_moved(kinds[name], mode, n, dtype.itemsize)
            gbps = nbytes / st.median_ms / 1e6
            rows.append(
                dict(provider=name, mode=mode, dtype=dtype_name, numel=n, bytes=nbytes)
                | dict(reps=st.reps, median_ms=st.median_ms, p20_ms=st.ms(20), p80_ms=st.ms(80))
                | dict(gbps=gbps, pct_copy=100 * gbps / copy_gbps, vs_relu=st.median_ms / relu_ms)
                | dict(others_cores=t.others, samples=st.samples)
            )
        if on_group:
            on_group(rows)
        took = time.perf_counter() - start
        log(f"[{i + 1}/{len(groups)}] {dtype_name} {size_label(n)} {mode} ({took:.0f} s)")
    return rows


def check_targets(rows: list[dict], device: str) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for every target these rows decide. "measured": the ratio of
    medians with the band's ends (p20/p80 .. p80/p20) beside it, or the % of copy."""
    by = {(r["provider"], r["mode"], r["dtype"], r["numel"]): r for r in rows}
    out = []

    def add(label, key, prov, base, mode, dtype, n):
        a, b = by.get((prov, mode, dtype, n)), by.get((base, mode, dtype, n))
        if a is None or b is None:
            return
        text, limit = TARGETS[key]
        if base == "copy":  # ">= limit % of copy bandwidth" as a time ratio to the copy
            measured, limit = f"{a['pct_copy']:.0f}%", a["bytes"] / (b["bytes"] * limit / 100)
        else:
            lo, hi = a["p20_ms"] / b["p80_ms"], a["p80_ms"] / b["p20_ms"]
            measured = f"{a['median_ms'] / b['median_ms']:.2f}x ({lo:.2f}-{hi:.2f})"
        others = worst([a["others_cores"], b["others_cores"]])
        judged = verdict(a["samples"], b["samples"], limit, others=others)
        out.append((f"{label}: {text}" if label else text, measured, judged))

    if device == "cpu":
        for key, base in (("gelu", "torch_gelu"), ("paper", "paper"), ("relu", "torch_relu")):
            add("", f"micro.cpu.{key}", "sugar_cpu", base, "full", "float32", 1 << 22)
        return out
    for n in sorted({r["numel"] for r in rows if r["numel"] >= 1 << 26}):
        for dt in sorted({r["dtype"] for r in rows}):
            for be in ("cuda", "triton"):
                tag, name = f"{dt} {size_label(n)} sugar_{be}", f"sugar_{be}"
                for mode in ("forward", "backward"):
                    add(f"{tag} {mode}", "bandwidth.exact", name, "copy", mode, dt, n)
                add(tag, "micro.gpu.relu", name, "torch_relu", "full", dt, n)
                add(tag, "micro.gpu.b8_relu", f"{name}_b8_inplace", "torch_relu", "full", dt, n)
                add(tag, "micro.gpu.paper", name, "paper", "full", dt, n)
                add(tag, "micro.gpu.paper_compiled", name, "paper_compiled", "full", dt, n)
            for mode in MODES:
                tag = f"{dt} {size_label(n)} {mode}"
                add(tag, "triton_vs_cuda", "sugar_triton", "sugar_cuda", mode, dt, n)
    return out


def report(rows: list[dict], device: str, lines: list[str]) -> str:
    targets = check_targets(rows, device)
    if targets:
        lines += [markdown_table(["target", "measured", "verdict"], targets, "lrl"), ""]
    keys = ("median_ms", "p20_ms", "p80_ms", "gbps", "pct_copy", "vs_relu")
    table = [
        [r["dtype"], size_label(r["numel"]), r["mode"], r["provider"], *(fmt(r[k]) for k in keys)]
        for r in rows
    ]
    cols = ["dtype", "size", "mode", "provider", "median ms", "p20 ms", "p80 ms", "GB/s", "%copy"]
    return "\n".join(lines + [markdown_table([*cols, "x relu"], table, "llll" + "r" * 6)])


def main(argv=None) -> int:
    ap = parser("benchmarks.micro", __doc__)
    ap.add_argument("--quick", action="store_true", help="3 sizes, float32, short repetitions")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--sizes", default=None, help="exponents, ranges or counts: '16,20', '28:16'")
    ap.add_argument("--dtypes", default=None, help="default float32,bfloat16 (--quick: float32)")
    ap.add_argument("--modes", default=",".join(MODES), help="forward,backward,full")
    ap.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "static", "dynamic", "off"],
        help="torch.compile of the paper formula (auto: off on CPU with --quick)",
    )
    ap.add_argument("--max-seconds", type=float, default=None, help="start no group after this")
    args = ap.parse_args(argv)
    device = pick_device(args.device, args.dry_run)
    quick = args.quick or args.dry_run
    key = device + ("-quick" if quick else "")
    sizes = parse_sizes("10" if args.dry_run else args.sizes or SIZES[key])
    dtypes = (args.dtypes or ("float32" if quick else "float32,bfloat16")).split(",")
    compile_mode = args.compile
    if compile_mode == "auto":
        compile_mode = "off" if device == "cpu" and quick else "static"
    compiler = "aot_eager" if args.dry_run else "inductor"  # a dry run compiles no C++
    providers = make_providers(device, compile_mode, compiler)
    log("providers: " + ", ".join(p.name for p in providers))
    settings = SETTINGS["dry-run"] if args.dry_run else SETTINGS.get(key, SETTINGS[device])
    env = environment(device)

    def save(rows):
        write_csv(args.results / "micro.csv", [r | env for r in rows], FIELDS + list(env))

    modes = args.modes.split(",")
    rows = run(device, sizes, dtypes, modes, providers, settings, args.max_seconds, save)
    others = worst(r["others_cores"] for r in rows)
    text = report(rows, device, header("benchmarks.micro", argv, env, others))
    write_report(args.results, "micro", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
