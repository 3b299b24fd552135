"""Per-call cost of a training step through the module: SugarReLU against nn.ReLU.

    python -m benchmarks.overhead [--quick]

Times ``module(x).backward(g)`` of SugarReLU and of nn.ReLU on small CPU tensors (2^10..2^16
elements, 1 and 2 threads), where a call's fixed cost (Python, dispatcher, autograd) is much of
its time. Each sample is the mean of a batch of calls; the two modules' samples are
interleaved. Configurations: exact (bsilu), bits=8, bits=1 (nelu, negative region), and bits=8
in place against nn.ReLU(inplace=True), both on a fresh non-leaf ``x * 1`` that both pay for.
"""

from __future__ import annotations

import torch
from torch import nn

import sugar_kernels as sk

from .common import (
    TARGETS,
    Case,
    Timer,
    environment,
    header,
    interleaved,
    markdown_table,
    parser,
    size_label,
    verdict,
    worst,
    write_csv,
    write_report,
)

SIZES = (1 << 10, 1 << 12, 1 << 14, 1 << 16)
# name -> (the SugarReLU arguments, whether both modules run in place on a fresh non-leaf)
CONFIGS = {
    "exact bsilu": (dict(), False),
    "bits=8 bsilu": (dict(bits=8), False),
    "bits=1 nelu negative": (dict(surrogate="nelu", bits=1, region="negative"), False),
    "bits=8 bsilu in place": (dict(bits=8, inplace=True), True),
}


def step(module: nn.Module, x: torch.Tensor, g: torch.Tensor, fresh: bool):
    def run():
        module(x * 1 if fresh else x).backward(g)

    return run


def main(argv=None) -> int:
    ap = parser("benchmarks.overhead", __doc__)
    ap.add_argument("--quick", action="store_true", help="fewer samples (~30 s)")
    args = ap.parse_args(argv)
    sizes = SIZES[:1] if args.dry_run else SIZES
    samples = 3 if args.dry_run else 21 if args.quick else 61
    limit, timer, rows = TARGETS["overhead"][1], Timer("cpu"), []
    for threads in (1,) if args.dry_run else (1, 2):
        torch.set_num_threads(threads)
        for n in sizes:
            x, g = torch.randn(n, requires_grad=True), torch.randn(n)
            batch = 2 if args.dry_run else max(4, (1 << 18) // n)
            for name, (kwargs, fresh) in CONFIGS.items():
                ours, relu = sk.SugarReLU(**kwargs), nn.ReLU(inplace=fresh)
                cases = [
                    Case("ours", step(ours, x, g, fresh)),
                    Case("relu", step(relu, x, g, fresh)),
                ]
                # one sample of each per round: the two modules alternate
                reps = dict(min_reps=samples, max_reps=samples, rounds=samples)
                t = interleaved(timer, cases, **reps, batch=batch, warmup=1)
                a, b = t.stats["ours"], t.stats["relu"]
                rows.append(
                    dict(config=name, threads=threads, numel=n)
                    | dict(ours_us=f"{min(a.samples) * 1e6:.1f} / {a.median_ms * 1e3:.1f}")
                    | dict(relu_us=f"{min(b.samples) * 1e6:.1f} / {b.median_ms * 1e3:.1f}")
                    | dict(ratio_median=f"{a.median_ms / b.median_ms:.2f}")
                    | dict(ratio_range=f"{a.ms(20) / b.ms(80):.2f}-{a.ms(80) / b.ms(20):.2f}")
                    | dict(verdict=verdict(a.samples, b.samples, limit, others=t.others))
                    | dict(others_cores=t.others)
                )
    env = environment("cpu")
    write_csv(args.results / "overhead.csv", [r | env for r in rows])
    cols = ["SugarReLU", "threads", "elements", "ours min / median µs", "nn.ReLU min / median µs"]
    cols += ["ratio (median)", "ratio p20-p80 range", f"verdict (<= {limit}x)"]
    keys = ["config", "threads", "numel", "ours_us", "relu_us", "ratio_median", "ratio_range"]
    table = [[size_label(r[k]) if k == "numel" else r[k] for k in [*keys, "verdict"]] for r in rows]
    lines = header("benchmarks.overhead", argv, env, worst(r["others_cores"] for r in rows))
    text = "\n".join(lines + [markdown_table(cols, table, "lrrrrrrl")])
    write_report(args.results, "overhead", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
