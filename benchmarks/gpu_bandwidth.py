"""Percent of copy bandwidth of every kernel and mode, CUDA against Triton.

    python -m benchmarks.gpu_bandwidth [--sizes 26,28,24] [--dtypes float32,bfloat16]

Each kernel is called directly (torch.ops.sugar.* for the CUDA kernels, torch.ops.sugar.triton_*
for the Triton ones: no autograd), all kernels of one (dtype, size) interleaved with a
device-to-device copy of the same tensor. %copy = the kernel's GB/s / the copy's, with the bytes
a kernel must move (s = element size, b = bits):

  kernel                    reads                  writes
  copy, relu_fwd, exact_fwd s n                    s n
  relu_bwd, exact_bwd       2 s n (grad_y, y or x) s n     (relu_bwd: aten threshold_backward)
  codes_fwd_b, _inplace     s n                    s n + b n / 8
  codes_bwd_b               s n + b n / 8          s n

Triton's outputs are checked against the CUDA kernels' (equal; exact backward within one
rounding) before timing.
"""

from __future__ import annotations

from functools import partial

import torch

import sugar_kernels as sk

from .common import (
    TARGETS,
    Case,
    Timer,
    code_args,
    environment,
    fmt,
    header,
    interleaved,
    markdown_table,
    parse_sizes,
    parser,
    size_label,
    verdict,
    verdict_from_quantiles,
    worst,
    write_csv,
    write_report,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BITS = (8, 4, 2, 1)
EXACT = ("bsilu", 1.67, "all")


OPS = ("relu_forward", "relu_backward", "relu_forward_codes", "relu_forward_codes_")
OPS += ("relu_backward_codes",)


def in_place(op, args, x):
    return op(x, *args)


def kernels(backend: str, x, g, work, refresh) -> list[tuple[Case, int]]:
    """(Case, bytes moved) of every kernel of one backend ("cuda"/"cpu": the C++ ops)."""
    op = {name: getattr(torch.ops.sugar, "triton_" * (backend == "triton") + name) for name in OPS}
    n, s = x.numel(), x.element_size()
    out = [
        (Case(f"{backend}/exact_fwd", partial(op["relu_forward"], x, *EXACT)), 2 * s * n),
        (Case(f"{backend}/exact_bwd", partial(op["relu_backward"], g, x, *EXACT)), 3 * s * n),
    ]
    for bits in BITS:
        args = code_args("bsilu", bits, x.device, x.dtype)
        codes = torch.ops.sugar.relu_forward_codes(x, *args)[1]  # the C++ op's: the reference
        nbytes, name = 2 * s * n + codes.numel(), f"{backend}/codes_"
        fwd = partial(op["relu_forward_codes"], x, *args)
        inplace = partial(in_place, op["relu_forward_codes_"], args)
        bwd = partial(op["relu_backward_codes"], g, codes, args[0], bits)
        out += [(Case(f"{name}fwd_b{bits}", fwd), nbytes)]
        out += [(Case(f"{name}fwd_b{bits}_inplace", inplace, refresh), nbytes)]
        out += [(Case(f"{name}bwd_b{bits}", bwd), nbytes)]
    return out


def check_same(reference: list[tuple[Case, int]], other: list[tuple[Case, int]]) -> list[str]:
    """Names of ``other``'s kernels whose outputs differ from ``reference``'s."""
    bad = []
    for (ref, _), (case, _) in zip(reference, other):
        if case.setup is not None:  # in place: compared through the out-of-place kernel
            continue
        a, b = ref.fn(), case.fn()
        a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
        for u, v in zip(a, b):
            if "exact_bwd" in case.name:  # one rounding of the same float32 math; libm differs
                same = torch.allclose(u.float(), v.float(), rtol=2e-2, atol=1e-6)
            else:
                same = torch.equal(u, v)
            bad += [] if same else [case.name]
    return bad


def measure(device, backends, n, dtype_name, settings) -> tuple[list[dict], list[list], list]:
    dtype = DTYPES[dtype_name]
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, device=device, generator=gen).to(dtype)
    g = torch.randn(n, device=device, generator=gen).to(dtype)
    y, dst, work = torch.relu(x), torch.empty_like(x), torch.empty_like(x)
    s = x.element_size()
    cases = [
        (Case("copy", partial(dst.copy_, x)), 2 * s * n),
        (Case("torch/relu_fwd", partial(torch.relu, x)), 2 * s * n),
        (Case("torch/relu_bwd", partial(torch.ops.aten.threshold_backward, g, y, 0)), 3 * s * n),
    ]

    def refresh():  # a fresh input for the in-place kernels, outside the timer
        return (work.copy_(x),)

    per_backend = {b: kernels(b, x, g, work, refresh) for b in backends}
    mismatches = check_same(per_backend[backends[0]], per_backend[backends[-1]])
    for b in backends:
        cases += per_backend[b]
    t = interleaved(Timer(device), [c for c, _ in cases], **settings)
    copy = t.stats["copy"]
    rows, targets = [], []

    def judge(label, key, ours, base, limit, measured):
        judged = verdict(ours.samples, base.samples, limit, others=t.others)
        targets.append(
            [f"{dtype_name} {size_label(n)} {label}: {TARGETS[key][0]}", measured, judged]
        )

    for case, nbytes in cases:
        st = t.stats.get(case.name)
        if st is None:
            print(f"{case.name} {dtype_name} {size_label(n)}: FAILED {t.errors.get(case.name)}")
            continue
        pct = (nbytes / st.median_ms) / (2 * s * n / copy.median_ms) * 100
        row = dict(kernel=case.name, dtype=dtype_name, n=n, bytes=nbytes, median_ms=st.median_ms)
        row |= dict(min_ms=min(st.samples) * 1e3, gbps=nbytes / st.median_ms / 1e6, pct_copy=pct)
        rows.append(row | dict(others_cores=t.others))
        kind = case.name.partition("/")[2].split("_")[0]
        if kind in ("exact", "codes"):  # ">= pct of copy" as a time ratio to the copy
            limit = nbytes / (2 * s * n * TARGETS[f"bandwidth.{kind}"][1] / 100)
            judge(case.name, f"bandwidth.{kind}", st, copy, limit, f"{pct:.0f}%")
        cuda = t.stats.get("cuda" + case.name.removeprefix("triton"))
        if case.name.startswith("triton/") and cuda is not None:
            ratio = f"{st.median_ms / cuda.median_ms:.2f}x"
            judge(case.name, "triton_vs_cuda", st, cuda, TARGETS["triton_vs_cuda"][1], ratio)
    for b in backends:  # bits=8 in place forward + backward against stock ReLU's: sum the bands
        pairs = [
            (f"{b}/codes_fwd_b8_inplace", f"{b}/codes_bwd_b8"),
            ("torch/relu_fwd", "torch/relu_bwd"),
        ]
        if all(k in t.stats for pair in pairs for k in pair):
            band = [
                tuple(sum(t.stats[k].ms(q) for k in pair) for q in (20, 50, 80)) for pair in pairs
            ]
            text, limit = TARGETS["bandwidth.b8_relu"]
            judged = verdict_from_quantiles(*band, limit, others=t.others)
            ratio = f"{band[0][1] / band[1][1]:.2f}x"
            targets.append([f"{dtype_name} {size_label(n)} {b}: {text}", ratio, judged])
    return rows, targets, mismatches


