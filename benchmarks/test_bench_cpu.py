"""pytest-benchmark suite of the CPU paths (``make bench`` runs it and saves each run under
results/pytest-benchmark/ for ``--benchmark-compare``): the providers and cases of
``benchmarks.micro`` at 2^20 elements. ``pytest tests`` never collects it."""

from __future__ import annotations

import pytest
import torch

import sugar_kernels as sk

from .micro import DTYPES, MODES, bytes_moved, make_case, make_inputs, make_providers

N = 1 << 20
PROVIDERS = {p.name: p for p in make_providers("cpu")}
CASES = [
    (dtype, name, mode)
    for dtype in ("float32", "bfloat16")
    for name in PROVIDERS
    if dtype == "float32" or name.startswith("sugar_") or name in ("torch_relu", "copy")
    for mode in MODES
    if name != "copy" or mode == "forward"  # the copy has no modes: time it once
]


@pytest.mark.skipif("cpu" not in sk.available_backends("cpu"), reason="CPU kernels not built")
@pytest.mark.parametrize(("dtype", "provider", "mode"), CASES, ids=["-".join(c) for c in CASES])
def test_cpu(benchmark, provider, dtype, mode):
    p = PROVIDERS[provider]
    case = make_case(p, mode, *make_inputs(N, DTYPES[dtype], "cpu", seed=0))
    benchmark.group = f"{mode} {dtype} 2^{N.bit_length() - 1}"
    benchmark.extra_info["bytes"] = bytes_moved(p.kind, mode, N, DTYPES[dtype].itemsize)
    benchmark.extra_info["threads"] = torch.get_num_threads()
    setup = case.setup or tuple
    # a fresh input per call for in-place providers, made outside the timed region
    benchmark.pedantic(case.fn, setup=lambda: (setup(), {}), rounds=30, warmup_rounds=3)
