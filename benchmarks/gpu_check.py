"""Checks for a GPU machine: the build loads, and a workload that runs every CUDA kernel.

    python -m benchmarks.gpu_check load        # build info; every op once against the reference
    compute-sanitizer --tool memcheck python -m benchmarks.gpu_check workload

``workload`` calls every op directly (torch.ops.sugar.*) in every dtype, on a ragged size and a
large one, aligned and misaligned (a view one element in), exact mode for every surrogate and
region, code modes at every bits, in place and not, then the code ops with corrupt tables (scan
length, bucket starts, interval codes, NaN and unsorted thresholds): the CUDA kernels clamp those
values instead of checking them on the host, so they must run without an out-of-bounds access
and leave the device usable. Made for compute-sanitizer's memcheck and racecheck.
"""

from __future__ import annotations

import math

import torch

import sugar_kernels as sk
from sugar_kernels import code_tables as codes
from sugar_kernels.surrogates import resolve

from .common import code_args, parser

ops = torch.ops.sugar
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# name -> (index in code_args' tuple, element, value): the table values the CUDA kernels clamp
CORRUPT = {
    "scan length huge": (3, 0, 100000),
    "scan length negative": (3, 0, -1),
    "bucket start above the table": (3, 7, 372),
    "bucket start negative": (3, 4096, -5),
    "interval code 255": (2, 3, 255),
    "threshold NaN": (1, 10, math.nan),
    "thresholds unsorted": (1, 10, 100.0),
}


def load(device: str) -> None:
    info = sk.build_info()
    print(info)
    assert info["cuda_compiled" if device == "cuda" else "cpu_compiled"], "kernels not compiled"
    backends = sk.available_backends(device)
    print(f"backends on {device}: {backends}")
    assert backends[0] == device, backends
    x = torch.randn(1000, device=device, dtype=torch.float64)
    for backend in backends:
        for bits in (None, 8):
            xr = x.clone().requires_grad_()
            y = sk.sugar_relu(xr, "bsilu", bits=bits, backend=backend)
            (gx,) = torch.autograd.grad(y, xr, torch.ones_like(y))
            assert torch.equal(y, torch.relu(x)), backend
            ref = sk.grad_factor(x, "bsilu", 1.67, "all")
            err = float((gx - ref).norm() / ref.norm())  # relative L2: codes are ~0.2% off
            assert err < (0.01 if bits else 1e-9), (backend, bits, err)
    print(f"every backend on {device} loads and matches the reference")


def workload(device: str, sizes: tuple[int, ...]) -> None:
    for dtype in DTYPES:
        for n in sizes:
            base = torch.randn(n + 1, device=device, dtype=dtype)
            g = torch.randn(n, device=device, dtype=dtype)
            for x in (base[:n], base[1:]):  # aligned and misaligned
                names = sk.SURROGATES if dtype == torch.float32 else ("bsilu", "gelu")
                for name in names:
                    alpha = resolve(name, None, "all")[1]
                    for region in sk.REGIONS:
                        ops.relu_forward(x, name, alpha, region)
                        ops.relu_backward(g, x, name, alpha, region)
                for bits in (8, 4, 2, 1):
                    args = code_args("bsilu", bits, device, dtype)
                    _, packed = ops.relu_forward_codes(x, *args)
                    ops.relu_forward_codes_(x.clone(), *args)
                    ops.relu_backward_codes(g, packed, args[0], bits)
    x = torch.linspace(-6, 6, 1001, device=device)
    for what, (i, element, value) in CORRUPT.items():
        args = list(code_args("bsilu", 8, device, torch.float32))
        args[i] = args[i].clone()
        args[i][element] = value
        for op in (ops.relu_forward_codes, ops.relu_forward_codes_):
            try:
                op(x.clone(), *args)
            except RuntimeError:
                if device == "cuda":  # the CPU ops check the values and raise instead
                    raise
        print(f"corrupt table ({what}): ran")
    args = code_args("bsilu", 8, device, torch.float32)  # the device is still usable
    _, packed = ops.relu_forward_codes(x, *args)
    assert torch.equal(packed, codes.encode_reference(x, args[1], args[2], 8))
    if device == "cuda":
        torch.cuda.synchronize()
    print("workload done")


def main(argv=None) -> int:
    ap = parser("benchmarks.gpu_check", __doc__)
    ap.add_argument("what", choices=["load", "workload"])
    args = ap.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible")
    if args.what == "load":
        load(device)
    else:
        workload(device, (7,) if args.dry_run else (7, 65_537))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
