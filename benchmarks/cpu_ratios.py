"""CPU kernels against torch's own kernels for the same math, and the per-call cost of SugarReLU.

    python -m benchmarks.cpu_ratios [--quick]

Each row times one of ours against torch's for the same work, the two alternating call by call
in one process, at 1 and 2 threads, and judges the row's target:

* exact backward against torch's matching backward (silu_backward for bsilu and silu,
  gelu_backward, elu_backward for elu and selu, leaky_relu_backward), float32 and bfloat16;
* code-mode forward (bits 8/4/2/1, in place and not) against torch.relu (relu_ in place), and the
  code-mode backward against threshold_backward (ReLU's backward);
* exact forward + backward against gelu + gelu_backward (2 threads).

These call the ops directly (torch.ops.sugar.* and torch.ops.aten.*): kernels, not the Python and
autograd cost of a call. That cost is the last rows': a training step through the module,
``SugarReLU(...)(x).backward(g)`` against nn.ReLU's, on small tensors (2^10..2^16 elements), each
sample the mean of a batch of calls; in place both run on a fresh non-leaf ``x * 1``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

import sugar_kernels as sk
from sugar_kernels.surrogates import resolve

from .common import (
    TARGETS,
    Case,
    Timer,
    code_args,
    environment,
    fmt,
    header,
    interleaved,
    log,
    markdown_table,
    parser,
    size_label,
    verdict,
    worst,
    write_csv,
    write_report,
)

aten, sugar = torch.ops.aten, torch.ops.sugar
SELU = (1.6732632423543772, 1.0507009873554805)  # alpha, scale
# surrogate -> (torch's kernel, its call for (grad, x))
MATCHING_BACKWARD = {
    "bsilu": ("silu_backward", lambda g, x: aten.silu_backward(g, x)),
    "silu": ("silu_backward", lambda g, x: aten.silu_backward(g, x)),
    "gelu": ("gelu_backward", lambda g, x: aten.gelu_backward(g, x)),
    "elu": ("elu_backward", lambda g, x: aten.elu_backward(g, 1.0, 1.0, 1.0, False, x)),
    "selu": ("elu_backward", lambda g, x: aten.elu_backward(g, *SELU, 1.0, False, x)),
    "leaky_relu": ("leaky_relu_backward", lambda g, x: aten.leaky_relu_backward(g, x, 0.01, False)),
}
# per-call rows: SugarReLU's arguments, and whether both modules run in place
MODULES = {
    "exact bsilu": (dict(), False),
    "bits=8 bsilu": (dict(bits=8), False),
    "bits=1 nelu negative": (dict(surrogate="nelu", bits=1, region="negative"), False),
    "bits=8 bsilu in place": (dict(bits=8, inplace=True), True),
}


def sugar_fwd_bwd(x, g):
    sugar.relu_forward(x, "bsilu", 1.67, "all")
    sugar.relu_backward(g, x, "bsilu", 1.67, "all")


def gelu_fwd_bwd(x, g):
    aten.gelu(x)
    aten.gelu_backward(g, x)


def codes_inplace(args, x):
    return sugar.relu_forward_codes_(x, *args)


def fresh(work, x):  # in place: a fresh input for every call, made outside the timer
    return (work.copy_(x),)


def module_step(module: nn.Module, x, g, inplace: bool) -> None:
    module(x * 1 if inplace else x).backward(g)


def rows_for(sizes, code_sizes, gelu_sizes, call_sizes):
    """(target key, what, torch's, dtype, n, [ours, torch's], calls per sample)."""
    out = []

    def add(key, what, ref, x, ours, theirs, setup=None, batch=1):
        cases = [Case("ours", ours, setup), Case("torch", theirs, setup)]
        out.append((key, what, ref, x.dtype, x.numel(), cases, batch))

    for n in sizes:
        for dtype in (torch.float32, torch.bfloat16):
            x, g = torch.randn(n).to(dtype), torch.randn(n).to(dtype)
            for name, (ref, call) in MATCHING_BACKWARD.items():
                alpha = resolve(name, None, "all")[1]
                ours = partial(sugar.relu_backward, g, x, name, alpha, "all")
                add("cpu.exact_backward", f"backward {name}", ref, x, ours, partial(call, g, x))
    for n in code_sizes:
        x, g = torch.randn(n), torch.randn(n)
        y, setup = torch.relu(x), partial(fresh, torch.empty_like(x), x)
        for bits in (8, 4, 2, 1):
            args, b = code_args("bsilu", bits, "cpu", torch.float32), f"b{bits}"
            codes = sugar.relu_forward_codes(x, *args)[1]
            ours = partial(sugar.relu_forward_codes, x, *args)
            add("cpu.code_forward", f"forward codes {b}", "relu", x, ours, partial(torch.relu, x))
            ours = partial(codes_inplace, args)
            add("cpu.code_forward", f"forward codes {b} in place", "relu_", x, ours, torch.relu_,
                setup)  # fmt: skip
            ours = partial(sugar.relu_backward_codes, g, codes, args[0], bits)
            theirs = partial(aten.threshold_backward, g, y, 0)
            add("cpu.code_backward", f"backward codes {b}", "threshold_backward", x, ours, theirs)
    for n in gelu_sizes:
        x, g = torch.randn(n), torch.randn(n)
        ours, theirs = partial(sugar_fwd_bwd, x, g), partial(gelu_fwd_bwd, x, g)
        add("cpu.gelu", "forward + backward bsilu", "gelu + gelu_backward", x, ours, theirs)
    for n in call_sizes:
        x, g = torch.randn(n, requires_grad=True), torch.randn(n)
        for name, (kwargs, inplace) in MODULES.items():
            ours = partial(module_step, sk.SugarReLU(**kwargs), x, g, inplace)
            theirs = partial(module_step, nn.ReLU(inplace=inplace), x, g, inplace)
            ref = "nn.ReLU" + "(inplace=True)" * inplace
            batch = max(2, (1 << 18) // n)  # a sample of ~0.1 ms: the clock's resolution is moot
            add("cpu.per_call", f"SugarReLU {name}", ref, x, ours, theirs, batch=batch)
    return out


def main(argv=None) -> int:
    ap = parser("benchmarks.cpu_ratios", __doc__)
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repetitions (< 3 min)")
    args = ap.parse_args(argv)
    if not sk.build_info()["cpu_compiled"]:
        raise SystemExit("the compiled CPU kernels are missing: run `make install`")
    # rounds=None: one call of each per round, so ours and torch's alternate call by call
    settings = dict(target_s=0.6, min_reps=25, max_reps=200, rounds=None)
    sizes = code_sizes = [1 << 20, 1 << 22, 1 << 24]
    gelu_sizes = [1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24]
    call_sizes = [1 << 10, 1 << 12, 1 << 14, 1 << 16]
    if args.quick:
        sizes, code_sizes, gelu_sizes = [1 << 20, 1 << 22], [1 << 22], [1 << 16, 1 << 20, 1 << 22]
        settings = dict(target_s=0.2, min_reps=8, max_reps=60, rounds=None)
    if args.dry_run:
        sizes = code_sizes = gelu_sizes = call_sizes = [1 << 10]
        settings = dict(target_s=0.001, min_reps=3, max_reps=3, rounds=None, warmup=1)
    timer, rows, threads_before = Timer("cpu"), [], torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        todo = rows_for(sizes, code_sizes, gelu_sizes if threads == 2 else [], call_sizes)
        for key, what, ref, dtype, n, cases, batch in todo:
            t = interleaved(timer, cases, **settings, batch=batch)
            a, b = t.stats["ours"], t.stats["torch"]
            judged = verdict(a.samples, b.samples, TARGETS[key][1], others=t.others)
            rows.append({
                "target": TARGETS[key][0], "ours": what, "torch": ref, "threads": threads,
                "dtype": str(dtype).removeprefix("torch."), "numel": n,
                "ours_min_ms": min(a.samples) * 1e3, "torch_min_ms": min(b.samples) * 1e3,
                "ratio_median": a.median_ms / b.median_ms,
                "ratio_range": f"{a.ms(20) / b.ms(80):.2f}-{a.ms(80) / b.ms(20):.2f}",
                "verdict": judged, "others_cores": t.others,
            })  # fmt: skip
        log(f"threads={threads}: {len(rows)} rows")
    torch.set_num_threads(threads_before)
    env = environment("cpu")
    write_csv(args.results / "cpu_ratios.csv", [r | env for r in rows])
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("met", "missed", "inconclusive")}
    cols = ["target", "ours", "torch's", "threads", "dtype", "elements", "ours min ms"]
    cols += ["torch min ms", "ratio (median)", "ratio p20-p80 range", "verdict"]
    keys = ["target", "ours", "torch", "threads", "dtype", "numel", "ours_min_ms"]
    keys += ["torch_min_ms", "ratio_median", "ratio_range", "verdict"]
    table = [[size_label(r[k]) if k == "numel" else fmt(r[k]) for k in keys] for r in rows]
    lines = header("benchmarks.cpu_ratios", argv, env, worst(r["others_cores"] for r in rows))
    lines += [
        f"Our build: {sk.build_info().get('cpu_capability')}; torch's kernels: "
        f"{torch.backends.cpu.get_cpu_capability()}.",
        "",
        markdown_table(cols, table, "lllrlrrrrll"),
        "",
        f"{', '.join(f'{k}: {v}' for k, v in counts.items())} (of {len(rows)} rows). Ratio range: "
        "ours p20 / torch p80 .. ours p80 / torch p20; 'met' needs it all below the target, "
        "'missed' all above.",
    ]
    write_report(args.results, "cpu_ratios", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
