"""SUGAR under torch.compile (Inductor): compiled train-step time, saved bytes and peak memory.

    python -m benchmarks.compiled --quick                       # CPU, float32, small batches
    python -m benchmarks.compiled --device cuda --max-seconds 150

Models: a transformer MLP block (Linear -> act -> Linear) and ResNet-18 (CIFAR stem). Activations:
ReLU (in place), GELU, the paper's formula, SUGAR exact, bits=8 in place and NeLU bits=1 (region
negative) in place, each SUGAR one in the compile modes given by --modes ("auto": exact fused by
Inductor everywhere, code modes fused on GPUs and the C++ kernel on CPUs; "opaque": the kernels
as extern calls). Per (dtype, model) every variant is compiled, then one compiled train step
(forward, loss, backward) of each is timed, interleaved in one process. Reported: step time
(min, median, p20-p80), the ratio of medians to compiled ReLU with verdicts, the bytes autograd
saves in the compiled forward and, on a GPU, the step's peak torch.cuda.max_memory_allocated
above what was allocated before it. With --max-seconds no compile starts after that budget:
what was compiled is timed, later groups are skipped.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

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
    parser,
    peak_mib,
    pick_device,
    saved_bytes,
    swap_relu,
    verdict,
    worst,
    write_csv,
    write_report,
)
from .memory import PaperSugar, resnet18

BASELINES = [
    ("relu", lambda: nn.ReLU(inplace=True)),
    ("paper formula", PaperSugar),
    ("gelu", nn.GELU),
]
SUGAR = [
    ("sugar exact", dict()),
    ("sugar bits=8 inplace", dict(bits=8, inplace=True)),
    (
        "nelu bits=1 negative inplace",
        dict(surrogate="nelu", region="negative", bits=1, inplace=True),
    ),
]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
FIELDS = ["dtype", "model", "variant", "min_ms", "median_ms", "p20_ms", "p80_ms", "reps"]
FIELDS += ["vs_relu", "vs_relu_verdict", "vs_paper_verdict", "saved_MiB", "saved_vs_relu"]
FIELDS += ["peak_MiB", "compile_s", "others_cores", "error"]


def mlp_block(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


def workloads(device: str, quick: bool, dry_run: bool) -> dict[str, tuple[Callable, tuple]]:
    """name -> (model constructor with nn.ReLU, input shape); batches fill a GPU reasonably."""
    if dry_run:
        return {"mlp block": (lambda: mlp_block(16, 32), (8, 16))}
    if device == "cuda":
        mlp, tokens, batch = partial(mlp_block, 1024, 4096), 16384, 256
    elif quick:
        mlp, tokens, batch = partial(mlp_block, 256, 1024), 512, 8
    else:
        mlp, tokens, batch = partial(mlp_block, 256, 1024), 2048, 32
    return {"mlp block": (mlp, (tokens, mlp.args[0])), "resnet18": (resnet18, (batch, 3, 32, 32))}


def _loss(model, x):
    return model(x).float().square().mean()


def _step(compiled: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], None]:
    params = list(compiled.parameters())

    def step():
        same = mode == sk.get_compile_mode()  # Dynamo guards on the mode: run in the compiled one
        with contextlib.nullcontext() if same else sk.compile_mode(mode):
            for p in params:
                p.grad = None
            _loss(compiled, x).backward()

    return step


def measure_group(model_name, make, shape, dtype_name, args, deadline) -> list[dict]:
    """Compile every variant of one (dtype, model) and time their train steps interleaved."""
    device, dtype = args.device, DTYPES[dtype_name]
    x = torch.randn(shape, device=device, dtype=dtype)
    relu, paper, gelu = ((name, f, "auto") for name, f in BASELINES)
    sugar = [(name, partial(sk.SugarReLU, **kwargs)) for name, kwargs in SUGAR]
    auto = [(name, f, "auto") for name, f in sugar] if "auto" in args.modes else []
    other = [(f"{name}, {m}", f, m) for m in args.modes if m != "auto" for name, f in sugar]
    variants = [relu, *auto, paper, gelu, *other]  # most wanted first: the budget may end it
    steps, info = {}, {}
    for name, factory, mode in variants:
        if time.perf_counter() > deadline:
            log(f"  {model_name} {dtype_name}: --max-seconds reached, {name} not compiled")
            continue
        torch.manual_seed(0)
        model = swap_relu(make(), factory).to(device=device, dtype=dtype).train()
        t0 = time.perf_counter()
        try:
            with sk.compile_mode(mode):
                compiled = torch.compile(model, backend=args.backend)
                _loss(compiled, x).backward()  # compiles forward and backward
                saved = saved_bytes(lambda m=compiled: _loss(m, x), model.parameters())
            steps[name] = _step(compiled, x, mode)
            info[name] = dict(saved_MiB=saved / 2**20, peak_MiB=peak_mib(steps[name], device))
        except Exception as exc:  # report the variant, keep the others
            info[name] = dict(error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        info[name]["compile_s"] = round(time.perf_counter() - t0, 1)
        log(f"  {model_name} {dtype_name}: compiled {name} in {info[name]['compile_s']} s")
    t = interleaved(Timer(device), [Case(n, fn) for n, fn in steps.items()], **args.settings)
    relu, paper = t.stats.get("relu"), t.stats.get("paper formula")
    rows = []
    for name, _, _ in variants:
        row = dict(dtype=dtype_name, model=model_name, variant=name, others_cores=t.others)
        row |= info.get(name, {"error": "not compiled (time budget)"})
        if name in t.errors:
            row["error"] = t.errors[name]
        st = t.stats.get(name)
        if st is not None:
            row |= dict(min_ms=min(st.samples) * 1e3, median_ms=st.median_ms, reps=st.reps)
            row |= dict(p20_ms=st.ms(20), p80_ms=st.ms(80))
        if st is not None and relu is not None:
            row["vs_relu"] = st.median_ms / relu.median_ms
            row["saved_vs_relu"] = info[name]["saved_MiB"] / max(info["relu"]["saved_MiB"], 1e-9)
        if st is not None and name.startswith(("sugar", "nelu")):
            for key, base in (("relu", relu), ("paper", paper)):
                if base is not None:
                    limit = TARGETS[f"compiled.{key}"][1]
                    judged = verdict(st.samples, base.samples, limit, others=t.others)
                    row[f"vs_{key}_verdict"] = judged
        rows.append(row)
    return rows


def report(rows: list[dict], lines: list[str]) -> str:
    limit = TARGETS["compiled.saved"][1]
    table = []
    for r in rows:
        saved = fmt(r.get("saved_vs_relu"))
        if "bits" in r["variant"] and r.get("saved_vs_relu") is not None:
            saved += " (met)" if r["saved_vs_relu"] <= limit else " (missed)"
        band = f"{fmt(r.get('median_ms'))} ({fmt(r.get('p20_ms'))}-{fmt(r.get('p80_ms'))})"
        cells = [r["dtype"], r["model"], r["variant"], fmt(r.get("min_ms")), band]
        cells += [fmt(r.get(k)) for k in ("vs_relu", "vs_relu_verdict", "vs_paper_verdict")]
        cells += [fmt(r.get("saved_MiB")), saved, fmt(r.get("peak_MiB")), r.get("error", "")]
        table.append(cells)
    cols = ["dtype", "model", "activation", "min ms", "median ms (p20-p80)", "x relu"]
    cols += [f"<= {TARGETS['compiled.relu'][1]}x relu", "<= paper", "saved MiB"]
    cols += [f"saved x relu (<= {limit}x)", "peak step MiB", "error"]
    return "\n".join(lines + [markdown_table(cols, table, "lllrrrllrrrl")])


def main(argv=None) -> int:
    ap = parser("benchmarks.compiled", __doc__)
    ap.add_argument("--quick", action="store_true", help="CPU: small batches, fewer repetitions")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--dtypes", default=None, help="default: cuda bfloat16,float32; cpu float32")
    ap.add_argument("--modes", default="auto,opaque", help="SUGAR compile modes: auto,opaque,fused")
    ap.add_argument("--models", default=None, help="comma list of: mlp block,resnet18")
    ap.add_argument("--max-seconds", type=float, default=None, help="compile nothing after this")
    args = ap.parse_args(argv)
    args.device = pick_device(args.device, args.dry_run)
    args.modes = args.modes.split(",")
    # aot_eager in a dry run: Dynamo and AOTAutograd without Inductor's C++ compiles (minutes)
    args.backend = "aot_eager" if args.dry_run else "inductor"
    default_dtypes = "bfloat16,float32" if args.device == "cuda" else "float32"
    dtypes = (args.dtypes or default_dtypes).split(",")
    args.settings = dict(target_s=4.0, min_reps=20, max_reps=200, rounds=10)
    if args.quick or args.device == "cuda":  # a GPU step takes milliseconds: 1 s per variant
        args.settings = dict(target_s=2.0 if args.quick else 1.0, min_reps=10, rounds=5)
    if args.dry_run:
        args.settings = dict(target_s=0.01, min_reps=3, max_reps=3, rounds=1, warmup=1)
    # one cache entry per (model, variant, mode) of the same forward code: keep them all compiled
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.accumulated_recompile_limit = 4096
    start = time.perf_counter()
    deadline = start + (args.max_seconds if args.max_seconds is not None else float("inf"))
    env, rows = environment(args.device), []
    for dtype_name in dtypes:
        for name, (make, shape) in workloads(args.device, args.quick, args.dry_run).items():
            if args.models and name not in args.models.split(","):
                continue
            if time.perf_counter() > deadline:
                log(f"--max-seconds reached: {dtype_name} {name} skipped")
                continue
            log(f"compiled: {name} {tuple(shape)} {dtype_name} on {args.device}")
            rows += measure_group(name, make, shape, dtype_name, args, deadline)
            write_csv(args.results / "compiled.csv", [r | env for r in rows], FIELDS + list(env))
            torch._dynamo.reset()
    lines = header("benchmarks.compiled", argv, env, worst(r["others_cores"] for r in rows))
    write_report(args.results, "compiled", report(rows, lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