def main(argv=None) -> int:
    ap = parser("benchmarks.gpu_bandwidth", __doc__)
    ap.add_argument("--sizes", default="26,28,24", help="exponents or ranges, e.g. 26,28 or 24:28")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args(argv)
    if args.dry_run:  # the C++ CPU ops stand in for the CUDA kernels
        device, backends, sizes, dtypes = "cpu", ["cpu"], [1 << 10], ["float32"]
        settings = dict(target_s=0.001, min_reps=3, max_reps=3, rounds=1, warmup=1)
    else:
        if not (torch.cuda.is_available() and sk.build_info()["cuda_compiled"]):
            raise SystemExit("needs a GPU and the compiled CUDA kernels")
        device, sizes, dtypes = "cuda", parse_sizes(args.sizes), args.dtypes.split(",")
        backends = [b for b in ("cuda", "triton") if b in sk.available_backends("cuda")]
        settings = dict(target_s=0.05, min_reps=10, max_reps=40, rounds=4, max_case_s=2.0)
    env, rows, targets, mismatches = environment(device), [], [], []
    for dtype_name in dtypes:
        for n in sizes:
            r, t, m = measure(device, backends, n, dtype_name, settings)
            rows, targets, mismatches = rows + r, targets + t, mismatches + m
            write_csv(args.results / "bandwidth.csv", [r | env for r in rows])
            print(f"{dtype_name} {size_label(n)} done", flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()
    cols = sorted({(r["dtype"], r["n"]) for r in rows})
    by = {(r["kernel"], r["dtype"], r["n"]): r["pct_copy"] for r in rows}
    kernel_names = dict.fromkeys(r["kernel"] for r in rows)
    table = [[k, *(fmt(by.get((k, d, n))) for d, n in cols)] for k in kernel_names]
    parts = header("benchmarks.gpu_bandwidth", argv, env, worst(r["others_cores"] for r in rows))
    parts += ["Percent of copy bandwidth (median times):", ""]
    parts += [markdown_table(["kernel", *(f"{d} {size_label(n)}" for d, n in cols)], table), ""]
    parts += [markdown_table(["target", "measured", "verdict"], targets, "lrl")]
    if mismatches:
        parts += ["", f"**Triton outputs differ from CUDA's: {', '.join(mismatches)}**"]
    write_report(args.results, "bandwidth", "\n".join(parts))
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
